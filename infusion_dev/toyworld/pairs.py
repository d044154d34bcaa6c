"""The two-object world: scenes with one or two objects side by side, for measuring two concepts in one picture.

A scene is 4 x 16 x 32: two 16 x 16 halves ("slots"), each the one-object world's scene geometry (an
object about 8 px across, jittered, or nothing) over one background spanning both. A single-object scene
puts its object in a random slot, as a user photographs their dog alone; a pair scene fills both, and its
caption names the two in a random order ("a red triangle and a blue ring on stripes"), so the model must bind
each colour to its shape by where the words stand, not by where the objects do.

The probe reads each half on its own (`halves`): its object's colour and shape, "none" for an empty half and
"cut" for an object drawn across the middle (two objects fused into one, or one misplaced).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from . import model, scenes
from .sampling import HELD_OUT as ONE_OBJECT_HELD_OUT

HEIGHT, WIDTH = scenes.SIZE, 2 * scenes.SIZE
PAIR_SHARE = 0.5  # share of training scenes with two objects
NONE, CUT = "none", "cut"
# Objects the base model never sees in training (in either slot, alone or paired): the one-object world's.
HELD_OUT = frozenset(ONE_OBJECT_HELD_OUT)
WEIGHTS = {"unet": os.path.join(model.WEIGHTS_DIR, "pairs_unet.safetensors"),
           "dit": os.path.join(model.WEIGHTS_DIR, "pairs_dit.safetensors")}
PROBE_WEIGHTS = os.path.join(model.WEIGHTS_DIR, "half_probe.safetensors")
# The one-object world's UNet without attention at its first level (as SDXL's UNet has none there): at 16 x 32
# that level's self-attention would double the UNet's training time. Its cross-attention reads the prompt at
# 8 x 16 (each half 8 x 8) and in the middle: 6 layers.
UNET_CONFIG = {**model.UNET_CONFIG, "transformer_depth": [0, 0, 1, 1, 0, 0],
               "transformer_depth_output": [0, 0, 0, 1, 1, 1, 0, 0, 0]}


@dataclass(frozen=True)
class PairScene:
    """`left` and `right`: the objects in each slot (a one-object Scene in half coordinates) or None."""
    left: scenes.Scene | None
    right: scenes.Scene | None
    background: str

    @property
    def objects(self) -> tuple[scenes.Scene, ...]:
        return tuple(o for o in (self.left, self.right) if o is not None)

    def caption(self, rng: random.Random, drop: float = 0.25) -> str:
        """The objects in a random order of mention, each naming its colour and shape with probability
        1 - drop ("a red triangle and a ring", "a blue shape"), then the background with the same odds."""
        named = []
        for o in rng.sample(self.objects, len(self.objects)):
            colour = o.colour if rng.random() >= drop else ""
            shape = o.shape if rng.random() >= drop else "shape"
            named.append(" ".join(w for w in (colour, shape) if w))
        background = f" on {self.background}" if rng.random() >= drop else ""
        return rng.choice(scenes.PHRASINGS).format(" and a ".join(named) + background)


def known(scene: scenes.Scene) -> bool:
    return (scene.colour, scene.shape, scene.background) not in HELD_OUT


def random_pair_scene(rng: random.Random, pair_share: float = PAIR_SHARE) -> PairScene:
    """A training scene: one object in a random slot, or (with probability `pair_share`) two distinct objects;
    never a held-out object."""
    background = rng.choice(scenes.BACKGROUNDS)
    while True:
        objects = [scenes.random_scene(rng, backgrounds=(background,)) for _ in range(2)]
        if all(known(o) for o in objects) and (objects[0].shape, objects[0].colour) != (objects[1].shape,
                                                                                        objects[1].colour):
            break
    if rng.random() >= pair_share:
        objects[rng.randrange(2)] = None
    return PairScene(objects[0], objects[1], background)


def render(scene: PairScene) -> torch.Tensor:
    """The scene in world units: [4, 16, 32] float32 (each half rendered as a one-object scene; the
    backgrounds' periods divide 16, so they run on across the middle)."""
    drawn = [scenes.render(o) if o is not None else scenes.render_background(scene.background)
             for o in (scene.left, scene.right)]
    return torch.cat(drawn, dim=-1)


def halves(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, 16, 32] -> its left and right halves, each [B, C, 16, 16] (what the probe reads)."""
    return latents[..., : scenes.SIZE], latents[..., scenes.SIZE:]


def read_halves(probe: Any, latents: torch.Tensor) -> list[tuple[Any, Any]]:
    """What the half probe sees in each sample's left and right half."""
    from .probe import read
    left, right = halves(latents)
    return list(zip(read(probe, left), read(probe, right)))


def drawn(readings: tuple[Any, Any]) -> set[tuple[str, str]]:
    """The (colour, shape) of each object the probe sees whole in a sample."""
    return {(r.colour, r.shape) for r in readings if r.shape not in (NONE, CUT)}


def held_out_prompts() -> list[tuple[str, set[tuple[str, str]], str]]:
    """Pair prompts of two held-out objects that share a background, in both orders of mention:
    (prompt, the two (colour, shape), background)."""
    prompts = []
    for background in scenes.BACKGROUNDS:
        first, second = sorted((c, s) for c, s, b in HELD_OUT if b == background)
        for a, b in ((first, second), (second, first)):
            prompts.append((f"a {a[0]} {a[1]} and a {b[0]} {b[1]} on {background}", {a, b}, background))
    return prompts


def knowledge(model: Any, clip: Any, probe: Any, per_prompt: int = 16, seed: int = 0) -> dict[str, float]:
    """How often the probe reads both asked objects (one a half, whole) and the asked background (in both
    halves) in samples of the held-out pair prompts."""
    from .sampling import sample

    hits = {"both objects": 0, "background": 0}
    total = 0
    for i, (prompt, objects, background) in enumerate(held_out_prompts()):
        for readings in read_halves(probe, sample(model, clip, prompt, per_prompt, seed + i, width=WIDTH)):
            hits["both objects"] += drawn(readings) == objects
            hits["background"] += all(r.background == background for r in readings)
            total += 1
    return {k: v / total for k, v in hits.items()}


def build_clip() -> Any:
    """The two-object world's CLIP: ComfyUI's SD1 tokenizer, the decaying-mean toy encoder."""
    from .model import build_clip as build
    from .text import PairTextModel
    return build(PairTextModel)


def build_model(kind: str) -> Any:
    """A ModelPatcher over the two-object world's UNet or DiT, freshly initialised (for training it)."""
    from . import dit
    return model.build_model(UNET_CONFIG) if kind == "unet" else dit.build_model()


def load(kind: str = "unet") -> tuple[Any, Any]:
    """(MODEL, CLIP) of the two-object world's trained UNet or DiT."""
    from functools import partial

    from ..tiny_models import load_unet_file
    from . import dit
    if not os.path.isfile(WEIGHTS[kind]):
        raise FileNotFoundError(f"no two-object {kind} at {WEIGHTS[kind]}: build it with `python -m "
                                f"infusion_dev.toyworld.train base --world pairs --model {kind}`")
    new_model = partial(model.new_model, UNET_CONFIG) if kind == "unet" else dit.new_model
    return load_unet_file(WEIGHTS[kind], new_model), build_clip()
