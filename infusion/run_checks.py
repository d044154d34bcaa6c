"""What a sampling run tells the user when an applied concept cannot act: never a silent no-op.

Checked at a run's first step, from the CALC_COND_BATCH wrapper that carries the word positions: none of the
run's conditionings carries the pack's word marks (its prompts were encoded with another CLIP than the one
Apply Infusion to Model returned), or a concept's start/end percent covers none of the run's steps.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from .residual import RESIDUALS_KEY, ConceptResidual
from .tokens import CONDITIONING_KEY


def applied_in(transformer_options: Mapping[str, Any]) -> list[ConceptResidual]:
    """The concepts a model call carries: a UNet's attn2 patches, a DiT's residuals."""
    patches = transformer_options.get("patches", {}).get("attn2_patch", [])
    return [p for p in patches if isinstance(p, ConceptResidual)] + list(transformer_options.get(RESIDUALS_KEY, ()))


def problems(residuals: Sequence[ConceptResidual], conds: Sequence[Any], sigmas: torch.Tensor) -> list[str]:
    """Why each concept cannot act in this run (empty when all can)."""
    found = []
    names = ", ".join(r.label for r in residuals)
    if not any(CONDITIONING_KEY in c for group in conds if group for c in group):
        found.append(f"Infusion: no prompt of this run was encoded with the CLIP that Apply Infusion to Model "
                     f"returned, so {names} cannot see its word and draws nothing: connect that CLIP output to "
                     "your text encoders (CLIP Text Encode)")
    steps = [float(s) for s in sigmas[:-1]]
    for r in residuals:
        if r.sigma_range is not None and not any(r.sigma_range[1] <= s <= r.sigma_range[0] for s in steps):
            found.append(f"Infusion: the start_percent/end_percent of {r.label} cover none of this run's "
                         f"{len(steps)} steps, so it draws nothing: widen the range or sample more steps")
    return found


def tell_if_concepts_cannot_act(conds: Sequence[Any], timestep: torch.Tensor,
                                transformer_options: Mapping[str, Any]) -> None:
    """At a sampler run's first step (training and the metrics set no `sample_sigmas`), log why a concept
    cannot act."""
    sigmas = transformer_options.get("sample_sigmas")
    if sigmas is None or len(sigmas) < 2 or float(timestep.max()) != float(sigmas[0]):
        return
    residuals = applied_in(transformer_options)
    for message in problems(residuals, conds, sigmas) if residuals else []:
        logging.warning(message)
