"""Per-photo captions: `dog1.txt` beside `dog1.png` (the convention of kohya's scripts).

Why they matter for Infusion: the residual is added only at the class word, while every other word
keeps the base model's meaning. A caption that names what else is in the photo ("a dog on a red sofa")
lets the base model explain the sofa, so less of the sofa leaks into the concept. A caption must hold
the class word (or {} for it); photos without a caption file are captioned with the templates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .templates import PLACEHOLDER


@dataclass(frozen=True)
class PhotoCaptions:
    """One entry per photo, in photo order: (the caption file's name, its text), or None for no caption."""

    entries: tuple[tuple[str, str] | None, ...]

    def __post_init__(self) -> None:
        if all(e is None for e in self.entries):
            raise ValueError("no photo has a caption: leave captions unconnected to use the templates")

    def filled(self, word: str) -> list[str | None]:
        """Each caption with {} replaced by the class word (None where a photo has no caption)."""
        return [None if e is None else e[1].replace(PLACEHOLDER, word) for e in self.entries]

    def source(self, i: int) -> str:
        entry = self.entries[i]
        return "" if entry is None else entry[0]


def text_captions(texts: list[str], count: int) -> PhotoCaptions | None:
    """Captions given as texts (ComfyUI's Load Image-Text (from Folder) gives one per image, "" where an image
    has no caption file): one per photo, or one for every photo. None when all are empty."""
    if len(texts) == 1:
        texts = texts * count
    if len(texts) != count:
        raise ValueError(f"{len(texts)} texts for {count} photos: give one text per photo, in the photos' order "
                         "(or one text for all)")
    entries = [(f"text {i + 1}", " ".join(t.split())) if t and t.strip() else None for i, t in enumerate(texts)]
    return None if all(e is None for e in entries) else PhotoCaptions(tuple(entries))


def caption_path(photo_path: str) -> str:
    return os.path.splitext(photo_path)[0] + ".txt"


def read_captions(photo_paths: list[str]) -> PhotoCaptions | None:
    """The caption beside each photo (whitespace and line breaks folded to single spaces); None when no photo
    has one."""
    entries: list[tuple[str, str] | None] = []
    for photo in photo_paths:
        path = caption_path(photo)
        if not os.path.isfile(path):
            entries.append(None)
            continue
        try:
            with open(path, encoding="utf-8-sig") as f:
                text = " ".join(f.read().split())
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the caption {os.path.basename(path)}: {e}; save it as UTF-8 text") from None
        if not text:
            raise ValueError(f"the caption {os.path.basename(path)} is empty: write a caption with the class word "
                             "(or {} for it), or delete the file to use the templates for its photo")
        entries.append((os.path.basename(path), text))
    return None if all(e is None for e in entries) else PhotoCaptions(tuple(entries))
