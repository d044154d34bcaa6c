"""Applying concepts to a ComfyUI ModelPatcher (duck-typed; ComfyUI is imported only when called).
What differs by model family lives in the family adapters (families/)."""
from __future__ import annotations

from typing import Any, Mapping

from .concept import InfusionConcept
from .families import adapter_for, model_family
from .families.base import FamilyAdapter, Layers
from .layers import LayerId
from .residual import ConceptResidual
from .word_carrier import carry_word_positions
from .value_space import ValueSpace

WRAPPER_KEY = "infusion_word_positions"


def model_layers(model: Any) -> tuple[Layers, str]:
    """The model's attention layers that read text ({layer: (vector width, value width)}), and its family."""
    return adapter_for(model).layers(model.get_model_object("diffusion_model")), model_family(model)


def check_variant(adapter: FamilyAdapter, variant: str, family: str) -> None:
    """Refuse a variant the model's family does not have (image-queries where every query is an image's)."""
    if variant not in adapter.variants:
        raise ValueError(f"the {variant} variant does not apply to {adapter.name} models ({family}); "
                         f"theirs: {', '.join(adapter.variants)}. Train the concept with one of those")


def check_fits(model: Any, concept: InfusionConcept) -> None:
    adapter, family = adapter_for(model), model_family(model)
    check_variant(adapter, concept.variant, family)
    concept.check_fits(adapter.layers(model.get_model_object("diffusion_model")), family, adapter.vector_space)


def load_weights(model: Any, **options: Any) -> None:
    """`model`'s weights in place as ComfyUI loads it, its own patches (LoRAs) applied: another patcher of the
    same weights (a LoRA sampled before) may have left its own there. `options` go to load_models_gpu."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model], force_full_load=True, **options)


def value_weights(model: Any) -> dict[LayerId, Any] | None:
    """Each layer's map from a residual vector to what it adds to the values (a UNet's W_v, fp32 on the
    CPU), or None where the vectors are value-space already (DiTs)."""
    load_weights(model)
    return adapter_for(model).value_weights(model.get_model_object("diffusion_model"))


def applied_residuals(model: Any) -> list[ConceptResidual]:
    return adapter_for(model).applied(model)


def check_word_free(model: Any, concept: InfusionConcept) -> None:
    for other in applied_residuals(model):
        if other.word == concept.word:
            raise ValueError(f"concepts {other.label} and {concept.label} are both bound to the word "
                             f"'{concept.word}': their residuals would add up at the same tokens. "
                             "Apply only one concept per class word")


def install_position_carrier(model: Any) -> None:
    """Once per model: the wrapper that hands prompt word positions to the attention patches."""
    from comfy.patcher_extension import WrappersMP

    if not model.get_wrappers(WrappersMP.CALC_COND_BATCH, WRAPPER_KEY):
        model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, carry_word_positions)


def install(patcher: Any, residual: ConceptResidual) -> None:
    """The residual on `patcher` (a clone the caller owns), with the word-position carrier."""
    adapter_for(patcher).install(patcher, residual)
    install_position_carrier(patcher)


def training_space(model: Any, variant: str) -> ValueSpace:
    """Where a concept of `variant` trains on this model: its layers' value space (value_space.py), read from
    the weights training uses (the model loaded as training loads it; everything else in memory can go)."""
    load_weights(model, memory_required=1e20)
    return adapter_for(model).training_space(model.get_model_object("diffusion_model"), variant)


def trainable_residual(model: Any, concept: InfusionConcept, space: ValueSpace) -> ConceptResidual:
    """`concept` as its family's residual, with parameters that train in `space`."""
    return adapter_for(model).residual(concept, trainable=True, space=space)


def sigma_range(model: Any, start_percent: float, end_percent: float) -> tuple[float, float] | None:
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent ({start_percent}) must be <= end_percent ({end_percent}), both in 0..1")
    if start_percent == 0.0 and end_percent == 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def apply_concept(model: Any, concept: InfusionConcept, strength: float = 1.0,
                  start_percent: float = 0.0, end_percent: float = 1.0,
                  layer_strengths: Mapping[LayerId, float] | None = None) -> Any:
    """A clone of `model` with the concept's residuals added at its word; `model` is not touched.
    `layer_strengths` scales single layers (1 where absent)."""
    check_fits(model, concept)
    check_word_free(model, concept)
    patched = model.clone()
    install(patched, adapter_for(model).residual(concept, strength=strength,
                                                 sigma_range=sigma_range(model, start_percent, end_percent),
                                                 layer_strengths=layer_strengths))
    return patched
