"""Where the class word stands in a tokenized prompt.

A prompt is encoded in chunks of 77 tokens (BOS, up to 75 tokens, EOS/padding); chunk k holds
rows 77k .. 77k+76 of the text encoding, so a token's position is its index in the flat list
of all chunks. The word matches only as a whole word: its token ids in sequence, starting right
after a token that ends a word (CLIP's BPE marks word ends with "</w>") or a special token.
Case and punctuation do not matter ("Dog," matches "dog"; CLIP lowercases and splits
punctuation off). Plurals and compounds do not match: "dogs" and "hotdog" are other tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

TokenChunk = Sequence[tuple]  # ComfyUI: (token id, weight[, word id]); the id may be an embedding tensor


@dataclass(frozen=True)
class WordPositions:
    """What one encoded prompt tells the UNet: its token length and where each class word is.

    Carried in the conditioning dict (key CONDITIONING_KEY), so positive and negative prompts
    stay batched in one UNet call.
    """

    length: int
    words: Mapping[str, tuple[int, ...]]

    def rows(self, word: str, context_length: int) -> list[int]:
        """Positions of `word` in a context of `context_length` rows: ComfyUI repeats a prompt
        to a common multiple of 77 when batching prompts of different lengths."""
        found = self.words.get(word, ())
        if not found or context_length % self.length:
            return [j for j in found if j < context_length]
        return [j + m * self.length for m in range(context_length // self.length) for j in found]


CONDITIONING_KEY = "infusion_words"


def flat_ids(chunks: Iterable[TokenChunk]) -> list:
    return [item[0] for chunk in chunks for item in chunk]


def find_word(ids: Sequence, word: Sequence[int], ends_word: Callable[[int], bool]) -> list[int]:
    """Every position of every token of `word` where it occurs as a whole word in `ids`.

    `ends_word(id)` tells whether token `id` ends a word (or is a special token); non-integer
    entries (embeddings) count as word ends.
    """
    n = len(word)
    if n == 0:
        return []
    word = list(word)
    out: list[int] = []
    for j in range(len(ids) - n + 1):
        window = ids[j:j + n]
        if not all(isinstance(i, int) for i in window) or list(window) != word:
            continue
        prev = ids[j - 1] if j > 0 else None
        if prev is None or not isinstance(prev, int) or ends_word(prev):
            out.extend(range(j, j + n))
    return out
