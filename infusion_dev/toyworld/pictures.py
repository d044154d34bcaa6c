"""Pictures of the toy world's samples: one row per model, one column per background."""
from __future__ import annotations

from typing import Callable

import torch

from . import scenes
from .customize import context_prompt


def grid_png(rows: list[tuple[str, dict[str, torch.Tensor]]], path: str, per_cell: int = 3,
             heading: Callable[[str], str] = context_prompt) -> None:
    """One row per method, one column per background (headed `heading(background)`), `per_cell` samples in each
    cell, labels on the left; samples 48 px high, as wide as their latents' shape says."""
    from PIL import Image, ImageDraw

    tile, gap, label_width, header = 48, 4, 230, 22
    height, width = rows[0][1][scenes.BACKGROUNDS[0]].shape[-2:]
    tile_width = tile * width // height
    cell_width = per_cell * tile_width + gap
    canvas = Image.new("RGB", (label_width + len(scenes.BACKGROUNDS) * cell_width, header + len(rows) * (tile + gap)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for j, bg in enumerate(scenes.BACKGROUNDS):
        draw.text((label_width + j * cell_width + 4, 5), heading(bg), fill="black")
    for i, (label, latents) in enumerate(rows):
        y = header + i * (tile + gap)
        draw.text((6, y + tile // 2 - 6), label, fill="black")
        for j, bg in enumerate(scenes.BACKGROUNDS):
            images = scenes.to_rgb(latents[bg][:per_cell], upscale=tile // height)
            for k, image in enumerate(images):
                canvas.paste(Image.fromarray((image.numpy() * 255).round().astype("uint8")),
                             (label_width + j * cell_width + k * tile_width, y))
    canvas.save(path)
