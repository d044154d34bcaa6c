"""PIL pictures as ComfyUI IMAGE tensors ([1, H, W, 3] floats in 0..1)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_image(picture: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]
