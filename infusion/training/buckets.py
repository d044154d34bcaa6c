"""Aspect-ratio buckets: each photo trains at about the training resolution's area in the aspect nearest
its own, instead of a centre-cropped square that can cut the concept off (a standing dog's head, a
teapot at one side of the table).

A bucket is a size (height, width) in multiples of 64 pixels (8 latent pixels: every family's latent
and patch sizes divide it) whose area is within AREA_TOLERANCE of resolution squared, from 1:4 to 4:1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

STEP = 64  # 8x VAE downscale, then the UNet halves the latent three times (and a DiT patch divides it)
MAX_ASPECT = 4.0
AREA_TOLERANCE = 0.1
CENTRE_CROP, BUCKETS = "centre crop", "buckets"
CROPS = (BUCKETS, CENTRE_CROP)


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """Every (height, width) of the resolution's buckets, by aspect (tallest first)."""
    area, sizes = resolution * resolution, []
    longest = int(math.sqrt(area * MAX_ASPECT * (1 + AREA_TOLERANCE))) // STEP * STEP
    for h in range(STEP, longest + STEP, STEP):
        for w in range(STEP, longest + STEP, STEP):
            if abs(h * w / area - 1) <= AREA_TOLERANCE and 1 / MAX_ASPECT <= w / h <= MAX_ASPECT:
                sizes.append((h, w))
    return sorted(sizes, key=lambda s: (s[1] / s[0], abs(s[0] * s[1] - area)))


@dataclass(frozen=True)
class Placement:
    """Where one photo trains: its training size, the photo's own size and where the crop starts in the photo
    scaled to cover the training size (SDXL conditions on all three), and why the user may want to know
    (empty: nothing to say). Latents have a size only (in latent pixels)."""

    size: tuple[int, int]
    note: str = ""
    original: tuple[int, int] | None = None
    crop: tuple[int, int] = (0, 0)  # (top, left)


def _aspect_distance(size: tuple[int, int], height: int, width: int) -> float:
    return abs(math.log((size[1] / size[0]) / (width / height)))


def place(height: int, width: int, resolution: int, crop: str = BUCKETS) -> Placement:
    """The size a photo of `height` x `width` trains at: the bucket nearest its aspect (ties: the area
    nearest the resolution's), or the resolution's square with `crop` centre crop."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, not '{crop}'")
    if crop == CENTRE_CROP:
        size = (resolution, resolution)
    else:
        area = resolution * resolution
        size = min(bucket_sizes(resolution),
                   key=lambda s: (_aspect_distance(s, height, width), abs(s[0] * s[1] - area)))
    notes = []
    aspect = max(width / height, height / width)
    if crop == BUCKETS and aspect > MAX_ASPECT:
        notes.append(f"its aspect {aspect:.1f}:1 is beyond {MAX_ASPECT:.0f}:1, so it is cropped to the "
                     f"nearest bucket")
    if height < size[0] or width < size[1]:
        notes.append("it is smaller than its training size and is upscaled")
    return Placement(size, "; ".join(notes), (height, width), crop_start(height, width, size))


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """The size that scales a photo to cover `size` (keeping its aspect), before the centred crop."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


def crop_start(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the centred crop of `size` from the photo scaled to cover it."""
    cover = cover_size(height, width, size)
    return (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
