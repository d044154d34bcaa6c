"""Encoding once, before the loop: photos to latents with the VAE, every caption with CLIP.
After this neither the VAE nor CLIP is needed (ComfyUI may unload them for the training run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..tokens import CONDITIONING_KEY
from ..word_positions import word_positions
from .buckets import BUCKETS, CROPS, STEP, Placement, place
from .captions import PhotoCaptions, text_captions
from .data import fit_masks, fit_photos, flip, loss_weights, photo_hash, photo_list
from .loop import PhotoBuckets, PhotoLatents

def _matching(weights: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Loss weights [N, 1, h, w] shaped to broadcast over latents [N, C, h, w] or, from a video VAE (Qwen-Image's),
    [N, C, frames, h, w]."""
    return weights.reshape(weights.shape[:2] + (1,) * (latents.ndim - 4) + weights.shape[2:])


def check_resolution(resolution: int) -> None:
    if resolution < STEP or resolution % STEP:
        raise ValueError(f"resolution must be a multiple of {STEP} (e.g. 512, 768, 1024), not {resolution}")


def group_by_size(sizes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """The items of each distinct size, sizes in order of first appearance (a fixed order: the same photos
    give the same buckets, so the same seed the same concept)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)
    return list(groups.values())


def _bucket(latents: torch.Tensor, weights: torch.Tensor | None, mirrored: torch.Tensor | None) -> PhotoLatents:
    """One bucket's latents, with their loss weights shaped to them and mirrored alike when flips are on."""
    if weights is not None:
        weights = _matching(weights, latents)
    return PhotoLatents(latents, mirrored, weights, None if weights is None or mirrored is None else weights.flip(-1))


def encode_photos(vae: Any, model: Any, photos: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None,
                  sizes: Sequence[tuple[int, int]], mirrored: bool) -> PhotoBuckets:
    """Fit each photo [H, W, 3] to its training size (`sizes`, from buckets.place), encode each bucket's photos
    (and their mirror images when flips are on) with the VAE, each a one-frame clip for a video VAE, and bring the
    latents into the model's space (ComfyUI's process_latent_in)."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        if getattr(vae, "latent_dim", 2) == 3:  # a video VAE (Wan's, Qwen-Image's) reads a batch as one clip's frames
            encoded = torch.cat([vae.encode(image[None]) for image in images])  # each photo a one-frame clip
        else:
            encoded = vae.encode(images)
        return model.model.process_latent_in(encoded.float()).cpu()

    groups, buckets = group_by_size(sizes), []
    for members in groups:
        size = tuple(sizes[members[0]])
        pixels = torch.cat([fit_photos(photos[i][None], size) for i in members])
        latents = encode(pixels)
        weights = None
        if masks is not None:
            fitted = torch.cat([fit_masks(masks[i][None], photos[i][None], size) for i in members])
            weights = loss_weights(fitted, tuple(latents.shape[-2:]), [i + 1 for i in members])
        # Mirrored pixels, not mirrored latents: the VAE is not exactly mirror-symmetric.
        buckets.append(_bucket(latents, weights, encode(flip(pixels)) if mirrored else None))
    return PhotoBuckets(buckets, groups)


def prepare_latents(model: Any, latents: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None,
                    mirrored: bool) -> PhotoBuckets:
    """Latents given as they are (a LATENT's samples, as VAE Encode gives them, as ComfyUI's own trainer
    takes them; one [C, h, w] or [C, frames, h, w] per item), each size a bucket: brought into the model's
    space; a mirrored photo is the mirrored latent."""
    if masks is not None and len(masks) != len(latents):
        raise ValueError(f"{len(masks)} masks for {len(latents)} latents: give one mask per latent")
    channels = model.model.latent_format.latent_channels
    for i, t in enumerate(latents):
        if t.shape[0] != channels:
            raise ValueError(f"latent {i + 1} has {t.shape[0]} channels, but this model's latents have {channels}: "
                             "encode the photos with this model's VAE")
    groups, buckets = group_by_size([tuple(t.shape) for t in latents]), []
    for members in groups:
        x0 = model.model.process_latent_in(torch.stack([latents[i] for i in members]).float()).cpu()
        weights = None
        if masks is not None:
            weights = loss_weights(torch.stack([masks[i] for i in members]), tuple(x0.shape[-2:]),
                                   [i + 1 for i in members])
        buckets.append(_bucket(x0, weights, x0.flip(-1) if mirrored else None))
    return PhotoBuckets(buckets, groups)


def _samples(item: Any) -> Any:
    """A LATENT's samples, or the samples given as they are."""
    return item["samples"] if isinstance(item, dict) else item


def latent_list(latents: Any) -> list[torch.Tensor]:
    """One tensor per item from a LATENT ({"samples": [N, C, h, w]}), its samples, or a list of LATENTs as
    ComfyUI's dataset nodes give them (Make Training Dataset, Resolution Bucket)."""
    items = [latents] if isinstance(latents, (dict, torch.Tensor)) else list(latents)
    out = []
    for item in items:
        samples = _samples(item)
        if not isinstance(samples, torch.Tensor) or samples.ndim not in (4, 5):
            shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise ValueError(f"latents must be LATENT batches [N, C, h, w] (or [N, C, frames, h, w] from a video "
                             f"VAE), or lists of them, got {shape}")
        out.extend(samples.unbind(0))
    return out


def _grouped(latents: Any) -> bool:
    """Whether LATENTs came as a list of groups of several items (Resolution Bucket's output)."""
    return (isinstance(latents, (list, tuple)) and len(latents) > 1
            and any(_samples(item).shape[0] > 1 for item in latents))


@dataclass
class ConceptData:
    """What a concept is learnt from: photos (IMAGE batches or lists of them, any sizes) with the VAE that
    encodes them, or latents (LATENTs or lists of them, as ComfyUI's own trainer takes them); optional masks,
    one per image; how photos are fitted to the training size (`crop`: buckets or centre crop)."""

    photos: Any = None
    vae: Any = None
    latents: Any = None
    masks: Any = None
    captions: PhotoCaptions | None = None
    crop: str = BUCKETS
    texts: list[str] | None = None  # captions as texts, one per photo (ComfyUI's dataset nodes)

    def __post_init__(self) -> None:
        if (self.photos is None) == (self.latents is None):
            raise ValueError("give the concept either as photos (with the VAE that encodes them) or as latents, "
                             "not both and not neither")
        if self.photos is not None and self.vae is None:
            raise ValueError("photos need the model's VAE to encode them: connect vae (or give latents instead)")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, not '{self.crop}'")
        if self.texts is not None and _grouped(self.latents):
            raise ValueError("the latents come grouped by size, as Resolution Bucket gives them, in another order "
                             "than the texts: connect Make Training Dataset's latents instead (Train Infusion "
                             "Concept buckets them itself), or leave texts unconnected")
        self.photos = None if self.photos is None else photo_list(self.photos)
        self.latents = None if self.latents is None else latent_list(self.latents)
        self.masks = None if self.masks is None else photo_list(self.masks, "masks")
        if self.masks is not None and len(self.masks) != self.count:
            raise ValueError(f"{len(self.masks)} masks for {self.count} photos: give one mask per photo "
                             "(1 = the concept)")
        if self.photos is not None and self.masks is not None:
            for i, (photo, mask) in enumerate(zip(self.photos, self.masks)):
                if tuple(mask.shape) != tuple(photo.shape[:2]):
                    raise ValueError(f"mask {i + 1} is {mask.shape[1]}x{mask.shape[0]} but its photo is "
                                     f"{photo.shape[1]}x{photo.shape[0]}: give masks of the same size as their photos")
        if self.texts is not None:
            if self.captions is not None:
                raise ValueError("connect captions (from Load Concept Photos) or texts, not both")
            self.captions = text_captions(self.texts, self.count)
        if self.captions is not None and len(self.captions.entries) != self.count:
            raise ValueError(f"{len(self.captions.entries)} captions for {self.count} photos: give one caption "
                             "per photo, in the photos' order")

    @property
    def count(self) -> int:
        return len(self.photos if self.photos is not None else self.latents)

    def placements(self, resolution: int | None) -> list[Placement]:
        """Where each photo trains (its training size in pixels); latents train at their own size (in latent
        pixels)."""
        if self.latents is not None:
            return [Placement(tuple(t.shape[-2:])) for t in self.latents]
        check_resolution(resolution)
        return [place(p.shape[0], p.shape[1], resolution, self.crop) for p in self.photos]

    def fingerprint(self) -> str:
        return photo_hash(self.photos if self.photos is not None else self.latents, self.masks,
                          None if self.captions is None else [e and e[1] for e in self.captions.entries])

    def encode(self, model: Any, placements: Sequence[Placement], mirrored: bool) -> PhotoBuckets:
        if self.latents is not None:
            return prepare_latents(model, self.latents, self.masks, mirrored)
        return encode_photos(self.vae, model, self.photos, self.masks, [p.size for p in placements], mirrored)


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
        positions = word_positions(clip.tokenizer, tokens, [word], clip.cond_stage_model)
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
