"""Attention layers that read text: their identity in ComfyUI, the cross-attention layers of a UNet, and the
weights of their projections as the model multiplies by them."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# ASCII digits only: int() would also take "-1", " 1" or "1_0", names no layer has.
_LAYER_KEY = re.compile(r"(input|middle|output)\.([0-9]{1,4})\.([0-9]{1,4})|(double|single|cross)\.([0-9]{1,4})")
DIT_BLOCKS = ("double", "single", "cross")


@dataclass(frozen=True, order=True)
class LayerId:
    """One attention layer that reads text, named as ComfyUI names it at run time.

    UNet cross-attention: `block` is "input", "middle" or "output", `number` the block's index in that
    list, `index` the transformer block inside it (ComfyUI's `block_index`); key "input.1.0".
    DiT joint attention: `block` is the `block_type` ComfyUI labels the block with ("double" for
    two-stream or joint blocks, "single" for Flux's single-stream ones), `number` its `block_index`,
    `index` 0; key "double.0". A DiT's text cross-attention (families/cross_attention.py): block "cross", key
    "cross.0".
    """

    block: str
    number: int
    index: int = 0

    @property
    def key(self) -> str:
        if self.block in DIT_BLOCKS:
            return f"{self.block}.{self.number}"
        return f"{self.block}.{self.number}.{self.index}"

    @classmethod
    def parse(cls, key: str) -> "LayerId":
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"'{key}' is not an attention layer name (expected e.g. 'input.1.0' or 'double.0')")
        if match[4]:
            return cls(match[4], int(match[5]))
        return cls(match[1], int(match[2]), int(match[3]))


def cross_attention_modules(unet: torch.nn.Module) -> dict[LayerId, torch.nn.Module]:
    """Every cross-attention module (`attn2`) of a ComfyUI UNetModel, by layer.

    Mirrors how the UNet forward labels blocks (`transformer_options["block"]`): position in
    input_blocks / output_blocks, and ("middle", 0) for the whole middle block (which distilled
    UNets such as KOALA do without).
    """
    middle = [unet.middle_block] if unet.middle_block is not None else []
    groups = [("input", list(unet.input_blocks)), ("middle", middle), ("output", list(unet.output_blocks))]
    found: dict[LayerId, torch.nn.Module] = {}
    for block, modules in groups:
        for number, module in enumerate(modules):
            for sub in module.modules():
                for index, tb in enumerate(getattr(sub, "transformer_blocks", ())):
                    if getattr(tb, "attn2", None) is not None:
                        found[LayerId(block, number, index)] = tb.attn2
    return found


def cross_attention_layers(unet: torch.nn.Module) -> dict[LayerId, tuple[int, int]]:
    """Every cross-attention layer of a ComfyUI UNetModel: {layer: (text width, value width)}."""
    return {layer: (attn2.to_v.in_features, attn2.to_v.out_features)
            for layer, attn2 in cross_attention_modules(unet).items()}


def weight_of(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as the layer multiplies by it, in fp32. ComfyUI 0.3.x keeps the scale of an fp8
    "scaled" file's weight beside it (scale_weight); later versions' quantized weights dequantize themselves."""
    weight = linear.weight.detach().float()
    scale = getattr(linear, "scale_weight", None)
    return weight if scale is None else weight * scale.detach().float().to(weight.device)
