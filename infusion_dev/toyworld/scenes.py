"""Scenes of the toy world, drawn straight into latent space, and their captions.

A scene is 4 x 16 x 16: channels 0-2 are red, green and blue in [-1, 1], channel 3 their mean (so
the fourth latent channel carries brightness, as SD's does). The shape (about 8 px across, jittered
in size and position) is drawn anti-aliased (4 x 4 samples per pixel) over the background.

The base world has 4 shapes x 4 colours x 4 backgrounds. The concept the benchmark teaches is not
in it: a purple shape with a black dot at its centre (`mark`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

SIZE = 16
SHAPES = ("square", "ring", "triangle", "cross")
COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}
CONCEPT_COLOURS = {"purple": (0.7, -1.0, 1.0)}  # never in the base world's training scenes
ALL_COLOURS = {**COLOURS, **CONCEPT_COLOURS}
BACKGROUNDS = ("white", "black", "stripes", "checks")
LIGHT, DARK = 0.8, -0.8
# SD1's latent format multiplies latents by 0.18215 on the way in: world values in [-1, 1] are
# stored divided by it, so the model sees them at SD's own scale.
LATENT_SCALE = 1 / 0.18215
# Filler phrasings, so the base model learns that these words say nothing about the scene (the
# authors' caption templates use them).
PHRASINGS = ("{}", "a {}", "a photo of a {}", "a good photo of a {}", "the photo of a {}", "image of a {}",
             "A photograph of {}", "A {} shown in a photo", "a good photo of the {}", "image of the {}")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    mark: bool = False
    cx: float = SIZE / 2
    cy: float = SIZE / 2
    radius: float = 4.0

    def caption(self, rng: random.Random, drop: float = 0.25) -> str:
        """A caption naming each attribute with probability 1 - drop ("a red square on stripes", "a square",
        "a red shape", ...); the phrasing is drawn from PHRASINGS."""
        colour = self.colour if rng.random() >= drop else ""
        shape = self.shape if rng.random() >= drop else "shape"
        background = f"on {self.background}" if rng.random() >= drop else ""
        words = " ".join(w for w in (colour, shape, background) if w)
        return rng.choice(PHRASINGS).format(words)


def random_scene(rng: random.Random, shapes=SHAPES, colours=tuple(COLOURS), backgrounds=BACKGROUNDS,
                 mark: bool = False) -> Scene:
    return Scene(shape=rng.choice(shapes), colour=rng.choice(colours), background=rng.choice(backgrounds), mark=mark,
                 cx=SIZE / 2 + rng.uniform(-1.5, 1.5), cy=SIZE / 2 + rng.uniform(-1.5, 1.5),
                 radius=rng.uniform(3.5, 4.5))


def _grid(supersample: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample points (y, x) in pixel units, [SIZE*s, SIZE*s]."""
    steps = (torch.arange(SIZE * supersample, dtype=torch.float64) + 0.5) / supersample
    return torch.meshgrid(steps, steps, indexing="ij")


def _shape_mask(scene: Scene, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dx, dy, r = x - scene.cx, y - scene.cy, scene.radius
    if scene.shape == "square":
        return (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r)
    if scene.shape == "ring":  # hollow: a filled disc differs from a square only at its corners, which blur at 16x16
        d2 = dx.square() + dy.square()
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if scene.shape == "triangle":  # apex up (y grows downwards)
        return (dy <= r) & (dy >= -r) & (dx.abs() <= (dy + r) * 0.6)
    if scene.shape == "cross":
        arm = 0.45 * r
        return ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))
    raise ValueError(f"unknown shape '{scene.shape}' (known: {', '.join(SHAPES)})")


def _background(name: str, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if name == "white":
        return torch.full_like(x, LIGHT)
    if name == "black":
        return torch.full_like(x, DARK)
    if name == "stripes":  # horizontal, 2 px each
        return torch.where((y // 2) % 2 == 0, LIGHT, DARK)
    if name == "checks":  # 4 px squares
        return torch.where(((y // 4) + (x // 4)) % 2 == 0, LIGHT, DARK)
    raise ValueError(f"unknown background '{name}' (known: {', '.join(BACKGROUNDS)})")


def render(scene: Scene) -> torch.Tensor:
    """The scene in world units [-1, 1]: [4, SIZE, SIZE] float32."""
    y, x = _grid()
    rgb = _background(scene.background, y, x).unsqueeze(0).repeat(3, 1, 1)
    inside = _shape_mask(scene, y, x)
    colour = torch.tensor(ALL_COLOURS[scene.colour], dtype=rgb.dtype).view(3, 1, 1)
    rgb = torch.where(inside, colour, rgb)
    if scene.mark:
        dot = (x - scene.cx).square() + (y - scene.cy).square() <= 1.3 ** 2
        rgb = torch.where(dot, torch.tensor(-1.0, dtype=rgb.dtype), rgb)
    return _pixels(rgb)


def render_background(name: str) -> torch.Tensor:
    """A background alone, as `render` draws it under a shape: [4, SIZE, SIZE] float32."""
    y, x = _grid()
    return _pixels(_background(name, y, x).unsqueeze(0).repeat(3, 1, 1))


def _pixels(rgb: torch.Tensor) -> torch.Tensor:
    """Supersampled RGB -> anti-aliased pixels with the brightness channel."""
    pixels = torch.nn.functional.avg_pool2d(rgb.unsqueeze(0), 4).squeeze(0)
    return torch.cat([pixels, pixels.mean(0, keepdim=True)]).float()


def to_latent(world: torch.Tensor) -> torch.Tensor:
    """World units -> raw latents, what a VAE encoder would hand the sampler (LATENT["samples"])."""
    return world * LATENT_SCALE


def to_world(latent: torch.Tensor) -> torch.Tensor:
    return latent / LATENT_SCALE


def to_rgb(latent: torch.Tensor, upscale: int = 8) -> torch.Tensor:
    """Raw latents [B, 4, H, W] -> a viewable IMAGE [B, H*upscale, W*upscale, 3] in [0, 1]."""
    rgb = (to_world(latent[:, :3]).clamp(-1, 1) + 1) / 2
    rgb = torch.nn.functional.interpolate(rgb, scale_factor=upscale, mode="nearest")
    return rgb.permute(0, 2, 3, 1).contiguous()
