"""Any UNet with cross-attention: a concept fits the model whose cross-attention layers are its own.

ComfyUI's distilled SDXL families (SSD-1B, Segmind Vega, KOALA) are built the way ComfyUI builds them
from a checkpoint (its own detection picks the config from the checkpoint's keys), on the meta device
so no weight is allocated. A small UNet of no family trains, applies and reloads.
"""
import os

import pytest
import torch

from infusion_dev import comfy_harness as h

# Per down block of a diffusers-layout UNet: (resnets, transformer blocks of each attention).
DISTILLED = {
    "SDXL": ([(2, []), (2, [2, 2]), (2, [10, 10])], 70),
    "SSD1B": ([(2, []), (2, [2, 2]), (2, [4, 4])], 34),
    "Segmind_Vega": ([(2, []), (2, [1, 1]), (2, [2, 2])], 15),
    "KOALA_700M": ([(1, []), (1, [2]), (1, [5])], 21),
    "KOALA_1B": ([(1, []), (1, [2]), (1, [6])], 30),
}


def meta_model(down_blocks):
    """A ModelPatcher over the model ComfyUI detects from a diffusers checkpoint of this shape (meta weights)."""
    import comfy.model_detection
    import comfy.model_patcher

    def m(*shape):
        return torch.empty(shape, device="meta")

    keys = {"conv_in.weight": m(320, 4, 3, 3), "add_embedding.linear_1.weight": m(1280, 2816)}
    for i, (resnets, attentions) in enumerate(down_blocks):
        keys.update({f"down_blocks.{i}.resnets.{r}.conv1.weight": m(1) for r in range(resnets)})
        for a, depth in enumerate(attentions):
            keys.update({f"down_blocks.{i}.attentions.{a}.transformer_blocks.{t}.attn2.to_k.weight": m(640, 2048)
                         for t in range(depth)})
    unet_config = comfy.model_detection.unet_config_from_diffusers_unet(keys)
    model = comfy.model_detection.model_config_from_unet_config(unet_config).get_model({}, device=torch.device("meta"))
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


@pytest.fixture(scope="module")
def distilled(comfy_path):
    return {name: meta_model(down) for name, (down, _) in DISTILLED.items()}


@pytest.fixture
def patching(pack):
    return h.pack_submodule(pack, "infusion.patching")


@pytest.fixture
def concept_mod(pack):
    return h.pack_submodule(pack, "infusion.concept")


@pytest.mark.parametrize("name", DISTILLED)
def test_distilled_sdxl_families_are_named_and_their_layers_read(distilled, patching, name):
    layers, family = patching.model_layers(distilled[name])
    assert family == name and len(layers) == DISTILLED[name][1]
    assert {text for text, _ in layers.values()} == {2048}
    assert {value for _, value in layers.values()} == {640, 1280}


def test_a_concept_made_on_one_layer_set_is_refused_on_another(distilled, patching, concept_mod):
    layers, family = patching.model_layers(distilled["SDXL"])
    concept = concept_mod.InfusionConcept.zeros("dog", layers, family, name="rex")
    patching.apply_concept(distilled["SDXL"], concept)  # its own layers: fits
    for other in ("SSD1B", "Segmind_Vega", "KOALA_700M"):
        with pytest.raises(concept_mod.ConceptMismatchError,
                           match=f"made for a SDXL model \\(70 cross-attention layers, text width 2048\\) but this "
                                 f"model is {other} \\({DISTILLED[other][1]} cross-attention layers.*first layers that "
                                 "differ: .*concept text 2048 -> value \\d+, model has no such layer"):
            patching.apply_concept(distilled[other], concept)
    # Same layers, same family name: KOALA_1B's concept fits KOALA_1B only.
    koala_layers, koala = patching.model_layers(distilled["KOALA_1B"])
    patching.apply_concept(distilled["KOALA_1B"], concept_mod.InfusionConcept.zeros("dog", koala_layers, koala))


def test_a_custom_unet_trains_applies_and_reloads(pack, custom, sd15, vae, patching, tmp_models_dir):
    import nodes
    model, clip = custom
    layers, family = patching.model_layers(model)
    assert family == "custom" and len(layers) == 7
    node = h.train_node(pack, "1")
    photos = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    concept, _, _, path, _ = h.run_node(
        node, model, clip, vae=vae, photos=photos, word="dog", output_name="custom_dog", steps=2, learning_rate=0.05,
        batch_size=2, gradient_accumulation=1, resolution=64, seed=0, templates="a photo of a {}", flip=False,
        save_every=0, resume=False, variant="value", precision="fp32", gradient_checkpointing=False,
        sample_every=0).result
    assert concept.family == "custom" and all(v.abs().sum() > 0 for v in concept.values.values())

    apply = nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"]
    reloaded = nodes.NODE_CLASS_MAPPINGS["LoadInfusion"].execute(os.path.basename(path)).result[0]
    negative = h.encode(clip, "")
    samples = {}
    for label, c in (("trained", concept), ("reloaded", reloaded)):
        applied, word_clip = apply.execute(model, clip, c, 1.0).result
        samples[label] = h.sample(applied, h.encode(word_clip, "a photo of a dog"), negative)["samples"]
        without = h.sample(applied, h.encode(word_clip, "a photo of a cat"), negative)["samples"]
        assert torch.equal(without, h.sample(model, h.encode(clip, "a photo of a cat"), negative)["samples"])
    assert torch.equal(samples["trained"], samples["reloaded"])  # the node returns the concept as saved
    assert not torch.equal(samples["trained"], h.sample(model, h.encode(clip, "a photo of a dog"), negative)["samples"])
    with pytest.raises(ValueError, match="made for a custom model \\(7 cross-attention layers.*but this model is custom "
                                         "\\(16 cross-attention layers"):
        apply.execute(sd15[0], sd15[1], reloaded, 1.0)
