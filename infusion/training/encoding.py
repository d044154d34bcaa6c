"""Encoding once, before the loop: photos to latents with the VAE, every caption with CLIP.
After this neither the VAE nor CLIP is needed (ComfyUI may unload them for the training run).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..prompt import word_positions
from ..tokens import CONDITIONING_KEY
from .data import fit_masks, fit_photos, flip, loss_weights
from .loop import PhotoLatents

LATENT_MULTIPLE = 64  # 8x VAE downscale, then the UNet halves the latent three times


def check_resolution(resolution: int) -> None:
    if resolution < LATENT_MULTIPLE or resolution % LATENT_MULTIPLE:
        raise ValueError(f"resolution must be a multiple of {LATENT_MULTIPLE} (e.g. 512, 768, 1024), not {resolution}")


def encode_photos(vae: Any, model: Any, photos: torch.Tensor, masks: torch.Tensor | None,
                  resolution: int, mirrored: bool) -> PhotoLatents:
    """Crop and scale the photos, encode them (and their mirror images when flips are on) with
    the VAE, and bring the latents into the model's space (ComfyUI's process_latent_in)."""
    check_resolution(resolution)
    pixels = fit_photos(photos, resolution)

    def encode(images: torch.Tensor) -> torch.Tensor:
        return model.model.process_latent_in(vae.encode(images).float()).cpu()

    latents = encode(pixels)
    weights = None
    if masks is not None:
        weights = loss_weights(fit_masks(masks, photos, resolution), tuple(latents.shape[-2:]))
    if not mirrored:
        return PhotoLatents(latents, weights=weights)
    # Mirrored pixels, not mirrored latents: the VAE is not exactly mirror-symmetric.
    return PhotoLatents(latents, encode(flip(pixels)), weights, None if weights is None else weights.flip(-1))


def encode_captions(clip: Any, word: str, captions: Sequence[str]) -> list[list]:
    """One CONDITIONING per caption, each marked with where the class word stands."""
    out = []
    for text in captions:
        tokens = clip.tokenize(text)
        positions = word_positions(clip.tokenizer, tokens, [word])
        if word not in positions.words:
            raise ValueError(f"the caption '{text}' does not contain the class word '{word}' as a whole word "
                             "(CLIP reads 'dogs' or 'hotdog' as other words): fix the caption template")
        conditioning = clip.encode_from_tokens_scheduled(tokens, show_pbar=False)
        for _, extras in conditioning:
            extras[CONDITIONING_KEY] = positions
        out.append(conditioning)
    return out
