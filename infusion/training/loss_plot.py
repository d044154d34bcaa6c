"""The loss curve as a picture: the node's live preview and its loss-graph output.

Per-step diffusion losses are noisy (each step draws its own timesteps), so the raw curve is
drawn faint with its running mean on top. PIL (a ComfyUI dependency) is imported when drawing.
"""
from __future__ import annotations

from typing import Any, Sequence

WIDTH, HEIGHT, MARGIN = 512, 320, 44


def running_mean(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve(losses: Sequence[float], total_steps: int | None = None) -> Any:
    """A PIL image of the loss per step (x: step 1..total, y: loss from its min to its max)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN, 12, WIDTH - 12, HEIGHT - 28
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    steps = max(total_steps or 0, len(losses), 1)
    draw.text((left, bottom + 8), "step 1", fill="black")
    draw.text((right - 60, bottom + 8), f"step {steps}", fill="black")
    if not losses:
        draw.text((left + 10, top + 10), "no steps yet", fill="black")
        return img
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    draw.text((4, top), f"{high:.3g}", fill="black")
    draw.text((4, bottom - 10), f"{low:.3g}", fill="black")
    draw.text((left + 10, top + 6), f"loss {losses[-1]:.4g} at step {len(losses)}", fill="black")

    def points(values: Sequence[float]) -> list[tuple[float, float]]:
        x = lambda i: left + (right - left) * (i / (steps - 1) if steps > 1 else 0.5)  # noqa: E731
        return [(x(i), bottom - (bottom - top) * (v - low) / span) for i, v in enumerate(values)]

    if len(losses) == 1:
        (px, py), = points(losses)
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(40, 80, 200))
        return img
    draw.line(points(losses), fill=(170, 190, 235), width=1)
    draw.line(points(running_mean(losses, max(1, len(losses) // 10))), fill=(30, 60, 180), width=2)
    return img


def message_image(text: str) -> Any:
    """A small PIL image that says `text` (an IMAGE output with nothing else to show)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, 64), "white")
    ImageDraw.Draw(img).text((12, 26), text, fill="black")
    return img
