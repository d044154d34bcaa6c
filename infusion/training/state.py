"""The resume state: everything a run needs to continue exactly where it stopped.

Vectors (fp32), AdamW moments, the step count, the random generator, the photo order, the loss
history and (with fp16) the gradient scaler. Saved as safetensors (no pickle) with a temporary
file and a rename, so a crash mid-save never leaves a broken state. Resuming a run stopped at
step N and continuing to 2N gives, on the same device, the same bits as an uninterrupted 2N run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..format import write_safetensors

RESUME_SUFFIX = ".resume"
STATE_FORMAT = "infusion-resume"
STATE_VERSION = 2  # 2: a photo order and cursor per aspect-ratio bucket


class ResumeError(ValueError):
    """A resume state that cannot continue this run."""


@dataclass
class TrainingState:
    step: int
    vectors: dict[str, torch.Tensor]                      # parameter name -> fp32 vector
    optimizer: dict[int, dict[str, torch.Tensor]]         # AdamW state by parameter index (order of `vectors`)
    generator: torch.Tensor                               # torch.Generator.get_state()
    order: list[torch.Tensor]                             # each bucket's photo order of its current pass
    cursor: list[int]                                     # each bucket's next position in its `order`
    losses: list[float]                                   # mean loss of every optimizer step
    run: dict[str, Any] = field(default_factory=dict)     # data and settings; a resume must match them
    scaler: dict[str, float] | None = None                # fp16 gradient scaler


def save_state(state: TrainingState, path: str) -> str:
    tensors = {f"vector.{name}": v.detach().to("cpu", torch.float32).contiguous() for name, v in state.vectors.items()}
    for index, entries in state.optimizer.items():
        for key, t in entries.items():
            tensors[f"optimizer.{index}.{key}"] = t.detach().to("cpu").contiguous()
    tensors["generator"] = state.generator.to("cpu").contiguous()
    for i, order in enumerate(state.order):
        tensors[f"order.{i}"] = order.to("cpu", torch.int64).contiguous()
    meta = {
        "format": STATE_FORMAT,
        "format_version": str(STATE_VERSION),
        "step": str(state.step),
        "cursor": json.dumps(state.cursor),
        "vector_names": json.dumps(list(state.vectors)),
        "losses": json.dumps(state.losses),  # Python floats round-trip exactly through JSON
        "run": json.dumps(state.run, sort_keys=True),
        "scaler": json.dumps(state.scaler),
    }
    return write_safetensors(tensors, path, meta)


def load_state(path: str) -> TrainingState:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ResumeError(f"no resume state at {path}: train without resume first (it is written every "
                          "'save every' steps, at the end, and when a run is cancelled)")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ResumeError(f"{name} is not a readable resume state ({e})") from None
    if meta.get("format") != STATE_FORMAT:
        raise ResumeError(f"{name} is not an Infusion resume state")
    if int(meta.get("format_version", "0")) != STATE_VERSION:
        raise ResumeError(f"{name} has resume format version {meta.get('format_version')}, this pack reads "
                          f"version {STATE_VERSION}: it was saved by another version of the pack; switch resume "
                          "off to start over")
    names, cursors = json.loads(meta["vector_names"]), json.loads(meta["cursor"])
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            _, index, entry = key.split(".", 2)
            optimizer.setdefault(int(index), {})[entry] = t
    return TrainingState(
        step=int(meta["step"]),
        vectors={n: tensors[f"vector.{n}"] for n in names},
        optimizer=optimizer,
        generator=tensors["generator"],
        order=[tensors[f"order.{i}"] for i in range(len(cursors))],
        cursor=cursors,
        losses=[float(x) for x in json.loads(meta["losses"])],
        run=json.loads(meta["run"]),
        scaler=json.loads(meta["scaler"]),
    )


def check_resumable(state: TrainingState, run: dict[str, Any]) -> None:
    """Refuse a state made with other photos, word, templates or settings: continuing it would
    silently mix two runs."""
    current = json.loads(json.dumps(run, sort_keys=True))  # the form the state stored it in
    keys = sorted(set(current) | set(state.run))
    differ = [k for k in keys if current.get(k) != state.run.get(k)]
    if differ:
        detail = "; ".join(f"{k}: saved {state.run.get(k)!r}, now {current.get(k)!r}" for k in differ[:6])
        raise ResumeError(f"the resume state belongs to a different run ({detail}). Resume with the same "
                          "photos, word, templates and settings (only steps and 'save every' may change), "
                          "or switch resume off to start over")
