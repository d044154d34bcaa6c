"""Two concepts in one picture, on the two-object world (pairs.py): each concept trained alone from photos of its
one object (as a user photographs their dog alone), then both asked for in one prompt.

The concepts: a green triangle bound to `triangle` and a yellow ring bound to `ring`, 5 photos each on stripes.
What the probe reads in each sample of "a triangle and a ring on <background>" (both orders of mention), per half:
  both right        both objects drawn whole, each as its concept (one a half); also each concept's own rate
  leakage           an object drawn with the other concept's colour (a green ring, a yellow triangle), or both
                    halves the same one of the two shapes (the other concept's shape taken over)
  missing or fused  fewer than two whole objects: a half empty, or an object across the middle
  composition gap   a concept's rate alone ("a triangle on <background>") minus its rate in the pair
  context           both halves on the background asked for
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from . import pairs, scenes
from .sampling import sample

PHOTO_BACKGROUND = "stripes"


@dataclass(frozen=True)
class PairConcept:
    name: str
    word: str  # also the object's shape
    colour: str

    def photos(self, count: int = 5, seed: int = 0) -> torch.Tensor:
        """The user's photos as raw latents [count, 4, 16, 32]: the one object in a random half, on stripes."""
        rng = random.Random(seed)
        shots = []
        for _ in range(count):
            thing = scenes.random_scene(rng, shapes=(self.word,), colours=(self.colour,),
                                        backgrounds=(PHOTO_BACKGROUND,))
            left = rng.random() < 0.5
            shots.append(pairs.render(pairs.PairScene(thing if left else None, None if left else thing,
                                                      PHOTO_BACKGROUND)))
        return scenes.to_latent(torch.stack(shots))

    @property
    def object(self) -> tuple[str, str]:
        return self.colour, self.word


TRIANGLE = PairConcept("a green triangle", "triangle", "green")
RING = PairConcept("a yellow ring", "ring", "yellow")
CONCEPTS = (TRIANGLE, RING)
OTHER_SHAPES = tuple(s for s in scenes.SHAPES if s not in (TRIANGLE.word, RING.word))  # shapes neither word names


def pair_prompts(first: PairConcept = TRIANGLE, second: PairConcept = RING) -> list[tuple[str, str]]:
    """(prompt, background): both words on every background, in both orders of mention."""
    return [(f"a {a.word} and a {b.word} on {bg}", bg) for bg in scenes.BACKGROUNDS
            for a, b in ((first, second), (second, first))]


def alone_prompts(concept: PairConcept) -> list[tuple[str, str]]:
    return [(f"a {concept.word} on {bg}", bg) for bg in scenes.BACKGROUNDS]


@dataclass
class Samples:
    """Samples of some prompts, and what the half probe read in each: {prompt: latents}, {prompt: [(left, right)]}."""

    latents: dict[str, torch.Tensor]
    readings: dict[str, list[tuple[Any, Any]]]
    backgrounds: dict[str, str]

    def rate(self, hit: Any) -> float:
        found = [hit(r, self.backgrounds[p]) for p, rs in self.readings.items() for r in rs]
        return sum(found) / len(found)

    def all_latents(self) -> torch.Tensor:
        return torch.cat(list(self.latents.values()))


def draw_samples(model: Any, clip: Any, probe: Any, prompts: list[tuple[str, str]], per_prompt: int,
                 seed: int, condition: Any = None) -> Samples:
    """`condition(prompt, background)`: the conditioning a user builds for a prompt (None: the prompt encoded)."""
    latents = {p: sample(model, clip, p, per_prompt, seed + i, width=pairs.WIDTH,
                         positive=condition(p, bg) if condition is not None else None)
               for i, (p, bg) in enumerate(prompts)}
    return Samples(latents, {p: pairs.read_halves(probe, x) for p, x in latents.items()}, dict(prompts))


def concept_drawn(concept: PairConcept) -> Any:
    return lambda readings, background: concept.object in pairs.drawn(readings)


def both_right(first: PairConcept, second: PairConcept) -> Any:
    return lambda readings, background: pairs.drawn(readings) == {first.object, second.object}


def leaked(first: PairConcept, second: PairConcept) -> Any:
    """An object with the other concept's colour, or the two halves one concept's shape twice."""
    swapped = {(first.colour, second.word), (second.colour, first.word)}

    def hit(readings: tuple, background: str) -> bool:
        shapes = [r.shape for r in readings]
        return bool(pairs.drawn(readings) & swapped) or (shapes[0] == shapes[1] and shapes[0] in (first.word,
                                                                                                  second.word))
    return hit


def missing_or_fused(readings: tuple, background: str) -> bool:
    return len(pairs.drawn(readings)) < 2 or any(r.shape in (pairs.NONE, pairs.CUT) for r in readings)


def alone_right(concept: PairConcept) -> Any:
    """The concept drawn, as the one object of the picture."""
    return lambda readings, background: pairs.drawn(readings) == {concept.object} and sum(
        r.shape == pairs.NONE for r in readings) == 1


def in_context(readings: tuple, background: str) -> bool:
    return all(r.background == background for r in readings)


def other_prompts(count: int = 8) -> list[tuple[str, set[tuple[str, str]], str]]:
    """Pair prompts that say neither word: two objects of the other shapes, each its own colour."""
    rng = random.Random(12)
    chosen = []
    while len(chosen) < count:
        (c1, c2), bg = rng.sample(list(scenes.COLOURS), 2), rng.choice(scenes.BACKGROUNDS)
        s1, s2 = rng.choice(OTHER_SHAPES), rng.choice(OTHER_SHAPES)
        chosen.append((f"a {c1} {s1} and a {c2} {s2} on {bg}", {(c1, s1), (c2, s2)}, bg))
    return chosen


def other_scenes(count: int = 16, seed: int = 0) -> torch.Tensor:
    """Pair scenes of neither concept's shape, as raw latents: LFD's reference latents."""
    rng = random.Random(seed)
    chosen = []
    while len(chosen) < count:
        scene = pairs.random_pair_scene(rng, pair_share=1.0)
        if all(o.shape in OTHER_SHAPES for o in scene.objects):
            chosen.append(pairs.render(scene))
    return scenes.to_latent(torch.stack(chosen))


def other_accuracy(model: Any, clip: Any, probe: Any, per_prompt: int, seed: int) -> float:
    """How often both objects and the background are right in samples of pair prompts without either word."""
    hits = total = 0
    for i, (prompt, objects, background) in enumerate(other_prompts()):
        for readings in pairs.read_halves(probe, sample(model, clip, prompt, per_prompt, seed + i, width=pairs.WIDTH)):
            hits += pairs.drawn(readings) == objects and in_context(readings, background)
            total += 1
    return hits / total


def half_features(probe: Any, latents: torch.Tensor) -> torch.Tensor:
    """The half probe's penultimate features of each half, side by side: where W2 is taken."""
    with torch.no_grad():
        return torch.cat([probe.features(scenes.to_world(h.float())) for h in pairs.halves(latents)], dim=1)
