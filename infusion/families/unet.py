"""UNet models with cross-attention (SD1.x, SD2.x, SDXL and its distilled variants, custom UNets).

The residual lives in text space and goes in through ComfyUI's composable `attn2_patch` (a list, so it
stacks with other packs' patches and with IPAdapter-style attn2 replace patches).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..concept import InfusionConcept
from ..layers import LayerId, cross_attention_layers, cross_attention_modules, weight_of
from ..residual import InfusionResidual
from ..value_space import ValueSpace
from .base import FamilyAdapter, Layers


class UNetAdapter(FamilyAdapter):
    name = "UNet"
    vector_space = "text"
    variants = ("value", "key+value")

    def matches(self, diffusion_model: torch.nn.Module) -> bool:
        return all(hasattr(diffusion_model, a) for a in ("input_blocks", "middle_block", "output_blocks"))

    def layers(self, diffusion_model: torch.nn.Module) -> Layers:
        layers = cross_attention_layers(diffusion_model)
        if not layers:
            raise ValueError("this UNet has no cross-attention layers: nothing for Infusion to patch")
        widths = sorted({text for text, _ in layers.values()})
        if len(widths) != 1:
            raise ValueError(f"this UNet's cross-attention layers read text of several widths {widths}; "
                             "Infusion needs one text encoding")
        return layers

    def residual(self, concept: InfusionConcept, **options: Any) -> InfusionResidual:
        return InfusionResidual(concept, **options)

    def install(self, patcher: Any, residual: InfusionResidual) -> None:
        patcher.set_model_attn2_patch(residual)

    def applied(self, patcher: Any) -> list[InfusionResidual]:
        patches = patcher.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_patch", [])
        return [p for p in patches if isinstance(p, InfusionResidual)]

    def native_resolution(self, model: Any) -> int:
        """SDXL and its distilled variants 1024, SD2.x 768 (v) or 512 (eps), SD1.x and anything else 512."""
        import comfy.model_base

        if isinstance(model.model, comfy.model_base.SDXL):
            return 1024
        width = next(iter(self.layers(model.get_model_object("diffusion_model")).values()))[0]
        if width == 1024 and getattr(model.model.model_type, "name", "") == "V_PREDICTION":
            return 768
        return 512

    def photo_conditioning(self, model: Any, original: tuple[int, int], crop: tuple[int, int],
                           size: tuple[int, int]) -> Mapping[str, Any]:
        """SDXL's size conditioning (ComfyUI's CLIPTextEncodeSDXL keys) with each photo's real values, as
        kohya's SDXL training gives them; SD1.x and SD2.x have none."""
        import comfy.model_base
        if not isinstance(model.model, comfy.model_base.SDXL):
            return {}
        return {"height": original[0], "width": original[1], "crop_h": crop[0], "crop_w": crop[1],
                "target_height": size[0], "target_width": size[1]}

    def value_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {layer: weight_of(attn2.to_v).cpu()
                for layer, attn2 in cross_attention_modules(diffusion_model).items()}

    def training_space(self, diffusion_model: torch.nn.Module, variant: str) -> ValueSpace:
        """The authors' value space (and, for key+value, key space) of every cross-attention layer."""
        modules = cross_attention_modules(diffusion_model)
        kinds = {"value": "to_v", "key": "to_k"} if variant == "key+value" else {"value": "to_v"}
        # keys are read through the queries (their logits), values through the output projection
        reading = {"value": self.output_weights(diffusion_model),
                   "key": {layer: weight_of(attn2.to_q) for layer, attn2 in modules.items()}}
        return ValueSpace({kind: reading[kind] for kind in kinds},
                          {kind: {layer: weight_of(getattr(attn2, name)) for layer, attn2 in modules.items()}
                           for kind, name in kinds.items()})

    def output_weights(self, diffusion_model: torch.nn.Module) -> dict[LayerId, torch.Tensor]:
        return {layer: weight_of(attn2.to_out[0]) for layer, attn2 in cross_attention_modules(diffusion_model).items()}

    @contextmanager
    def training_blocks(self, diffusion_model: torch.nn.Module, checkpointing: bool,
                        trained: Sequence[torch.Tensor]) -> Iterator[None]:
        """Recompute every ResBlock and SpatialTransformer in backward instead of storing their
        activations; the modules' own forward is restored afterwards."""
        if not checkpointing:
            yield
            return
        from comfy.ldm.modules.attention import SpatialTransformer
        from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

        blocks = [m for m in diffusion_model.modules() if isinstance(m, (ResBlock, SpatialTransformer))]
        with replaced_forwards(blocks, _checkpointed):
            yield


@contextmanager
def replaced_forwards(blocks: Sequence[torch.nn.Module], wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """Each block's forward replaced by `wrap(forward)` for the duration; restored afterwards."""
    previous = [m.__dict__.get("forward") for m in blocks]
    for m in blocks:
        m.forward = wrap(m.forward)
    try:
        yield
    finally:
        for m, old in zip(blocks, previous):
            if old is None:
                del m.forward
            else:
                m.forward = old


def call_copies(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's dict arguments copied: ComfyUI keeps per-call facts ("block", "block_index", ...) in one
    transformer_options dict that it overwrites as it goes, and a recomputation during backward must see
    this call's values."""
    return (tuple(dict(a) if isinstance(a, dict) else a for a in args),
            {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()})


def _checkpointed(forward: Callable) -> Callable:
    def run(*args, **kwargs):
        args, kwargs = call_copies(args, kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False,
                                                 **kwargs)
    return run
