"""The probe: reads colour, shape, background and the concept's mark off a latent.

A small convolutional classifier with one head per attribute, trained on freshly rendered scenes
(the concept's colour and mark included) under the kinds of damage samples show: a global tint,
noise, blur, contrast. It is what the benchmark and the tests use to see what a model drew.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import scenes

HEADS = {"colour": tuple(scenes.ALL_COLOURS), "shape": scenes.SHAPES, "background": scenes.BACKGROUNDS,
         "mark": (False, True)}
# The two-object world's probe reads one half of a scene: it may hold no object, or part of one.
HALF_HEADS = {**HEADS, "colour": HEADS["colour"] + ("none",), "shape": HEADS["shape"] + ("none", "cut")}


class Probe(nn.Module):
    def __init__(self, width: int = 32, heads: dict[str, tuple] = HEADS):
        super().__init__()
        self.values = heads
        self.features = nn.Sequential(
            nn.Conv2d(4, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(2 * width, len(values)) for name, values in heads.items()})

    def forward(self, world: torch.Tensor) -> dict[str, torch.Tensor]:
        """World-unit scenes [B, 4, 16, 16] -> logits per head."""
        f = self.features(world)
        return {name: head(f) for name, head in self.heads.items()}


@dataclass(frozen=True)
class Reading:
    colour: str
    shape: str
    background: str
    mark: bool


def read(probe: Probe, latents: torch.Tensor, batch: int = 512) -> list[Reading]:
    """What the probe sees in raw latents [B, 4, 16, 16] (as a sampler returns them)."""
    out: list[Reading] = []
    with torch.no_grad():
        for chunk in scenes.to_world(latents.float()).split(batch):
            logits = probe(chunk)
            picks = {name: logits[name].argmax(1).tolist() for name in probe.values}
            out += [Reading(*(probe.values[name][picks[name][i]] for name in probe.values))
                    for i in range(chunk.shape[0])]
    return out


def damaged(world: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What sampling does to a scene, at random strengths: tint, contrast, blur, noise."""
    b = world.shape[0]
    u = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
    tint = (u(b, 4, 1, 1) - 0.5) * 0.5
    contrast = 0.75 + 0.5 * u(b, 1, 1, 1)
    blurred = nn.functional.avg_pool2d(world, 3, stride=1, padding=1, count_include_pad=False)
    blur = (u(b, 1, 1, 1) < 0.3).float() * u(b, 1, 1, 1)
    noise = torch.randn(world.shape, generator=g) * 0.25 * u(b, 1, 1, 1)
    return (world * (1 - blur) + blurred * blur) * contrast + tint + noise


def random_batch(rng: random.Random, size: int, heads: dict[str, tuple] = HEADS
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scenes over the whole world (the concept's colour and mark included) and their labels; for HALF_HEADS,
    a quarter of them empty halves and a sixth objects cut by the half's edge."""
    world, labels = [], {name: [] for name in heads}
    for _ in range(size):
        scene = scenes.random_scene(rng, colours=tuple(scenes.ALL_COLOURS), mark=rng.random() < 0.3)
        label = {"colour": scene.colour, "shape": scene.shape, "background": scene.background, "mark": scene.mark}
        kind = rng.random() if heads is HALF_HEADS else 1.0
        if kind < 0.25:
            world.append(scenes.render_background(scene.background))
            label.update(colour="none", shape="none", mark=False)
        else:
            if kind < 0.25 + 1 / 6:  # centred within 3 px of the left or right edge
                edge = rng.choice((0.0, float(scenes.SIZE)))
                scene = replace(scene, cx=edge + rng.uniform(-3.0, 3.0), mark=False)
                label.update(shape="cut", mark=False)
            world.append(scenes.render(scene))
        for name in heads:
            labels[name].append(heads[name].index(label[name]))
    return torch.stack(world), {name: torch.tensor(values) for name, values in labels.items()}


def accuracy(probe: Probe, rng: random.Random, size: int, g: torch.Generator | None = None) -> dict[str, float]:
    """Per-head accuracy on fresh scenes (damaged when `g` is given)."""
    world, labels = random_batch(rng, size, probe.values)
    if g is not None:
        world = damaged(world, g)
    with torch.no_grad():
        logits = probe(world)
    return {name: float((logits[name].argmax(1) == labels[name]).float().mean()) for name in probe.values}
