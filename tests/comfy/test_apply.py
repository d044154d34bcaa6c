"""Apply Infusion to Model on a real ComfyUI, tiny SD1.5- and SDXL-shaped models: the exact
properties the method promises, through ComfyUI's own sampler and nodes."""
import copy

import pytest
import torch

from infusion_dev import comfy_harness as h

FAMILY_MODELS = ["sd15", "sdxl"]
PROMPT = "a photo of a dog on the beach"
NO_WORD = "a photo of a cat on the beach"
NEGATIVE = "blurry, low quality"


@pytest.fixture(params=FAMILY_MODELS)
def base(request):
    return request.getfixturevalue(request.param)


def node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]


def make_concept(pack, model, word="dog", seed=0, scale=1.0, name=""):
    concept_mod = h.pack_submodule(pack, "infusion.concept")
    patching = h.pack_submodule(pack, "infusion.patching")
    layers, family = patching.model_layers(model)
    c = concept_mod.InfusionConcept.zeros(word, layers, family, name=name)
    g = torch.Generator().manual_seed(seed)
    for layer in sorted(c.values):
        c.values[layer] = torch.randn(c.values[layer].shape, generator=g) * scale
    return c


def apply(model, clip, concept, strength=1.0, **kw):
    return node("ApplyInfusion").execute(model, clip, concept, strength, **kw).result


def test_prompt_without_the_word_is_bit_identical(pack, base):
    model, clip = base
    m, c = apply(model, clip, make_concept(pack, model))
    expected = h.sample(model, h.encode(clip, NO_WORD), h.encode(clip, NEGATIVE))["samples"]
    got = h.sample(m, h.encode(c, NO_WORD), h.encode(c, NEGATIVE))["samples"]
    assert torch.equal(got, expected)


def test_strength_zero_is_bit_identical(pack, base):
    model, clip = base
    m, c = apply(model, clip, make_concept(pack, model), strength=0.0)
    expected = h.sample(model, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE))["samples"]
    got = h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))["samples"]
    assert torch.equal(got, expected)


def test_word_changes_only_its_own_conditioning(pack, base):
    model, clip = base
    m, c = apply(model, clip, make_concept(pack, model))
    cond0, uncond0 = h.first_step(model, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE))
    cond1, uncond1 = h.first_step(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))
    assert not torch.equal(cond1, cond0)
    assert torch.equal(uncond1, uncond0)  # the negative prompt's branch is the base model's
    final0 = h.sample(model, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE))["samples"]
    final1 = h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))["samples"]
    assert not torch.equal(final0, final1)


def test_positive_and_negative_stay_in_one_unet_call(pack, sd15):
    model, clip = sd15
    calls = {}

    def count(m):
        m = m.clone()
        calls.clear()

        def wrapper(apply_model, args):
            calls[len(calls)] = args["input"].shape[0]
            return apply_model(args["input"], args["timestep"], **args["c"])
        m.set_model_unet_function_wrapper(wrapper)
        return m

    h.sample(count(model), h.encode(clip, PROMPT), h.encode(clip, NEGATIVE), steps=2)
    base_calls = dict(calls)
    m, c = apply(model, clip, make_concept(pack, model))
    h.sample(count(m), h.encode(c, PROMPT), h.encode(c, NEGATIVE), steps=2)
    assert calls == base_calls == {0: 2, 1: 2}


def spy_layers(model):
    """Wrap the applied residual so each call records the layers where it changed the values."""
    fired = []
    residual = [p for p in model.model_options["transformer_options"]["patches"]["attn2_patch"]
                if type(p).__name__ == "InfusionResidual"][-1]
    forward = residual.forward

    def spy(n, context, value, extra_options):
        out = forward(n, context, value, extra_options)
        if out[2] is not value:
            # (which conditioning: 0 positive / 1 negative, token row) of every changed value row
            chunk = value.shape[0] // len(extra_options["cond_or_uncond"])
            rows = [[extra_options["cond_or_uncond"][b // chunk], j]
                    for b, j in (out[2] != value).any(-1).nonzero().tolist()]
            fired.append(((extra_options["block"][0], extra_options["block"][1], extra_options["block_index"]), rows))
        return out

    residual.forward = spy
    return fired, residual, forward


@pytest.mark.parametrize("family, n_layers", [("sd15", 16), ("sdxl", 70)])
def test_every_cross_attention_layer_fires(pack, request, family, n_layers):
    model, clip = request.getfixturevalue(family)
    m, c = apply(model, clip, make_concept(pack, model))
    fired, residual, forward = spy_layers(m)
    try:
        h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE), steps=1)
    finally:
        residual.forward = forward
    layers = {layer for layer, _ in fired}
    assert len(layers) == n_layers
    # "dog" is token 5 of the positive prompt only
    assert all(rows == [[0, 5]] for _, rows in fired), fired[:3]


def test_strength_scales_the_attention_change_linearly(pack, sd15):
    model, clip = sd15
    concept = make_concept(pack, model)
    outs = {}
    for s in (0.0, 1.0, 2.0, -1.5):
        m, c = apply(model, clip, concept, strength=s)
        m = m.clone()
        seen = []

        def grab(n, extra_options):  # the first cross-attention's output (its input is the base model's)
            if extra_options["block"] == ("input", 1) and not seen:
                seen.append(n.clone())
            return n
        m.set_model_attn2_output_patch(grab)
        h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE), steps=1)
        outs[s] = seen[0]
    d1 = outs[1.0] - outs[0.0]
    assert d1.abs().max() > 0
    torch.testing.assert_close(outs[2.0] - outs[0.0], 2 * d1, rtol=1e-3, atol=1e-4 * d1.abs().max().item())
    torch.testing.assert_close(outs[-1.5] - outs[0.0], -1.5 * d1, rtol=1e-3, atol=1e-4 * d1.abs().max().item())


def test_conditioning_combine_concat_and_long_prompts(pack, sd15):
    import nodes
    model, clip = sd15
    m, c = apply(model, clip, make_concept(pack, model))
    fired, residual, forward = spy_layers(m)
    try:
        combined = nodes.ConditioningCombine().combine(h.encode(c, NO_WORD), h.encode(c, PROMPT))[0]
        h.sample(m, combined, h.encode(c, NEGATIVE), steps=1)
        assert fired and all(rows == [[0, 5]] for _, rows in fired)  # only the conditioning with the word
        fired.clear()
        concat = nodes.ConditioningConcat().concat(h.encode(c, PROMPT), h.encode(c, NO_WORD))[0]
        assert concat[0][0].shape[1] == 154
        h.sample(m, concat, h.encode(c, NEGATIVE), steps=1)
        assert fired and all(rows == [[0, 5]] for _, rows in fired)
        fired.clear()
        long = " ".join(["scenery"] * 80) + " with a dog"
        long_cond = h.encode(c, long)
        assert long_cond[0][0].shape[1] == 154
        h.sample(m, long_cond, h.encode(c, NEGATIVE), steps=1)
        rows = fired[0][1]
        assert len(rows) == 1 and rows[0][0] == 0 and rows[0][1] > 77
    finally:
        residual.forward = forward


def test_long_negative_tiles_the_positive_and_keeps_positions(pack, sd15):
    model, clip = sd15
    m, c = apply(model, clip, make_concept(pack, model))
    fired, residual, forward = spy_layers(m)
    try:
        h.sample(m, h.encode(c, PROMPT), h.encode(c, " ".join(["blurry"] * 100)), steps=1)
    finally:
        residual.forward = forward
    # the 77-token positive is repeated to 154 rows to batch with the long negative
    assert all(rows == [[0, 5], [0, 82]] for _, rows in fired)


def test_coexists_with_attn2_replace_patch_and_lora(pack, sd15):
    import comfy.sd
    from comfy.ldm.modules.attention import optimized_attention
    model, clip = sd15
    concept = make_concept(pack, model)
    seen_values = []

    def replace(q, k, v, extra_options):  # IPAdapter-style: owns the attention computation
        seen_values.append(v)
        return optimized_attention(q, k, v * 1.5, extra_options["n_heads"])

    def with_replace(m):
        m = m.clone()
        layers, _ = h.pack_submodule(pack, "infusion.patching").model_layers(m)
        for layer in layers:
            m.set_model_attn2_replace(replace, layer.block, layer.number, layer.index)
        return m

    pos, neg = h.encode(clip, PROMPT), h.encode(clip, NEGATIVE)
    base = h.first_step(model, pos, neg)[0]
    replaced = h.first_step(with_replace(model), pos, neg)[0]
    m, c = apply(with_replace(model), clip, concept)
    both = h.first_step(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))[0]
    infusion_only = h.first_step(*[apply(model, clip, concept)[0]], h.encode(c, PROMPT), h.encode(c, NEGATIVE))[0]
    assert_all_differ(base, replaced, both, infusion_only)
    assert seen_values  # the replace patch ran, on values that carry the residual

    lora = {}
    sd = model.model.state_dict()
    g = torch.Generator().manual_seed(7)
    for key in [k for k in sd if k.endswith("attn2.to_out.0.weight")]:
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        out_f, in_f = sd[key].shape
        lora[f"{name}.lora_up.weight"] = torch.randn((out_f, 1), generator=g)
        lora[f"{name}.lora_down.weight"] = torch.randn((1, in_f), generator=g)
    lora_model, lora_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
    lora_only = h.first_step(lora_model, pos, neg)[0]
    m, c = apply(lora_model, lora_clip, concept)
    lora_and_concept = h.first_step(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))[0]
    assert_all_differ(base, lora_only, infusion_only, lora_and_concept)


def assert_all_differ(*tensors):
    for i, a in enumerate(tensors):
        for b in tensors[i + 1:]:
            assert not torch.equal(a, b)


def test_fp16_cast_keeps_fp32_vectors(pack, sd15):
    model, clip = sd15
    concept = make_concept(pack, model)
    m, _ = apply(model, clip, concept)
    m.model_patches_to(torch.float16)
    m.model_patches_to(torch.device("cpu"))
    residual = m.model_options["transformer_options"]["patches"]["attn2_patch"][-1]
    for layer, p in zip(residual.layers, residual.values):
        assert p.dtype == torch.float32 and torch.equal(p.detach(), concept.values[layer])


def test_inputs_are_not_mutated(pack, sd15):
    model, clip = sd15
    before_options = copy.deepcopy(model.model_options)
    before = h.sample(model, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE))["samples"]
    m, c = apply(model, clip, make_concept(pack, model))
    h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))
    assert type(clip).__name__ == "CLIP" and not hasattr(clip, "infusion_words")
    assert repr(model.model_options) == repr(before_options)
    assert model.wrappers == {} or "infusion_word_positions" not in str(model.wrappers)
    assert "infusion_words" not in h.encode(clip, PROMPT)[0][1]
    after = h.sample(model, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE))["samples"]
    assert torch.equal(before, after)


def test_two_concepts_each_at_its_own_word(pack, sd15):
    model, clip = sd15
    dog, barn = make_concept(pack, model, "dog", seed=1), make_concept(pack, model, "barn", seed=2)
    m1, c1 = apply(model, clip, dog)
    m2, c2 = apply(m1, c1, barn)
    prompt = "a dog wearing sunglasses near a barn"
    cond_both = h.first_step(m2, h.encode(c2, prompt), h.encode(c2, NEGATIVE))[0]
    cond_dog = h.first_step(m1, h.encode(c1, prompt), h.encode(c1, NEGATIVE))[0]
    cond_barn = h.first_step(apply(model, clip, barn)[0], h.encode(apply(model, clip, barn)[1], prompt),
                           h.encode(clip, NEGATIVE))[0]
    assert not torch.equal(cond_both, cond_dog) and not torch.equal(cond_both, cond_barn)
    base = h.sample(model, h.encode(clip, "a cat"), h.encode(clip, NEGATIVE))["samples"]
    assert torch.equal(h.sample(m2, h.encode(c2, "a cat"), h.encode(c2, NEGATIVE))["samples"], base)


def test_two_concepts_on_one_word_are_refused_naming_both(pack, sd15):
    model, clip = sd15
    m, c = apply(model, clip, make_concept(pack, model, "dog", name="rex"))
    with pytest.raises(ValueError, match="'rex'.*'fido'"):
        apply(m, c, make_concept(pack, model, "dog", seed=3, name="fido"))


def test_concept_for_another_family_is_refused(pack, sd15, sdxl):
    with pytest.raises(ValueError, match="made for a custom model \\(16 cross-attention layers, text width 768\\) but "
                                         "this model is custom \\(70 cross-attention layers, text width 2048\\)"):
        apply(*sdxl, make_concept(pack, sd15[0]))


def test_start_and_end_percent_limit_the_steps(pack, sd15):
    model, clip = sd15
    concept = make_concept(pack, model)
    pos, neg = h.encode(clip, PROMPT), h.encode(clip, NEGATIVE)
    base = h.sample(model, pos, neg, steps=4)["samples"]
    base_first = h.first_step(model, pos, neg)[0]
    m, c = apply(model, clip, concept, start_percent=0.0, end_percent=0.0)
    assert torch.equal(h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE), steps=4)["samples"], base)
    m, c = apply(model, clip, concept, start_percent=0.5, end_percent=1.0)
    assert torch.equal(h.first_step(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE))[0], base_first)  # not yet active
    assert not torch.equal(h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE), steps=4)["samples"], base)
    with pytest.raises(ValueError, match="start_percent"):
        apply(model, clip, concept, start_percent=0.8, end_percent=0.2)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "Infusion" in r.getMessage()]


def test_a_concept_that_cannot_act_is_named_once_per_run(pack, base, caplog):
    """Prompts encoded with the CLIP that went into Apply (not the one it returned) carry no word marks, and a
    start/end range between two steps covers none: each run says so once, naming the concept and the fix.
    The right CLIP and the whole range say nothing."""
    model, clip = base
    m, c = apply(model, clip, make_concept(pack, model, name="rex"))
    with caplog.at_level("WARNING"):
        h.sample(m, h.encode(c, PROMPT), h.encode(c, NEGATIVE), steps=3)
    assert warnings_of(caplog) == []
    with caplog.at_level("WARNING"):
        h.sample(m, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE), steps=3)
    assert len(warnings_of(caplog)) == 1
    assert "rex" in warnings_of(caplog)[0] and "CLIP that Apply Infusion to Model returned" in warnings_of(caplog)[0]
    caplog.clear()
    narrow, narrow_clip = apply(model, clip, make_concept(pack, model, name="rex"), start_percent=0.4,
                                end_percent=0.41)
    with caplog.at_level("WARNING"):
        h.sample(narrow, h.encode(narrow_clip, PROMPT), h.encode(narrow_clip, NEGATIVE), steps=2)
    assert len(warnings_of(caplog)) == 1 and "cover none of this run's 2 steps" in warnings_of(caplog)[0]


def later_nodes(pack):
    """What a node placed before or after Apply can do to a UNet's attention: another pack's attn2 patch,
    an IPAdapter-style attn2 replace, an attention override (a sage / flash attention node, and ComfyUI's own
    ModelAttentionBackend where this ComfyUI has it)."""
    from comfy.ldm.modules.attention import optimized_attention
    from test_dit import attention_nodes

    def attn2_patch(model, calls):
        patched = model.clone()

        def patch(n, context, value, extra_options):
            calls.append(n.shape)
            return n, context * 1.01, value
        patched.set_model_attn2_patch(patch)
        return patched

    def attn2_replace(model, calls):
        patched = model.clone()

        def replace(q, k, v, extra_options):
            calls.append(v.shape)
            return optimized_attention(q, k, v * 1.5, extra_options["n_heads"])
        layers, _ = h.pack_submodule(pack, "infusion.patching").model_layers(model)
        for layer in layers:
            patched.set_model_attn2_replace(replace, layer.block, layer.number, layer.index)
        return patched

    return {"another pack's attn2 patch": attn2_patch, "an attn2 replace patch": attn2_replace,
            **attention_nodes()}


@pytest.mark.parametrize("order", ["before Apply", "after Apply"])
def test_a_unet_concept_acts_whatever_node_comes_before_or_after_apply(pack, sd15, order):
    """Each such node, in either order: the concept acts (as over that node's attention), and a prompt without
    the word is that node's model's picture bit for bit."""
    model, clip = sd15
    concept = make_concept(pack, model)
    for name, later in later_nodes(pack).items():
        calls = []
        if order == "before Apply":
            applied, word_clip = apply(later(model, calls), clip, concept)
        else:
            applied, word_clip = apply(model, clip, concept)
            applied = later(applied, calls)
        reference, _ = apply(later(model, []), clip, concept)
        with_node = later(model, [])
        drawn = h.sample(applied, h.encode(word_clip, PROMPT), h.encode(word_clip, NEGATIVE))["samples"]
        assert torch.equal(drawn, h.sample(reference, h.encode(word_clip, PROMPT),
                                           h.encode(word_clip, NEGATIVE))["samples"]), name
        assert not torch.equal(drawn, h.sample(with_node, h.encode(clip, PROMPT), h.encode(clip, NEGATIVE))["samples"])
        assert torch.equal(h.sample(applied, h.encode(word_clip, NO_WORD), h.encode(word_clip, NEGATIVE))["samples"],
                           h.sample(with_node, h.encode(clip, NO_WORD), h.encode(clip, NEGATIVE))["samples"]), name
        assert name == "ComfyUI's ModelAttentionBackend" or calls, name
