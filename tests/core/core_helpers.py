"""Shared helpers for the core tests (importable: conftest puts this folder on sys.path)."""
import torch

from infusion.concept import InfusionConcept
from infusion.layers import LayerId

# Seconds after which a subprocess counts as hung: no correct run comes near it on a busy machine.
HANG = 3600


def sd15_layers() -> dict[LayerId, tuple[int, int]]:
    """SD1.5's 16 cross-attention layers as ComfyUI names them: {layer: (text width, value width)}."""
    widths = {("input", 1): 320, ("input", 2): 320, ("input", 4): 640, ("input", 5): 640,
              ("input", 7): 1280, ("input", 8): 1280, ("middle", 0): 1280,
              **{("output", i): 1280 for i in (3, 4, 5)}, **{("output", i): 640 for i in (6, 7, 8)},
              **{("output", i): 320 for i in (9, 10, 11)}}
    return {LayerId(b, n, 0): (768, w) for (b, n), w in widths.items()}


def random_concept(word: str = "dog", variant: str = "value", seed: int = 0) -> InfusionConcept:
    g = torch.Generator().manual_seed(seed)
    c = InfusionConcept.zeros(word, sd15_layers(), "SD15", variant=variant, name="rex", token_ids=(1929,))
    for vectors in (c.values, c.keys or {}):
        for layer in vectors:
            vectors[layer] = torch.randn(768, generator=g)
    return c
