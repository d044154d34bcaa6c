"""The concept photos as training data: each at its training size (buckets.py), optional flips and soft
foreground masks, and a fingerprint of exactly what was trained on.

Images are ComfyUI IMAGE layout: [N, H, W, C] floats in 0..1; masks [N, H, W], 1 = concept.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from .buckets import cover_size, crop_start


def photo_list(images: torch.Tensor | Sequence[torch.Tensor], what: str = "photos") -> list[torch.Tensor]:
    """One tensor per photo ([H, W, C] for IMAGE, [H, W] for MASK) from a batch, or from a list of batches
    and single items as ComfyUI's list outputs give them (photos of different sizes)."""
    items = [images] if isinstance(images, torch.Tensor) else list(images)
    image = what == "photos"
    out = []
    for item in items:
        if not isinstance(item, torch.Tensor) or item.ndim not in ((3, 4) if image else (2, 3)):
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"{what} must be {'IMAGE [N, H, W, 3]' if image else 'MASK [N, H, W]'} batches or "
                             f"lists of them, got {shape}")
        out.extend(item.unbind(0) if item.ndim == (4 if image else 3) else [item])
    if image:
        bad = [i + 1 for i, p in enumerate(out) if p.shape[-1] < 3]
        if bad:
            raise ValueError(f"photo {bad[0]} has {out[bad[0] - 1].shape[-1]} channels: give RGB photos")
    return out


def _fit(planes: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, *size]: scale to cover `size` keeping the aspect, then crop the centre (the least
    crop that gives that size)."""
    h, w = planes.shape[-2:]
    cover = cover_size(h, w, size)
    if (h, w) != cover:
        planes = F.interpolate(planes, size=cover, mode=mode, antialias=True, align_corners=False)
    top, left = crop_start(h, w, size)
    return planes[..., top:top + size[0], left:left + size[1]]


def fit_photos(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Photos [N, H, W, C] at a training size [N, *size, 3] (bicubic, as the authors; cover-and-crop keeps the
    concept's proportions where their code would stretch a photo of another aspect)."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"photos must be an IMAGE batch [N, H, W, 3], got shape {tuple(images.shape)}")
    rgb = images[..., :3].float().movedim(-1, 1)
    return _fit(rgb, size, "bicubic").clamp(0.0, 1.0).movedim(1, -1).contiguous()


def fit_masks(masks: torch.Tensor, photos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The masks cropped exactly like their photos: [N, *size]."""
    if masks.ndim == 2:
        masks = masks[None]
    n, h, w = photos.shape[0], photos.shape[1], photos.shape[2]
    if masks.shape[0] != n:
        raise ValueError(f"{masks.shape[0]} masks for {n} photos: give one mask per photo (1 = the concept)")
    if tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"the masks are {masks.shape[-1]}x{masks.shape[-2]} but the photos are {w}x{h}: "
                         "give masks of the same size as their photos")
    return _fit(masks.float()[:, None], size, "bilinear").clamp(0.0, 1.0)[:, 0].contiguous()


def loss_weights(masks: torch.Tensor, latent_size: tuple[int, int], numbers: Sequence[int] | None = None) -> torch.Tensor:
    """Per-latent-pixel loss weights [N, 1, h, w]: each mask averaged onto the latent grid and
    scaled to a maximum of 1 (as the authors normalise their masks). `numbers`: the photos' numbers (from 1),
    for the message."""
    weights = F.interpolate(masks.float()[:, None], size=latent_size, mode="area")
    peak = weights.amax(dim=(1, 2, 3), keepdim=True)
    empty = [i for i, p in enumerate(peak.flatten().tolist()) if p <= 0]
    if empty:
        number = numbers[empty[0]] if numbers is not None else empty[0] + 1
        raise ValueError(f"the mask of photo {number} is empty (all zero): a mask marks the concept with 1; "
                         "ComfyUI's Load Image gives an all-zero mask for photos without transparency")
    return weights / peak


def flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror IMAGE [N, H, W, C] or MASK [N, H, W] batches left to right."""
    return images.flip(-2 if images.ndim == 4 else -1)


def photo_hash(photos: torch.Tensor | Sequence[torch.Tensor], masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
               captions: list[str | None] | None = None) -> str:
    """SHA-256 of the photos (and masks, and captions) as given: the same pixels give the same hash."""
    h = hashlib.sha256()
    if captions is not None:
        h.update(repr(captions).encode())
    for group in (photos, masks):
        if group is None:
            h.update(b"none")
            continue
        for t in [group] if isinstance(group, torch.Tensor) else group:
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()
