"""The concept photos as training data: square crops at the training resolution, optional
flips and soft foreground masks, and a fingerprint of exactly what was trained on.

Images are ComfyUI IMAGE layout: [N, H, W, C] floats in 0..1; masks [N, H, W], 1 = concept.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


def square_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """The size that scales the shorter side to `resolution`, keeping the aspect ratio."""
    if height <= width:
        return resolution, max(resolution, round(width * resolution / height))
    return max(resolution, round(height * resolution / width)), resolution


def _fit(planes: torch.Tensor, resolution: int, mode: str) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, res, res]: scale the shorter side to `res`, then crop the centre."""
    h, w = planes.shape[-2:]
    size = square_size(h, w, resolution)
    if (h, w) != size:
        planes = F.interpolate(planes, size=size, mode=mode, antialias=True, align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return planes[..., top:top + resolution, left:left + resolution]


def fit_photos(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Square photos at the training resolution (bicubic, as the authors; centre crop keeps the
    concept's proportions where their code would stretch a non-square photo)."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"photos must be an IMAGE batch [N, H, W, 3], got shape {tuple(images.shape)}")
    rgb = images[..., :3].float().movedim(-1, 1)
    return _fit(rgb, resolution, "bicubic").clamp(0.0, 1.0).movedim(1, -1).contiguous()


def fit_masks(masks: torch.Tensor, photos: torch.Tensor, resolution: int) -> torch.Tensor:
    """The masks cropped exactly like their photos: [N, res, res]."""
    if masks.ndim == 2:
        masks = masks[None]
    n, h, w = photos.shape[0], photos.shape[1], photos.shape[2]
    if masks.shape[0] != n:
        raise ValueError(f"{masks.shape[0]} masks for {n} photos: give one mask per photo (1 = the concept)")
    if tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"the masks are {masks.shape[-1]}x{masks.shape[-2]} but the photos are {w}x{h}: "
                         "give masks of the same size as their photos")
    return _fit(masks.float()[:, None], resolution, "bilinear").clamp(0.0, 1.0)[:, 0].contiguous()


def loss_weights(masks: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Per-latent-pixel loss weights [N, 1, h, w]: each mask averaged onto the latent grid and
    scaled to a maximum of 1 (as the authors normalise their masks)."""
    weights = F.interpolate(masks.float()[:, None], size=latent_size, mode="area")
    peak = weights.amax(dim=(1, 2, 3), keepdim=True)
    empty = [i for i, p in enumerate(peak.flatten().tolist()) if p <= 0]
    if empty:
        raise ValueError(f"the mask of photo {empty[0] + 1} is empty (all zero): a mask marks the concept with 1; "
                         "ComfyUI's Load Image gives an all-zero mask for photos without transparency")
    return weights / peak


def flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror IMAGE [N, H, W, C] or MASK [N, H, W] batches left to right."""
    return images.flip(-2 if images.ndim == 4 else -1)


def photo_hash(photos: torch.Tensor, masks: torch.Tensor | None = None,
               captions: list[str | None] | None = None) -> str:
    """SHA-256 of the photos (and masks, and captions) as given: the same pixels give the same hash."""
    h = hashlib.sha256()
    if captions is not None:
        h.update(repr(captions).encode())
    for t in (photos, masks):
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
