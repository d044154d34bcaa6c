"""Encoding once, before the loop: photos to latents with the VAE, every caption with CLIP.
After this neither the VAE nor CLIP is needed (ComfyUI may unload them for the training run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..tokens import CONDITIONING_KEY
from ..word_positions import word_positions
from .captions import PhotoCaptions
from .data import fit_masks, fit_photos, flip, loss_weights, photo_hash
from .loop import PhotoLatents

LATENT_MULTIPLE = 64  # 8x VAE downscale, then the UNet halves the latent three times


def _matching(weights: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Loss weights [N, 1, h, w] shaped to broadcast over latents [N, C, h, w] or, from a video VAE (Qwen-Image's),
    [N, C, frames, h, w]."""
    return weights.reshape(weights.shape[:2] + (1,) * (latents.ndim - 4) + weights.shape[2:])


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
        weights = _matching(loss_weights(fit_masks(masks, photos, resolution), tuple(latents.shape[-2:])), latents)
    if not mirrored:
        return PhotoLatents(latents, weights=weights)
    # Mirrored pixels, not mirrored latents: the VAE is not exactly mirror-symmetric.
    return PhotoLatents(latents, encode(flip(pixels)), weights, None if weights is None else weights.flip(-1))


def prepare_latents(model: Any, latents: torch.Tensor, masks: torch.Tensor | None, mirrored: bool) -> PhotoLatents:
    """Latents given as they are (a LATENT's samples, as VAE Encode gives them, as ComfyUI's own trainer
    takes them): brought into the model's space; a mirrored photo is the mirrored latent."""
    if latents.ndim not in (4, 5):
        raise ValueError(f"latents must be a LATENT batch [N, C, h, w] (or [N, C, frames, h, w] from a video VAE), "
                         f"got shape {tuple(latents.shape)}")
    x0 = model.model.process_latent_in(latents.float()).cpu()
    weights = None
    if masks is not None:
        masks = masks[None] if masks.ndim == 2 else masks
        if masks.shape[0] != x0.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks for {x0.shape[0]} latents: give one mask per latent")
        weights = _matching(loss_weights(masks, tuple(x0.shape[-2:])), x0)
    if not mirrored:
        return PhotoLatents(x0, weights=weights)
    return PhotoLatents(x0, x0.flip(-1), weights, None if weights is None else weights.flip(-1))


@dataclass
class ConceptData:
    """What a concept is learnt from: photos (IMAGE) with the VAE that encodes them, or latents (a
    LATENT's samples, as ComfyUI's own trainer takes them); optional masks, one per image."""

    photos: torch.Tensor | None = None
    vae: Any = None
    latents: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    captions: PhotoCaptions | None = None

    def __post_init__(self) -> None:
        if (self.photos is None) == (self.latents is None):
            raise ValueError("give the concept either as photos (with the VAE that encodes them) or as latents, "
                             "not both and not neither")
        if self.photos is not None and self.vae is None:
            raise ValueError("photos need the model's VAE to encode them: connect vae (or give latents instead)")
        if self.captions is not None and len(self.captions.entries) != self.count:
            raise ValueError(f"{len(self.captions.entries)} captions for {self.count} photos: connect the captions "
                             "of the same Load Concept Photos as the photos")

    @property
    def count(self) -> int:
        return int((self.photos if self.photos is not None else self.latents).shape[0])

    def fingerprint(self) -> str:
        return photo_hash(self.photos if self.photos is not None else self.latents, self.masks,
                          None if self.captions is None else [e and e[1] for e in self.captions.entries])

    def encode(self, model: Any, resolution: int, mirrored: bool) -> PhotoLatents:
        if self.latents is not None:
            return prepare_latents(model, self.latents, self.masks, mirrored)
        return encode_photos(self.vae, model, self.photos, self.masks, resolution, mirrored)


def photo_caption_indices(captions: PhotoCaptions, word: str,
                          first: int) -> tuple[list[str], list[str], torch.Tensor]:
    """The distinct photo captions (filled with the word), the file each first came from, and each photo's
    index among all conditionings, the photos' own numbered from `first` (-1 for a photo without one)."""
    filled = captions.filled(word)
    texts = list(dict.fromkeys(t for t in filled if t is not None))
    sources = [f"the caption {captions.source(filled.index(t))}" for t in texts]
    return texts, sources, torch.tensor([-1 if t is None else first + texts.index(t) for t in filled])


def encode_captions(clip: Any, word: str, captions: Sequence[str], origins: Sequence[str] = (),
                    extras: Mapping[str, Any] | None = None) -> list[list]:
    """One CONDITIONING per caption, each marked with where the class word stands (and carrying
    `extras`, e.g. Flux-dev's guidance). `origins` says where each caption came from ("the caption
    dog1.txt"; default "the caption template"), for the message when one lacks the word."""
    out = []
    for i, text in enumerate(captions):
        tokens = clip.tokenize(text)
        positions = word_positions(clip.tokenizer, tokens, [word])
        if word not in positions.words:
            origin = origins[i] if i < len(origins) and origins[i] else "the caption template"
            raise ValueError(f"{origin} '{text}' does not contain the class word '{word}' as a whole word (CLIP "
                             "reads 'dogs' or 'hotdog' as other words): add the word, or {} for it")
        conditioning = clip.encode_from_tokens_scheduled(tokens, show_pbar=False)
        for _, entry in conditioning:
            entry.update(extras or {})
            entry[CONDITIONING_KEY] = positions
        out.append(conditioning)
    return out
