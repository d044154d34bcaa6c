"""The toy world's text encoder: ComfyUI's SD1 tokenizer and CLIP machinery around a fixed encoder.

What it computes, for a prompt's token rows e_0 .. e_76 (e_j: a fixed pseudo-random vector of the
token id, drawn from a counter-based hash so it is the same on every machine and torch version):

    h_j = (e_j + mean(e_0 .. e_j)) / sqrt(2)   for the prompt's rows (start, words, the first end token)
    h_j = e_j                                    for the padding after it

Each prompt row is its own token plus the running mean of the prompt so far: like CLIP's causal
attention it mixes earlier words into later rows, and the end row carries a summary of the whole
prompt. The padding carries nothing of the prompt, so the model must read each word where it stands,
as it reads a real CLIP's word rows (a first version let every padding row carry the summary: the
model then read the prompt from 70 padding rows and barely looked at the words, and a residual on a
word's row, which is what Infusion learns, had little to act on). It has no trained weights, so
nothing of it is stored: the base model learns to read it.

The two-object world (pairs.py) mixes with a decaying mean instead (`PairTextModel`): each row carries
mostly the words just before it, so in "a red triangle and a blue ring" the ring's row holds blue and
barely red, and the model can bind each colour to its shape by where the words stand (as CLIP's word rows
are most coloured by their neighbours).

`ToyTextModel` stands where ComfyUI's CLIPTextModel stands inside `comfy.sd1_clip.SDClipModel`, so
prompt weights, long prompts and ComfyUI's CLIP object (tokenize, encode, clone) work unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

WIDTH = 128
VOCAB = 49408  # CLIP's BPE vocabulary, as ComfyUI's SD1 tokenizer gives ids
_SEED = 0x5EED_1F05


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based hash (SplitMix64's finaliser): uint64 -> uint64, the same everywhere."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def token_vectors(vocab: int = VOCAB, width: int = WIDTH) -> torch.Tensor:
    """[vocab, width] ~ N(0, 1), row t a function of t alone (Box-Muller on hashed counters)."""
    counters = np.arange(vocab * width, dtype=np.uint64) * np.uint64(2) + np.uint64(_SEED)
    uniform = lambda c: ((_splitmix64(c) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53  # noqa: E731
    u1, u2 = uniform(counters), uniform(counters + np.uint64(1))
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return torch.from_numpy(normal.reshape(vocab, width).astype(np.float32))


class ToyTextModel(torch.nn.Module):
    """The `model_class` of an SDClipModel: embeddings, then the running-mean mixer above."""
    decay = 1.0  # weight of a word one row further back in a row's mean (1: the plain running mean)

    def __init__(self, config: dict, dtype: Any, device: Any, operations: Any):
        super().__init__()
        self.num_layers = 1
        self.embeddings = operations.Embedding(VOCAB, config["hidden_size"], dtype=dtype, device=device)
        with torch.no_grad():
            self.embeddings.weight.copy_(token_vectors(VOCAB, config["hidden_size"]))

    def mean_so_far(self, e: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Row j: the mean of rows 0..j, row i weighted by decay ** (j - i)."""
        if self.decay == 1.0:
            return e.cumsum(1) / (rows + 1).to(e.dtype).view(1, -1, 1)
        back = (rows.view(-1, 1) - rows.view(1, -1)).to(torch.float64)
        weights = torch.where(back >= 0, self.decay ** back.clamp(min=0), 0.0)
        weights = (weights / weights.sum(1, keepdim=True)).to(e.dtype)
        return torch.einsum("ji,bid->bjd", weights, e)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embeddings

    def forward(self, input_tokens: Any, attention_mask: Any = None, embeds: torch.Tensor | None = None,
                num_tokens: list[int] | None = None, *args: Any, dtype: torch.dtype = torch.float32,
                **kwargs: Any) -> tuple:
        e = embeds if embeds is not None else self.embeddings(input_tokens, out_dtype=dtype)
        e = e.to(dtype)
        rows = torch.arange(e.shape[1], device=e.device)
        mixed = (e + self.mean_so_far(e, rows)) * 0.5 ** 0.5
        # SDClipModel counts each prompt's rows up to its first end token (num_tokens); the rest is padding.
        length = torch.tensor(num_tokens if num_tokens is not None else [e.shape[1]] * e.shape[0], device=e.device)
        h = torch.where((rows.view(1, -1) < length.view(-1, 1)).unsqueeze(-1), mixed, e)
        pooled = h[torch.arange(e.shape[0], device=e.device), length - 1]  # the end row: the prompt's summary
        return h, h, pooled, pooled  # (last, intermediate, projected pooled, pooled)


class PairTextModel(ToyTextModel):
    """The two-object world's encoder: a row's mean halves the weight of each word further back."""
    decay = 0.5


def sd_clip_model_class(text_model: type = ToyTextModel) -> type:
    """ComfyUI's SD1 CLIP model with a toy encoder inside (built on first use: imports ComfyUI)."""
    import comfy.sd1_clip

    class ToyClipL(comfy.sd1_clip.SDClipModel):
        def __init__(self, device: Any = "cpu", dtype: Any = None, model_options: dict = {}, **kwargs: Any):
            super().__init__(device=device, dtype=dtype, model_options=model_options, model_class=text_model,
                             textmodel_json_config={"hidden_size": WIDTH}, return_projected_pooled=False, **kwargs)

    class ToyClip(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device: Any = "cpu", dtype: Any = None, model_options: dict = {}, **kwargs: Any):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=ToyClipL, **kwargs)

    return ToyClip
