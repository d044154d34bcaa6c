"""The CALC_COND_BATCH wrapper patching.py installs: each sampler step's word positions, by conditioning,
handed to the concepts' attention patches (residual.BatchPositions), and at a run's first step the run checks.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .residual import BATCH_KEY, BatchPositions
from .run_checks import tell_if_concepts_cannot_act
from .tokens import CONDITIONING_KEY, WordPositions


def _as_encoded(c: Mapping[str, Any]) -> WordPositions:
    """The positions with the conditioning's real token length as the tiling period.

    ConditioningConcat appends another prompt's rows after the encoded ones and keeps the first
    prompt's dict: its positions stay valid, but the tensor is longer than the tokens were. (Positions that
    count more rows than the tensor's, HiDream's Llama rows besides its T5 rows, are kept.)
    """
    positions = c[CONDITIONING_KEY]
    cross_attn = c.get("cross_attn")
    if cross_attn is None or cross_attn.shape[1] <= positions.length:
        return positions
    return replace(positions, length=cross_attn.shape[1])


def carry_word_positions(executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
    """CALC_COND_BATCH wrapper: hands the word positions of this step's conditionings to the patches
    (and passes on whatever else a ComfyUI version gives a wrapper); at a run's first step, says why a
    concept cannot act, if one cannot (run_checks.py)."""
    tell_if_concepts_cannot_act(conds, timestep, model_options.get("transformer_options", {}))
    by_uuid = {c["uuid"]: _as_encoded(c) for group in conds if group for c in group
               if CONDITIONING_KEY in c and "uuid" in c}
    options = dict(model_options)
    options["transformer_options"] = {**model_options.get("transformer_options", {}),
                                      BATCH_KEY: BatchPositions(by_uuid)}
    return executor(model, conds, x_in, timestep, options, *args, **kwargs)
