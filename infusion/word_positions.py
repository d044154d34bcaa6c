"""Class-word positions for prompts tokenized by a ComfyUI CLIP (duck-typed: no ComfyUI import).

Which tokenizer's tokens become the model's context, and which of their rows it keeps, depends on the
text encoder; ComfyUI's tokens say which (their keys):
- CLIP (SD1.x "l", SD2.x "h", SDXL "g" and "l" at the same positions): every row, in 77-token chunks;
- T5-XXL ("t5xxl": Flux, with "l" for its pooled vector; Chroma; LTX-Video), Pile-T5 ("pile_t5xl": AuraFlow)
  and umT5 ("umt5xxl": Wan; these two read through ComfyUI's own SentencePiece wrapper): every row;
- Qwen2.5-VL ("qwen25_7b": Qwen-Image, the Hunyuan models, Kandinsky 5) and Qwen3-VL ("qwen3vl_4b": Krea 2,
  MageFlow): the rows from the user turn's text on (ComfyUI's text encoders drop the system prompt and
  "<|im_start|>user\\n" of the template);
- Qwen3 ("qwen3_4b", "qwen3_8b": Z-Image, FLUX.2 klein) and Qwen3-VL-8B ("qwen3vl_8b": Ideogram 4): every row,
  template included;
- SD3's three ("l", "g", "t5xxl"): CLIP-L's and CLIP-G's rows side by side (the same positions), then T5-XXL's,
  each part there only when its text encoder is loaded (SD3 runs without T5, or on T5 alone);
- HiDream's four ("l", "g", "t5xxl", "llama"): T5-XXL's 128 rows, then Llama 3.1's rows twice (its last layer's,
  and each block's own layer's); CLIP's give only the pooled vector.

The word is found on the tokens' own text: CLIP's BPE by its word-end marks (tokens.py), the others
(SentencePiece, byte-level BPE) by decoding each token to its characters and matching the word there as
a whole word, case-insensitive, so every token that holds a piece of it is marked ("dogs" and "hotdog"
are other words; "Dog," is the word).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Sequence

from .tokens import WordPositions, find_word, flat_ids

CLIP_KEYS = ("l", "h", "g")
TEMPLATE_DROPPED = ("qwen25_7b", "qwen3vl_4b")  # Qwen-Image, Krea 2
CONTEXT_KEYS = ("t5xxl", "pile_t5xl", "umt5xxl", *TEMPLATE_DROPPED, "qwen3_4b", "qwen3_8b", "qwen3vl_8b")
SD3_KEYS = frozenset(("l", "g", "t5xxl"))
HIDREAM_KEYS = SD3_KEYS | {"llama"}
_IM_START, _USER, _NEWLINE = 151644, 872, 198  # Qwen's <|im_start|>, "user", "\n"


def context_key(tokens: Mapping[str, Any]) -> str:
    """The tokenizer whose tokens become the model's context."""
    for key in CONTEXT_KEYS:
        if key in tokens:
            return key
    # SDXL's l and g tokenizers put words at the same positions; either one will do.
    clip = [k for k in CLIP_KEYS if k in tokens]
    if clip:
        return clip[0]
    raise ValueError(f"this CLIP's text encoder ({', '.join(tokens)}) is not one Infusion can mark the class word "
                     "for; supported: CLIP (SD1.x, SD2.x, SDXL), T5-XXL (Flux, Chroma, LTX-Video), Pile-T5 (AuraFlow), "
                     "Qwen2.5-VL (Qwen-Image, Kandinsky 5), Qwen3 (Z-Image, FLUX.2 klein), Qwen3-VL (Krea 2, "
                     "Ideogram 4)")


def context_parts(tokens: Mapping[str, Any], text_encoder: Any = None) -> tuple[str, ...]:
    """The tokenizers whose rows make the model's context, in their order there. SD3's encoder (its CLIP's
    cond_stage_model) says which of its parts are loaded; without it, all are taken to be."""
    if set(tokens) == HIDREAM_KEYS:
        return "t5xxl", "llama", "llama"
    if set(tokens) != SD3_KEYS:
        return (context_key(tokens),)
    loaded = lambda *names: text_encoder is None or any(getattr(text_encoder, n, None) is not None  # noqa: E731
                                                         for n in names)
    parts = tuple(key for key, names in (("g", ("clip_l", "clip_g")), ("t5xxl", ("t5xxl",))) if loaded(*names))
    return parts or ("g",)  # no encoder at all: 77 rows of zeros, where no word stands


def _sd_tokenizer(tokenizer: Any, key: str) -> Any:
    """ComfyUI stores each text encoder's tokenizer as attribute `clip_<key>` (SD1: l, SD2: h, SDXL: g, l;
    T5 and the LLM encoders: their key)."""
    sdt = getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, key, None)
    if sdt is None or not hasattr(sdt, "tokenizer"):
        raise ValueError(f"this CLIP's tokenizer has no tokenizer for '{key}'; Infusion marks words for CLIP, "
                         "T5-XXL and Qwen text encoders")
    return sdt


def _dropped_rows(key: str, ids: Sequence) -> int:
    """Rows at the start of the tokens that the text encoder leaves out of the context."""
    if key not in TEMPLATE_DROPPED:
        return 0
    # From the second <|im_start|> (the user turn), past "user\n" when they follow it.
    starts = [i for i, t in enumerate(ids) if t == _IM_START][:2]
    if not starts:
        return 0
    first = starts[-1]
    if len(ids) > first + 3 and ids[first + 1] == _USER and ids[first + 2] == _NEWLINE:
        return first + 3
    return first


# --------------------------------------------------------------------------- CLIP BPE

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


def _is_clip_bpe(sdt: Any) -> bool:
    return _kind(sdt) == "clip"


# --------------------------------------------------------------------------- tokens as text

def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table: printable latin-1 bytes stand for
    themselves, the rest are shifted past 255), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    stand_ins = dict(zip(printable, printable))
    shift = 0
    for b in range(256):
        if b not in stand_ins:
            stand_ins[b] = 256 + shift
            shift += 1
    return {chr(c): b for b, c in stand_ins.items()}


_BYTES = _byte_decoder()


@lru_cache(maxsize=8)
def _kind(sdt: Any) -> str:
    vocab = sdt.tokenizer.get_vocab()
    if "the</w>" in vocab:
        return "clip"
    if "\u2581the" in vocab:
        return "sentencepiece"
    if "\u0120the" in vocab:
        return "byte-level"
    raise ValueError(f"Infusion cannot read the tokens of this tokenizer ({type(sdt.tokenizer).__name__})")


def _processor(sdt: Any) -> Any:
    """The sentencepiece processor behind ComfyUI's own SentencePiece wrapper (Pile-T5's, umT5's), which has none of
    the transformers tokenizers' token tables; None for other tokenizers."""
    inner = getattr(sdt.tokenizer, "tokenizer", None)
    return inner if hasattr(inner, "id_to_piece") else None


@lru_cache(maxsize=8)
def _separators(sdt: Any) -> frozenset[int]:
    """Special and added tokens (<|im_start|>, </s>, padding): they stand between words."""
    tok, processor = sdt.tokenizer, _processor(sdt)
    if processor is not None:
        return frozenset(i for i in range(processor.get_piece_size()) if processor.is_control(i))
    if hasattr(tok, "all_special_ids"):
        return frozenset(tok.all_special_ids) | frozenset(getattr(tok, "added_tokens_decoder", {}) or {})
    # ComfyUI's own byte-level BPE (0.33's Llama 3 tokenizer) names no special ids: Llama 3's are written <|...|>.
    return frozenset(i for piece, i in tok.get_vocab().items() if re.fullmatch(r"<\|[^|]*\|>", piece))


@lru_cache(maxsize=8)
def _vocab_pieces(sdt: Any) -> dict[int, str]:
    return {i: piece for piece, i in sdt.tokenizer.get_vocab().items()}


def _pieces(sdt: Any, ids: Sequence[int]) -> list[str | None]:
    tok, processor = sdt.tokenizer, _processor(sdt)
    if processor is not None:
        return [processor.id_to_piece(i) if 0 <= i < processor.get_piece_size() else None for i in ids]
    if hasattr(tok, "convert_ids_to_tokens"):
        return tok.convert_ids_to_tokens(list(ids))
    pieces = _vocab_pieces(sdt)
    return [pieces.get(i) for i in ids]


def _piece_text(piece: str, kind: str) -> str:
    if kind == "sentencepiece":
        return " " if re.fullmatch(r"<0x[0-9A-F]{2}>", piece) else piece.replace("\u2581", " ")
    data = bytes(_BYTES[c] for c in piece if c in _BYTES)
    return data.decode("utf-8", errors="replace")


def _token_texts(sdt: Any, ids: Sequence) -> list[str]:
    kind, separators = _kind(sdt), _separators(sdt)
    pieces = _pieces(sdt, [i if isinstance(i, int) else 0 for i in ids])
    return [" " if not isinstance(i, int) or i in separators or piece is None else _piece_text(piece, kind)
            for i, piece in zip(ids, pieces)]


def find_word_in_text(texts: Sequence[str], word: str) -> list[int]:
    """Every token (by index) that holds a character of `word` where it stands as a whole word in the
    text the tokens spell (case-insensitive; the word's own spaces match any run of spaces)."""
    starts, text = [], ""
    for t in texts:
        starts.append(len(text))
        text += t
    pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, word.split())) + r"(?!\w)"
    found: list[int] = []
    for m in re.finditer(pattern, text, flags=re.IGNORECASE):
        found.extend(j for j, (s, t) in enumerate(zip(starts, texts)) if s < m.end() and s + len(t) > m.start()
                     and t.strip())
    return sorted(set(found))


# --------------------------------------------------------------------------- positions

def word_token_ids(tokenizer: Any, word: str, key: str = "l") -> tuple[int, ...]:
    """The ids of the class word's tokens, as the prompt tokenizer produces them after a space."""
    sdt = _sd_tokenizer(tokenizer, key)
    ids = _ids_of(sdt, word) if _is_clip_bpe(sdt) else tuple(
        i for i in sdt.tokenizer(" " + word)["input_ids"] if i not in _separators(sdt))
    if not ids:
        raise ValueError(f"the class word '{word}' gives no tokens")
    return ids


def _finder(sdt: Any, ids: Sequence) -> Callable[[str], list[int]]:
    if _is_clip_bpe(sdt):
        ends = _word_ends(sdt)
        return lambda word: find_word(ids, _ids_of(sdt, word), ends.__contains__)
    texts = _token_texts(sdt, ids)
    return lambda word: find_word_in_text(texts, word)


def word_positions(tokenizer: Any, tokens: Mapping[str, list], words: Iterable[str],
                   text_encoder: Any = None) -> WordPositions:
    """Where each of `words` stands in the model's context, from ComfyUI tokens ({key: [chunks]}) and the CLIP's
    text encoder (its cond_stage_model: which of SD3's encoders are loaded)."""
    length, found = 0, {w: [] for w in words}
    scanned: dict[str, tuple[int, dict[str, list[int]]]] = {}  # HiDream's context holds Llama's rows twice
    for key in context_parts(tokens, text_encoder):
        if key not in scanned:
            ids = flat_ids(tokens[key])
            dropped = _dropped_rows(key, ids)
            find = _finder(_sd_tokenizer(tokenizer, key), ids)
            scanned[key] = (len(ids) - dropped, {w: [j - dropped for j in find(w) if j >= dropped] for w in found})
        rows, at = scanned[key]
        for w in found:
            found[w].extend(length + j for j in at[w])
        length += rows
    return WordPositions(length=length, words={w: tuple(p) for w, p in found.items() if p})
