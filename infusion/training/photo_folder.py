"""Concept photos from a folder: every image file in it, any size and aspect, as a list.

Each photo keeps its aspect and is scaled down only (shorter side to a size): Train Infusion Concept fits it
to its training size (an aspect-ratio bucket, or a centre-cropped square). An alpha channel becomes
the photo's foreground mask (1 = opaque = the concept), photos without one get a full mask. A
`<photo>.txt` beside a photo is its caption.
PIL (a ComfyUI dependency) is imported when reading.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .captions import PhotoCaptions, read_captions
from .buckets import cover_size
from .data import fit_masks, fit_photos

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def photo_files(folder: str) -> list[str]:
    """The image files in `folder`, sorted by name (a fixed order keeps the photo hash stable)."""
    if not os.path.isdir(folder):
        raise ValueError(f"photo folder not found: {folder}")
    try:
        entries = os.listdir(folder)
    except OSError as e:
        raise ValueError(f"cannot read the photo folder {folder}: {e.strerror}") from None
    names = sorted(n for n in entries
                   if n.lower().endswith(PHOTO_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise ValueError(f"no photos in {folder}: put the concept's photos there "
                         f"({', '.join(e[1:] for e in PHOTO_EXTENSIONS)})")
    return [os.path.join(folder, n) for n in names]


def read_photo(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB [H, W, 3] in 0..1 (camera rotation applied) and the alpha [H, W], if the file has one."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read photo {os.path.basename(path)}: {e}") from None
    if image.mode == "I":  # 16-bit greyscale, scaled to 8 bits as ComfyUI's Load Image does
        image = image.point(lambda i: i * (1 / 255))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    rgb = torch.from_numpy(pixels[..., :3].copy())
    return rgb, torch.from_numpy(pixels[..., 3].copy()) if has_alpha else None


def load_photo_folder(folder: str, size: int) -> tuple[list[torch.Tensor], list[torch.Tensor], PhotoCaptions | None]:
    """Every photo in `folder` as IMAGE [1, H, W, 3], with its shorter side scaled down to `size` where it is
    longer (photos differ in size, hence a list), its MASK [1, H, W], and the captions beside them (None when
    there are none)."""
    images, masks = [], []
    paths = photo_files(folder)
    for path in paths:
        rgb, alpha = read_photo(path)
        # Scaled down only: a photo's own size is what SDXL's size conditioning should be told.
        scaled = cover_size(*rgb.shape[:2], (size, size)) if min(rgb.shape[:2]) > size else tuple(rgb.shape[:2])
        images.append(fit_photos(rgb[None], scaled))
        full = torch.ones(rgb.shape[:2]) if alpha is None else alpha
        masks.append(fit_masks(full[None], rgb[None], scaled))
    return images, masks, read_captions(paths)
