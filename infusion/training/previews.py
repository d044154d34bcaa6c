"""Sample previews while a concept trains: the concept as trained so far, drawn by ComfyUI's own sampler.

At step 0 (the base model) and every `every` steps, each prompt is sampled with a fixed seed (so the
columns compare), decoded with the VAE and saved as output/infusion/<name>/samples/step<N>_<prompt>.png (a video
model's clip of `frames` frames: its frames side by side).
The grid (one row per prompt, one column per step sampled) is read back from those files, so a resumed
run continues the previews where they stopped. Sampling never touches the training's random draws:
the concept is bit-identical with previews on or off. ComfyUI is imported inside functions only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .. import compat
from ..concept import InfusionConcept
from ..patching import apply_concept
from .encoding import encode_captions
from .templates import fill

DEFAULT_PROMPTS = ("a photo of a {} on the beach", "a {} in the snow", "a watercolor painting of a {}")
_FILE = re.compile(r"step(\d{5})_(\d+)\.png")


@dataclass(frozen=True)
class PreviewSettings:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    every: int = 100  # 0: no previews
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    seed: int = 0
    size: int = 0  # the width (and the height, unless `height`); 0: the training resolution
    height: int = 0  # 0: as tall as wide
    frames: int = 1  # a video model's clip length; its frames side by side in the preview

    def __post_init__(self) -> None:
        if self.every < 0 or self.steps < 1 or min(self.size, self.height) < 0 or self.size % 8 or self.height % 8:
            raise ValueError("sample_every must be >= 0, sample_steps >= 1, sample_size and sample_height "
                             "multiples of 8 (0 = the training resolution's square)")
        if self.frames < 1:
            raise ValueError("sample_frames must be at least 1 (1: a still)")
        if self.every and not self.prompts:
            raise ValueError("no sample prompts: give one per line (each with the class word or {}), or set "
                             "sample_every to 0 to turn previews off")

    def due(self, start: int, total: int) -> list[int]:
        """The steps after `start` that get previews: every `every`, and the last."""
        if not self.every:
            return []
        return sorted({s for s in range(self.every, total, self.every) if s > start} | {total} - {start})


def parse_prompts(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class Previewer:
    """Samples, saves and assembles the previews of one training run."""

    def __init__(self, model: Any, clip: Any, vae: Any, word: str, settings: PreviewSettings, folder: str,
                 size: int, check_cancel: Callable[[], None] | None = None):
        """`size`: the training resolution, the previews' side unless the settings give theirs."""
        self.model, self.vae, self.settings, self.folder = model, vae, settings, folder
        self.check_cancel = check_cancel or (lambda: None)
        self.width = settings.size or size
        self.height = settings.height or self.width
        prompts = [fill(p, word) for p in settings.prompts]
        self.positive = encode_captions(clip, word, prompts, ["the sample prompt"] * len(prompts))
        self.negative = clip.encode_from_tokens_scheduled(clip.tokenize(""), show_pbar=False)

    def path(self, step: int, prompt: int) -> str:
        return os.path.join(self.folder, f"step{step:05d}_{prompt + 1}.png")

    def clear(self) -> None:
        """A new run: the previews of an earlier run of this name go."""
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
            if _FILE.fullmatch(name):
                os.remove(os.path.join(self.folder, name))

    def sample(self, step: int, concept: InfusionConcept | None) -> list[Any]:
        """Each prompt at `step` (concept None: the base model); saves and returns the PIL images."""
        import comfy.sample
        from PIL import Image

        model = self.model if concept is None else apply_concept(self.model, concept)
        latent_format = self.model.model.latent_format
        latent = torch.zeros(compat.latent_shape(latent_format, self.height, self.width, self.settings.frames))
        noise = comfy.sample.prepare_noise(latent, self.settings.seed)

        def callback(*_: Any) -> None:
            self.check_cancel()  # a preview stops as promptly as a training step

        os.makedirs(self.folder, exist_ok=True)
        images = []
        for i, positive in enumerate(self.positive):
            samples = comfy.sample.sample(model, noise, self.settings.steps, self.settings.cfg, self.settings.sampler,
                                          self.settings.scheduler, positive, self.negative, latent,
                                          callback=callback, disable_pbar=True, seed=self.settings.seed)
            decoded = self.vae.decode(samples)  # [1, H, W, 3], or a video VAE's [1, frames, H, W, 3]
            strip = torch.cat(list(decoded.reshape(-1, *decoded.shape[-3:])), dim=1)  # its frames side by side
            image = Image.fromarray((strip.clamp(0, 1).cpu().float().numpy() * 255).round().astype(np.uint8))
            image.save(self.path(step, i))
            images.append(image)
        return images

    def grid(self) -> torch.Tensor:
        """IMAGE [1, rows * H, cols * W, 3]: one row per prompt, one column per step with every prompt saved."""
        from einops import rearrange
        from PIL import Image

        found: dict[int, set[int]] = {}
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
            match = _FILE.fullmatch(name)
            if match:
                found.setdefault(int(match[1]), set()).add(int(match[2]) - 1)
        steps = [s for s in sorted(found) if found[s] >= set(range(len(self.positive)))]
        # A clip's preview is its frames side by side: as many tiles wide as the first image holds frames.
        width, height = Image.open(self.path(steps[0], 0)).size if steps else (self.width, self.height)
        size = (self.width * max(1, round(width * self.height / (height * self.width))), self.height)
        tiles = [[np.asarray(Image.open(self.path(s, p)).convert("RGB").resize(size), dtype=np.float32) / 255.0
                  for s in steps] for p in range(len(self.positive))]
        return rearrange(torch.from_numpy(np.array(tiles)), "row col h w c -> 1 (row h) (col w) c")


def preview_folder(output_directory: str, name: str) -> str:
    return os.path.join(output_directory, "infusion", name, "samples")
