"""Where a concept trains: each layer's value space, in units of that layer's own values at the word.

The trained number is rho_l. What the layer's values at the word change by is r_l = s_l * rho_l, where s_l
is the root mean square of the base model's values at the word in layer l over the training captions,
measured once when training starts (`ValueScales`) and fixed for the run. AdamW moves each coordinate of
rho_l by about the learning rate per step whatever the gradient's scale, so the learning rate is a step
relative to the values the residual adds to: a layer (or a checkpoint) whose values are ten times larger
gets a ten times larger step, and the trained concept does not depend on how a checkpoint happens to split
its scale between the value and the output projections.

A UNet concept is applied in text space: u_l is added to layer l's value input, so the value changes by
W_v u_l (ComfyUI's composable attn2_patch reaches the value input, not the projected value). Training maps
r_l back with a fixed pseudo-inverse, u_l = W_v^+ r_l; the file (u_l) and how it is applied are unchanged.
Where a layer is wider than the text (SD1.x's and SD2.x's 1280-wide layers), W_v W_v^+ projects r_l onto
the values W_v can make, the only ones a text-space vector (and the base model's own values) reach.
A DiT concept is applied in value space already: r_l itself.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from .layers import LayerId

# Directions W_v scales by less than this fraction of its largest singular value are left out: their u
# would be so large that fp16 (the file's and most models' precision) rounds away what they add.
RTOL = 0.01
# The training record's name for this parametrization (resume states of earlier ones are refused by it).
TRAINED_IN = "value space, in units of each layer's values at the word"


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
    """Per layer and kind ("value", and "key" for key+value), how a trained vector becomes what the patch
    adds. Kinds given `weights` (a text-space family's W_v, W_k) are mapped to text space by W^+; any other
    kind is added in value space as it is."""

    def __init__(self, weights: Mapping[str, Mapping[LayerId, torch.Tensor]] | None = None):
        with torch.inference_mode(False):  # ordinary tensors, which training can backpropagate through
            self.weights = {kind: {layer: w.detach().to("cpu", torch.float32) for layer, w in by_layer.items()}
                            for kind, by_layer in (weights or {}).items()}
            self.inverses = {kind: {layer: pseudo_inverse(w) for layer, w in by_layer.items()}
                             for kind, by_layer in self.weights.items()}

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


class ValueScales:
    """Measures s_l: the root mean square of the base model's values (or keys) at the word, per trained
    vector, from the rows the patches see during a measuring pass (text-space rows are projected by W)."""

    def __init__(self, space: ValueSpace):
        self.space = space
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, kind: str, layer: LayerId, rows: torch.Tensor) -> None:
        """`rows`: the base model's values (or, for a text-space kind, the value input) at the word, one row
        per token of the word (any trailing shape: heads x head width is flattened)."""
        x = rows.detach().float().reshape(rows.shape[0], -1)
        weight = self.space.weights.get(kind, {}).get(layer)
        if weight is not None:
            x = x @ weight.to(x.device).T
        name = f"{kind}.{layer.key}"
        self.sums[name] = self.sums.get(name, 0.0) + float(x.double().square().sum())
        self.counts[name] = self.counts.get(name, 0) + x.numel()

    def result(self, names: list[str]) -> dict[str, float]:
        """s per trained vector. A layer that never saw the word cannot be measured: an error names it."""
        missing = [n for n in names if not self.counts.get(n)]
        if missing:
            raise RuntimeError(f"the word never reached {', '.join(missing[:4])} while measuring the values at "
                               "the word: the model's attention layers were not all patched (another node "
                               "replaced them?)")
        scales = {}
        for name in names:
            s = math.sqrt(self.sums[name] / self.counts[name])
            if not math.isfinite(s):
                raise RuntimeError(f"the base model's values at the word are not finite in {name}: the model "
                                   "itself produces NaN or infinity there (check its weights and precision)")
            # Values at the word that are all zero cannot be steered through anyway; 1 keeps the layer's
            # (inert) vector trainable instead of dividing by zero.
            scales[name] = s if s > 0 else 1.0
        return scales
