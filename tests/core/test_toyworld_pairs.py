"""The two-object toy world (infusion_dev/toyworld/pairs.py): what its base models are trained on, and what its half
probe reads, since every multi-concept figure rests on both."""
import random

import torch

from infusion_dev.toyworld import pairs, probe, scenes
from infusion_dev.toyworld.train import load_probe


def test_training_scenes_hold_one_or_two_known_objects_and_name_them():
    rng = random.Random(0)
    drawn = [pairs.random_pair_scene(rng) for _ in range(2000)]
    assert all(pairs.known(o) for s in drawn for o in s.objects)
    two = [s for s in drawn if len(s.objects) == 2]
    assert 0.45 < len(two) / len(drawn) < 0.55
    assert all((s.left.shape, s.left.colour) != (s.right.shape, s.right.colour) for s in two)
    # Each slot is used alone, and both orders of mention occur for a pair.
    assert {s.left is None for s in drawn if len(s.objects) == 1} == {True, False}
    captions = [two[0].caption(random.Random(seed), drop=0.0) for seed in range(20)]
    first = f"{two[0].left.colour} {two[0].left.shape}"
    second = f"{two[0].right.colour} {two[0].right.shape}"
    assert {c.index(first) < c.index(second) for c in captions} == {True, False}
    assert all(f"on {two[0].background}" in c for c in captions)


def test_the_half_probe_reads_each_half_of_a_pair_scene_as_drawn():
    rng = random.Random(5)
    chosen = [pairs.random_pair_scene(rng) for _ in range(300)]
    latents = scenes.to_latent(torch.stack([pairs.render(s) for s in chosen]))
    readings = pairs.read_halves(load_probe(pairs.PROBE_WEIGHTS, probe.HALF_HEADS), latents)
    right = [all((r.colour, r.shape) == ((o.colour, o.shape) if o else (pairs.NONE, pairs.NONE))
                 and r.background == s.background for r, o in zip(halves, (s.left, s.right)))
             for s, halves in zip(chosen, readings)]
    assert sum(right) / len(right) >= 0.98
    # `drawn` is the pair's objects exactly when both halves are read right.
    assert all(pairs.drawn(h) == {(o.colour, o.shape) for o in s.objects}
               for s, h, ok in zip(chosen, readings, right) if ok)
