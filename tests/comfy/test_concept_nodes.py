"""The concept tools on a real ComfyUI: Info, Blend, Save, and Apply's word and block_weights, with the
exact properties they promise."""
import os

import pytest
import torch

from infusion_dev import comfy_harness as h
from test_apply import NEGATIVE, PROMPT, apply, make_concept, node


def samples(model, clip, text):
    return h.sample(model, h.encode(clip, text), h.encode(clip, NEGATIVE))["samples"]


def test_block_weights_of_one_are_plain_apply(pack, sd15):
    model, clip = sd15
    concept = make_concept(pack, model)
    plain = samples(*apply(model, clip, concept), PROMPT)
    ones = samples(*apply(model, clip, concept, block_weights="input=1, middle=1, output=1"), PROMPT)
    assert torch.equal(ones, plain)
    nothing = samples(*apply(model, clip, concept, block_weights="input=0, middle=0, output=0"), PROMPT)
    assert torch.equal(nothing, samples(model, clip, PROMPT))


def values_after_patches(model, clip, text):
    """{layer key: True if the value input of that layer equals its context (nothing was added)} at step 1."""
    seen = {}

    def record(n, context, value, extra_options):
        block, index = extra_options["block"], extra_options["block_index"]
        seen.setdefault(f"{block[0]}.{block[1]}.{index}", torch.equal(value, context))
        return n, context, value

    m = model.clone()
    m.set_model_attn2_patch(record)  # after the concept's patch: sees what it left
    h.sample(m, h.encode(clip, text), h.encode(clip, NEGATIVE), steps=1)
    return seen


def test_a_block_at_zero_is_left_exactly_untouched(pack, sd15):
    model, clip = sd15
    m, c = apply(model, clip, make_concept(pack, model), block_weights="output=0, input.1.0=0")
    untouched = values_after_patches(m, c, PROMPT)
    assert len(untouched) == 16
    assert {k for k, same in untouched.items() if same} == {k for k in untouched if k.startswith("output")} | {
        "input.1.0"}


def test_rebinding_keeps_every_invariance_for_the_new_word(pack, sd15):
    model, clip = sd15
    m, c = apply(model, clip, make_concept(pack, model, word="dog"), word="puppy")
    for text in ("a photo of a dog on the beach", "a photo of a cat on the beach"):  # no "puppy": base, bit for bit
        assert torch.equal(samples(m, c, text), samples(model, clip, text))
    assert not torch.equal(samples(m, c, "a photo of a puppy"), samples(model, clip, "a photo of a puppy"))


def test_block_weights_errors_are_clear(pack, sd15):
    model, clip = sd15
    with pytest.raises(ValueError, match="block_weights: 'mid' is neither a block"):
        apply(model, clip, make_concept(pack, model), block_weights="mid=0")


def test_blend_at_one_is_a_and_save_then_load_is_what_was_saved(pack, sd15, tmp_models_dir):
    model, clip = sd15
    a, b = make_concept(pack, model, seed=1, name="a"), make_concept(pack, model, seed=2, name="b")
    blended = node("BlendInfusionConcepts").execute(a, b, 1.0, "").result[0]
    assert all(torch.equal(blended.values[l], a.values[l]) for l in a.values)
    half = node("BlendInfusionConcepts").execute(a, b, 0.5, "").result[0]
    for precision, rounding in (("fp32", torch.float32), ("fp16", torch.float16)):
        saved, path = node("SaveInfusion").execute(half, f"half_{precision}", precision).result
        assert path == os.path.join(tmp_models_dir, "infusion", f"half_{precision}.safetensors")
        loaded = node("LoadInfusion").execute(os.path.basename(path)).result[0]
        assert all(torch.equal(loaded.values[l], half.values[l].to(rounding).float()) for l in half.values)
        assert all(torch.equal(loaded.values[l], saved.values[l]) for l in half.values)
        assert loaded.metadata["lineage"] == {"blend": {"a": {"name": "a", "word": "dog"},
                                                        "b": {"name": "b", "word": "dog"}, "weight": 0.5}}
    with pytest.raises(ValueError, match="must be a plain file name"):
        node("SaveInfusion").execute(half, "../outside", "fp16")
    other = make_concept(pack, h.tiny_sdxl()[0])
    with pytest.raises(ValueError, match="only concepts of the same model can be blended"):
        node("BlendInfusionConcepts").execute(a, other, 0.5, "")


def test_info_reports_and_charts_norms_in_text_or_value_space(pack, sd15):
    model, _ = sd15
    concept = make_concept(pack, model, name="rex")
    text, chart = node("InfusionConceptInfo").execute(concept).result
    assert "Infusion concept 'rex' (word 'dog')" in text and "|u|, text space" in text and chart.shape[-1] == 3
    text, _ = node("InfusionConceptInfo").execute(concept, model).result
    assert "|W_v u|, value space" in text
    norms = h.pack_submodule(pack, "infusion.concept_tools").residual_norms(concept, model)
    unet = model.get_model_object("diffusion_model")
    to_v = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_v.weight
    layer = h.pack_submodule(pack, "infusion.layers").LayerId("input", 1, 0)
    assert norms[layer] == pytest.approx(float((to_v.detach().float() @ concept.values[layer]).norm()), rel=1e-6)
    with pytest.raises(ValueError, match="made for a custom model \\(16 .* but this model is custom \\(70"):
        node("InfusionConceptInfo").execute(concept, h.tiny_sdxl()[0])


def test_nodes_have_tooltips_everywhere(pack):
    for name in ("InfusionConceptInfo", "BlendInfusionConcepts", "SaveInfusion", "ApplyInfusion"):
        schema = node(name).define_schema()
        assert schema.inputs and all(i.tooltip for i in schema.inputs), name
