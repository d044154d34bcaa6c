"""Sampling the toy world through ComfyUI's own nodes (CLIPTextEncode, KSampler), and the held-out
prompts that say whether a model knows the world."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import scenes

# Combinations the base model never sees in training: each colour, shape and background is in two.
HELD_OUT = (("red", "ring", "stripes"), ("green", "triangle", "checks"), ("blue", "cross", "white"),
            ("yellow", "square", "black"), ("red", "cross", "checks"), ("green", "square", "stripes"),
            ("blue", "ring", "black"), ("yellow", "triangle", "white"))
SAMPLER = {"steps": 20, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}


def encode(clip: Any, text: str) -> list:
    import nodes
    with torch.inference_mode():
        return nodes.CLIPTextEncode().encode(clip, text)[0]


def sample(model: Any, clip: Any, prompt: str, count: int, seed: int, negative: str = "", width: int = scenes.SIZE,
           positive: list | None = None, **settings: Any) -> torch.Tensor:
    """`count` samples of one prompt (one KSampler batch, seeded) -> raw latents [count, 4, 16, width]; `positive`: a
    conditioning the user built for it (regions, hooks) instead of the prompt's own."""
    import nodes
    options = {**SAMPLER, **settings}
    latent = {"samples": torch.zeros(count, 4, scenes.SIZE, width)}
    with torch.inference_mode():
        out = nodes.common_ksampler(model, seed, options["steps"], options["cfg"], options["sampler_name"],
                                    options["scheduler"], positive if positive is not None else encode(clip, prompt),
                                    encode(clip, negative), latent)
    return out[0]["samples"].float().clone()


def held_out_prompts() -> list[tuple[str, tuple[str, str, str]]]:
    return [(f"a {colour} {shape} on {background}", (colour, shape, background))
            for colour, shape, background in HELD_OUT]


def knowledge(model: Any, clip: Any, probe: Any, per_prompt: int = 16, seed: int = 0) -> dict[str, float]:
    """How often the probe reads the asked colour, shape and background in samples of the held-out prompts."""
    from .probe import read

    hits = {"colour": 0, "shape": 0, "background": 0}
    total = 0
    for i, (prompt, (colour, shape, background)) in enumerate(held_out_prompts()):
        for r in read(probe, sample(model, clip, prompt, per_prompt, seed + i)):
            hits["colour"] += r.colour == colour
            hits["shape"] += r.shape == shape
            hits["background"] += r.background == background
            total += 1
    return {k: v / total for k, v in hits.items()}


def grid(rows: Sequence[torch.Tensor], upscale: int = 4) -> torch.Tensor:
    """Rows of raw latents -> one IMAGE [1, H, W, 3] (each row a list of samples side by side)."""
    from einops import rearrange
    stacked = torch.stack([scenes.to_rgb(r, upscale) for r in rows])  # row, col, h, w, c
    return rearrange(stacked, "row col h w c -> 1 (row h) (col w) c")
