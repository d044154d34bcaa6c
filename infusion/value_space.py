"""Training a text-space concept in the authors' value space.

A UNet concept is applied in text space: u_l is added to layer l's value input, so the value changes by
r_l = W_v u_l (ComfyUI's composable attn2_patch reaches the value input, not the projected value). AdamW
on u_l would take a step of about the learning rate in each text coordinate, which W_v turns into a
value step that depends on each layer's weights, so the authors' learning rate (tuned for r_l on SD1.5)
would mean something else in every layer and on every model. Training therefore moves r_l itself and
maps it back with a fixed pseudo-inverse, u_l = W_v^+ r_l: the step is the authors' in every layer, and
the file (u_l) and how it is applied are unchanged.

Where a layer is wider than the text (SD1.x's and SD2.x's 1280-wide layers), W_v W_v^+ projects r_l onto
the values W_v can make, the only ones a text-space vector (and the base model's own values) reach.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .layers import LayerId

# Directions W_v scales by less than this fraction of its largest singular value are left out: their u
# would be so large that fp16 (the file's and most models' precision) rounds away what they add.
RTOL = 0.01


def pseudo_inverse(weight: torch.Tensor, rtol: float = RTOL) -> torch.Tensor:
    """W^+ of a [out, in] weight (float32, on the CPU), through the eigenvectors of the smaller Gram
    matrix (several times faster than an SVD of W), dropping directions below `rtol` of the largest
    singular value."""
    w = weight.detach().to("cpu", torch.float64)
    wide = w.shape[0] <= w.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(w @ w.T if wide else w.T @ w)  # sigma^2, ascending
    keep = eigenvalues >= rtol ** 2 * eigenvalues[-1]
    basis = vectors[:, keep]
    inverse_gram = (basis / eigenvalues[keep]) @ basis.T
    return (w.T @ inverse_gram if wide else inverse_gram @ w.T).float()


class ValueSpace:
    """Per layer and kind ("value", and "key" for key+value), the fixed map W^+ from the trained value-space
    vector to the text-space vector the patch adds."""

    def __init__(self, weights: Mapping[str, Mapping[LayerId, torch.Tensor]]):
        with torch.inference_mode(False):  # ordinary tensors, which training can backpropagate through
            self.inverses = {kind: {layer: pseudo_inverse(w) for layer, w in by_layer.items()}
                             for kind, by_layer in weights.items()}

    def width(self, kind: str, layer: LayerId) -> int:
        """The width of the trained vector: the layer's value (or key) width."""
        return self.inverses[kind][layer].shape[1]

    def to_text(self, vectors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Trained vectors named as in the concept file ("value.input.1.0") mapped to text space."""
        out = {}
        for name, r in vectors.items():
            kind, key = name.split(".", 1)
            layer = LayerId.parse(key)
            out[name] = self.inverses[kind][layer].to(r.device) @ r.float()
        return out
