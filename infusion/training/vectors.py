"""Between a concept and the trainable residual: named vectors in, a finished concept out."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..concept import InfusionConcept
from ..residual import ConceptResidual
from ..value_space import ValueSpace
from .state import TrainingState

FILE_DTYPE = "fp16"  # concept files are saved in fp16 (25 KB for SD1.x); the returned concept is rounded alike
_ROUNDING = {"fp16": torch.float16, "fp32": torch.float32}[FILE_DTYPE]
VALUE_SCALES = "value_scales"  # the run record's s_l of every trained vector, by name


def named_vectors(residual: ConceptResidual) -> dict[str, torch.nn.Parameter]:
    """The residual's trainable parameters, named as in the concept file ("value.input.1.0", ...)."""
    out = {f"value.{l.key}": p for l, p in zip(residual.layers, residual.values)}
    if residual.keys is not None:
        out.update({f"key.{l.key}": p for l, p in zip(residual.layers, residual.keys)})
    return out


def trained_concept(start: InfusionConcept, state: TrainingState, metadata: Mapping[str, Any],
                    space: ValueSpace) -> InfusionConcept:
    """`start` with the state's trained vectors as the concept stores them (`space.to_concept`, at the run's
    value scales), rounded to the file's precision, so the concept a graph uses right after training is
    exactly the one a later Load Infusion reads back."""
    vectors = space.to_concept(state.vectors, state.run[VALUE_SCALES])

    def pick(kind: str) -> dict:
        return {l: vectors[f"{kind}.{l.key}"].detach().to("cpu", _ROUNDING).float() for l in start.values}

    return InfusionConcept(word=start.word, family=start.family, values=pick("value"),
                           keys=pick("key") if start.keys is not None else None,
                           value_widths=dict(start.value_widths), token_ids=start.token_ids,
                           name=start.name, metadata=dict(metadata), vector_space=start.vector_space,
                           image_queries_only=start.image_queries_only)
