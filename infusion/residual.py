"""The Infusion residual: one concept's vectors, added at its word's token rows.

UNet (a composable `attn2_patch`): in every cross-attention layer l the value input at the class word's
positions P becomes c_j + s * u_l (j in P), so V[j] = W_v c_j + s * W_v u_l: the attention maps (keys,
softmax) stay the base model's and the output changes by s * A[:, P] W_v u_l. DiT (families/dit.py): the
projected values at the word's text rows get s * r_l. Rows outside P are returned untouched, so a
prompt without the word, or s = 0, gives the base model's output bit for bit.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .concept import InfusionConcept
from .layers import LayerId
from .tokens import WordPositions
from .value_space import ValueSpace

BATCH_KEY = "infusion_batch"  # transformer_options entry set by word_carrier.carry_word_positions
RESIDUALS_KEY = "infusion_residuals"  # transformer_options entry: a DiT's applied concepts (families/dit.py)


class BatchPositions:
    """Word positions of the prompts in one sampler step, looked up per UNet batch by uuid.

    ComfyUI batches several conditionings into one UNet call and tells the attention patches
    which chunk came from which conditioning (`extra_options["uuids"]`).
    """

    def __init__(self, by_uuid: Mapping[Any, WordPositions]):
        self.by_uuid = by_uuid
        self._rows: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def rows(self, word: str, uuids: list, batch: int, length: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(batch indices, token indices) of the word's rows in a [batch, length] context, or None.

        Built once per UNet call and shared by all its layers.
        """
        key = (word, tuple(uuids), batch, length, device)
        if key not in self._rows:
            self._rows[key] = self._build(word, uuids, batch, length, device)
        return self._rows[key]

    def _build(self, word: str, uuids: list, batch: int, length: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        chunk = batch // max(len(uuids), 1)
        pairs = [(b, j) for i, uuid in enumerate(uuids) if uuid in self.by_uuid
                 for j in self.by_uuid[uuid].rows(word, length) for b in range(i * chunk, (i + 1) * chunk)]
        if not pairs:
            return None
        index = torch.tensor(pairs, dtype=torch.long, device=device)
        return index[:, 0], index[:, 1]


def add_at_rows(tensor: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], vector: torch.Tensor) -> torch.Tensor:
    """`tensor` [batch, tokens, ...] with `vector` added at the (batch, token) rows; every other row keeps its
    exact bits (index_put returns a new tensor, so autograd reaches the vector). The paper's V[j] += s r."""
    return tensor.index_put(rows, vector.to(tensor), accumulate=True)


class ConceptResidual(torch.nn.Module):
    """One concept's residual vectors as the attention patches use them: fp32 masters (ComfyUI calls
    `.to(dtype)` on patches when it loads a model in fp16, which is ignored here; they are cast to the
    activation dtype at the moment of use), a strength per layer, and the part of the schedule where the
    concept acts. Trainable as an nn.Module (the residuals are parameters); with a `space` (training), the
    parameters are rho_l: the patches add r_l = s_l rho_l in value space, or W^+ r_l in text space
    (value_space.py; s_l is 1 until `set_scales`). Subclasses say how a family names a layer at run time
    (`runtime_key`) and where the residual goes.
    """

    def __init__(self, concept: InfusionConcept, strength: float = 1.0,
                 sigma_range: tuple[float, float] | None = None, trainable: bool = False,
                 layer_strengths: Mapping[LayerId, float] | None = None, space: ValueSpace | None = None):
        super().__init__()
        self.word = concept.word
        self.label = concept.label
        self.strength = float(strength)
        self.sigma_range = sigma_range  # (high, low): active while low <= sigma <= high
        self.layers = sorted(concept.values)
        # strength x the layer's own (block weights); a layer at 0 is left exactly as the base model's
        self.strengths = [self.strength * float((layer_strengths or {}).get(l, 1.0)) for l in self.layers]
        self.index = {self.runtime_key(l): i for i, l in enumerate(self.layers)}
        self.relative = space is not None
        self.values = self._stack("value", concept.values, trainable, space)
        self.keys = None if concept.keys is None else self._stack("key", concept.keys, trainable, space)

    @staticmethod
    def runtime_key(layer: LayerId) -> Any:
        raise NotImplementedError

    def _stack(self, kind: str, vectors: Mapping[LayerId, torch.Tensor], trainable: bool,
               space: ValueSpace | None) -> torch.nn.ParameterList:
        if space is None:
            return torch.nn.ParameterList(
                torch.nn.Parameter(vectors[l].detach().to(torch.float32).clone(), requires_grad=trainable)
                for l in self.layers)
        if any(bool(vectors[l].any()) for l in self.layers):
            raise ValueError("training in value space starts from zero vectors (or from a resume state)")
        widths = []
        for i, l in enumerate(self.layers):  # buffers: they follow the residual to the training device
            inverse = space.inverse(kind, l)
            if inverse is not None:
                self.register_buffer(f"{kind}_inverse_{i}", inverse, persistent=False)
            widths.append(vectors[l].shape[0] if inverse is None else inverse.shape[1])
        self.register_buffer(f"{kind}_scales", torch.ones(len(self.layers)), persistent=False)
        return torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(w), requires_grad=trainable) for w in widths)

    def set_scales(self, scales: Mapping[str, float]) -> None:
        """s_l of every trained vector, by its name (ValueSpace.scales)."""
        for kind in ("value", "key") if self.keys is not None else ("value",):
            buffer = self.get_buffer(f"{kind}_scales")
            buffer.copy_(torch.tensor([scales[f"{kind}.{l.key}"] for l in self.layers], dtype=buffer.dtype))

    def to(self, *args, **kwargs) -> "ConceptResidual":
        device = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, (torch.device, str))), None)
        if device is not None and torch.device(device) != self.values[0].device:
            super().to(device=device)
        return self

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model options (0.3.64); residuals are immutable at inference
        # and shared by reference while training, so a clone may share this object.
        return self

    def active(self, extra_options: Mapping[str, Any]) -> bool:
        if self.strength == 0:
            return False
        if self.sigma_range is None:
            return True
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.max())
        high, low = self.sigma_range
        return low <= sigma <= high

    def layer_at(self, key: Any, extra_options: Mapping[str, Any]) -> int | None:
        """The index of the layer ComfyUI is running (by its run-time key), or None where this concept does
        not act: another layer, strength 0 there, or outside its part of the schedule."""
        i = self.index.get(key)
        if i is None or self.strengths[i] == 0 or not self.active(extra_options):
            return None
        return i

    def scaled(self, i: int, keys: bool = False) -> torch.Tensor:
        kind = "key" if keys else "value"
        vector = (self.keys if keys else self.values)[i]
        if self.relative:
            vector = self.get_buffer(f"{kind}_scales")[i] * vector
            if hasattr(self, f"{kind}_inverse_{i}"):
                vector = self.get_buffer(f"{kind}_inverse_{i}") @ vector
        return self.strengths[i] * vector


class InfusionResidual(ConceptResidual):
    """UNet: an attn2_patch adding one concept's residuals to the value input (and, for key+value, the key
    input) of each cross-attention layer at its word's positions."""

    @staticmethod
    def runtime_key(layer: LayerId) -> Any:
        return (layer.block, layer.number), layer.index  # as the UNet reports a layer: block, block_index

    def forward(self, n, context, value, extra_options):
        block = extra_options.get("block")
        batch_positions = extra_options.get(BATCH_KEY)
        if block is None or batch_positions is None:
            return n, context, value
        i = self.layer_at((tuple(block), extra_options.get("block_index", 0)), extra_options)
        if i is None:
            return n, context, value
        rows = batch_positions.rows(self.word, extra_options.get("uuids", []), value.shape[0], value.shape[1],
                                    value.device)
        if rows is None:
            return n, context, value
        value = add_at_rows(value, rows, self.scaled(i))
        if self.keys is not None:
            context = add_at_rows(context, rows, self.scaled(i, keys=True))
        return n, context, value
