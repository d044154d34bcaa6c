"""Class-word positions for prompts tokenized by a ComfyUI CLIP (duck-typed: no ComfyUI import)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

from .tokens import WordPositions, find_word, flat_ids


def _sd_tokenizer(tokenizer: Any, key: str) -> Any:
    """ComfyUI stores each text encoder's tokenizer as attribute `clip_<key>` (SD1: l, SD2: h, SDXL: g, l)."""
    sdt = getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, key, None)
    if sdt is None or not hasattr(sdt, "tokenizer"):
        raise ValueError(f"this CLIP's tokenizer has no CLIP BPE tokenizer for '{key}'; "
                         "Infusion supports SD1.x, SD2.x and SDXL text encoders")
    return sdt


def _key(tokens: Mapping[str, Any]) -> str:
    # SDXL's l and g tokenizers put words at the same positions; either one will do.
    return "l" if "l" in tokens else next(iter(tokens))


@lru_cache(maxsize=8)
def _word_ends(sdt: Any) -> frozenset[int]:
    """Ids of tokens that end a word ("</w>") or are special: a match may start right after them."""
    ends = {i for s, i in sdt.tokenizer.get_vocab().items() if s.endswith("</w>")}
    ends.update(t for t in (sdt.start_token, sdt.end_token, getattr(sdt, "pad_token", None)) if isinstance(t, int))
    ends.update(sdt.tokenizer.all_special_ids)
    return frozenset(ends)


@lru_cache(maxsize=256)
def _ids_of(sdt: Any, word: str) -> tuple[int, ...]:
    ids = sdt.tokenizer(word)["input_ids"]
    return tuple(i for i in ids if i not in sdt.tokenizer.all_special_ids)


def word_token_ids(tokenizer: Any, word: str, key: str = "l") -> tuple[int, ...]:
    """The BPE ids of the class word, as the prompt tokenizer will produce them."""
    ids = _ids_of(_sd_tokenizer(tokenizer, key), word)
    if not ids:
        raise ValueError(f"the class word '{word}' gives no tokens")
    return ids


def word_positions(tokenizer: Any, tokens: Mapping[str, list], words: Iterable[str]) -> WordPositions:
    """Where each of `words` stands in ComfyUI tokens ({key: [77-token chunks]})."""
    key = _key(tokens)
    sdt = _sd_tokenizer(tokenizer, key)
    ids = flat_ids(tokens[key])
    ends = _word_ends(sdt)
    found = {w: tuple(find_word(ids, _ids_of(sdt, w), ends.__contains__)) for w in words}
    return WordPositions(length=len(ids), words={w: p for w, p in found.items() if p})
