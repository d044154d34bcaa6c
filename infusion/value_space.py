"""Where a concept trains: each layer's value space, in units that make a step mean the same in every layer.

The trained number is rho_l; what the layer's values at the word change by is r_l = s_l * rho_l, with
s_l = 1 / g_l, where g_l is the gain of the projection that reads the layer's attention output (the root mean
square of its singular values). The residual reaches the picture through that projection, so a step of rho_l
changes what the layer adds to the model's stream by about the same amount in every layer, whatever the
layer's weights. AdamW moves each coordinate of rho_l by about the learning rate per step whatever the
gradient's scale, and s_l follows any split of a layer's scale between its value and output projections
(values x a, output / a leaves the model as it was and gives s_l x a): the trained concept does not depend on
how a checkpoint happens to scale its layers. A key residual (key+value) is scaled alike by the query
projection, which its attention logits pass through. s_l is fixed for the run and kept in its record.

A UNet concept is applied in text space: u_l is added to layer l's value input, so the value changes by
W_v u_l (ComfyUI's composable attn2_patch reaches the value input, not the projected value). Training maps
r_l back with a fixed pseudo-inverse, u_l = W_v^+ r_l; the file (u_l) and how it is applied are unchanged.
Where a layer is wider than the text (SD1.x's and SD2.x's 1280-wide layers), W_v W_v^+ projects r_l onto
the values W_v can make, the only ones a text-space vector (and the base model's own values) reach.
A DiT concept is applied in value space already: r_l itself.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .layers import LayerId

# Directions W_v scales by less than this fraction of its largest singular value are left out: their u
# would be so large that fp16 (the file's and most models' precision) rounds away what they add.
RTOL = 0.01
# The training record's name for this parametrization (resume states of earlier ones are refused by it).
TRAINED_IN = "value space, in units of each layer's output gain"


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


def scale_of(projection: torch.Tensor) -> float:
    """s = 1 / g: g the root mean square of the singular values of the projection that reads the layer's
    attention output (its Frobenius norm over the square root of its rank's bound)."""
    w = projection.detach().float()
    return float(min(w.shape) ** 0.5 / torch.linalg.matrix_norm(w))


class ValueSpace:
    """Per layer and kind ("value", and "key" for key+value), how a trained vector becomes what the patch
    adds: times its scale s (from `outputs`, each layer's projection of the attention output, or of the
    queries for keys), then, for kinds given `weights` (a text-space family's W_v, W_k), mapped to text space
    by W^+; any other kind is added in value space."""

    def __init__(self, outputs: Mapping[str, Mapping[LayerId, torch.Tensor]],
                 weights: Mapping[str, Mapping[LayerId, torch.Tensor]] | None = None):
        self.scales = {f"{kind}.{layer.key}": scale_of(w) for kind, by_layer in outputs.items()
                       for layer, w in by_layer.items()}
        with torch.inference_mode(False):  # ordinary tensors, which training can backpropagate through
            self.inverses = {kind: {layer: pseudo_inverse(w) for layer, w in by_layer.items()}
                             for kind, by_layer in (weights or {}).items()}

    def inverse(self, kind: str, layer: LayerId) -> torch.Tensor | None:
        """W^+ of a text-space kind (None: the kind trains where it is applied)."""
        return self.inverses.get(kind, {}).get(layer)

    def to_concept(self, vectors: Mapping[str, torch.Tensor], scales: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Trained vectors rho named as in the concept file ("value.input.1.0") as the concept stores them:
        s * rho, mapped to text space where the kind is applied there."""
        out = {}
        for name, rho in vectors.items():
            kind, key = name.split(".", 1)
            r = scales[name] * rho.float()
            inverse = self.inverse(kind, LayerId.parse(key))
            out[name] = r if inverse is None else inverse.to(r.device) @ r
        return out
