"""Infusion Metrics nodes on a real ComfyUI with tiny models: Latent Fisher divergence
(Infusion exactly 0 without the word, LoRA > 0 and growing, SD1.x/SD2.x/SDXL) and
Wasserstein-2 through a real CLIP vision model."""
import json

import pytest
import torch

from infusion_dev import comfy_harness as h

NO_WORD = ["a photo of a cat on the beach", "a red car in the city"]
WITH_WORD = ["a photo of a dog on the beach"]
# Few draws: 1-2 prompts x 2 timesteps x 2 samples keeps every run at 4-8 UNet calls.
FAST = {"timesteps": 2, "samples": 2, "seed": 0, "weighting": "epsilon"}


@pytest.fixture(scope="module")
def metrics(pack):
    return h.pack_submodule(pack, "nodes.metrics")


def conditioning(clip, prompts):
    return [entry for p in prompts for entry in h.encode(clip, p)]


def reference_latent(n=2, seed=0):
    return {"samples": torch.randn((n, 4, h.LATENT_SIZE, h.LATENT_SIZE), generator=torch.Generator().manual_seed(seed))}


def lfd(metrics, base, custom, cond, **kw):
    args = {**FAST, **kw}
    out = h.run_node(metrics.InfusionLatentFisherDivergence, base, custom, cond, reference_latent(),
                     args["timesteps"], args["samples"], args["seed"], args["weighting"])
    return out


def value(out):
    return out.result[0]


def counting(model, calls):
    """A clone whose every UNet call appends (batch size, conditioning keys) to calls."""
    m = model.clone()

    def wrapper(apply_model, args):
        calls.append((args["input"].shape[0], sorted(k for k in args["c"] if k != "transformer_options")))
        return apply_model(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrapper)
    return m


def concept(pack, model, word="dog", seed=0):
    concept_mod = h.pack_submodule(pack, "infusion.concept")
    patching = h.pack_submodule(pack, "infusion.patching")
    layers, family = patching.model_layers(model)
    c = concept_mod.InfusionConcept.zeros(word, layers, family)
    g = torch.Generator().manual_seed(seed)
    for layer in sorted(c.values):
        c.values[layer] = torch.randn(c.values[layer].shape, generator=g)
    return c


def lora_for(model, rank=2, seed=0):
    """A small LoRA in ComfyUI's lora_unet_* format on every cross-attention value projection."""
    import comfy.lora
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key, target in sorted(key_map.items()):
        if key.startswith("lora_unet_") and key.endswith("attn2_to_v") and target in weights:
            out_dim, in_dim = weights[target].shape
            lora[f"{key}.lora_up.weight"] = torch.randn((out_dim, rank), generator=g) * 0.1
            lora[f"{key}.lora_down.weight"] = torch.randn((rank, in_dim), generator=g) * 0.1
    assert lora, "no cross-attention value projection found"
    return lora


def with_lora(model, lora, strength):
    import comfy.sd
    with h.executor_mode():
        return comfy.sd.load_lora_for_models(model, None, lora, strength, 0.0)[0]


# ------------------------------------------------------------------ schema

def test_nodes_are_registered_with_tooltips_everywhere(metrics):
    import nodes
    assert metrics.NODES == [metrics.InfusionLatentFisherDivergence, metrics.InfusionWasserstein]
    for node in metrics.NODES:
        assert nodes.NODE_CLASS_MAPPINGS[node.GET_SCHEMA().node_id] is node
        schema = node.GET_SCHEMA()
        assert schema.node_id.startswith("Infusion") and schema.category == "Infusion/metrics"
        assert schema.is_output_node  # runs and shows its report without a downstream node
        assert all(i.tooltip for i in schema.inputs + schema.outputs), schema.node_id
        info = node.GET_NODE_INFO_V1()  # what the frontend receives
        assert info["output"][-1] == "STRING" and info["output"][0] == "FLOAT"


# ------------------------------------------------------------------ Latent Fisher divergence

def test_infusion_applied_is_exactly_zero_on_prompts_without_the_word(pack, metrics, sd15):
    import nodes
    model, clip = sd15
    applied, word_clip = h.run_node(nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"], model, clip,
                                    concept(pack, model), 1.0).result
    out = lfd(metrics, model, applied, conditioning(word_clip, NO_WORD), samples=3)
    assert value(out) == 0.0 and out.result[1] == 0.0
    # Control: the same models on a prompt that names the concept do differ.
    assert value(lfd(metrics, model, applied, conditioning(word_clip, WITH_WORD))) > 0.0


def test_lora_gives_a_divergence_that_grows_with_strength(metrics, sd15):
    model, clip = sd15
    cond = conditioning(clip, NO_WORD[:1])
    lora = lora_for(model)
    half = value(lfd(metrics, model, with_lora(model, lora, 0.5), cond))
    full = value(lfd(metrics, model, with_lora(model, lora, 1.0), cond))
    assert 0.0 < half < full
    # At strength 0 ComfyUI adds 0 * delta to every weight: the base model, bit for bit.
    assert value(lfd(metrics, model, with_lora(model, lora, 0.0), cond)) == 0.0


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
def test_every_family_one_unet_call_per_prompt_and_timestep(request, metrics, family):
    model, clip = request.getfixturevalue(family)
    cond = conditioning(clip, NO_WORD)
    base_calls, custom_calls = [], []
    base = counting(model, base_calls)
    same = value(lfd(metrics, base, model.clone(), cond))
    assert same == 0.0
    custom = counting(model, custom_calls)
    custom.set_model_attn2_output_patch(lambda n, extra_options: n * 1.01)
    base_calls.clear()
    assert value(lfd(metrics, base, custom, cond, samples=3)) > 0.0
    # 2 prompts x 2 timesteps, all 3 draws in one call, for each model.
    assert [c[0] for c in base_calls] == [c[0] for c in custom_calls] == [3] * 4
    if family == "sdxl":  # SDXL's size/pooled vector y was built by ComfyUI for both models
        assert all("y" in keys for _, keys in base_calls + custom_calls)


def test_fisher_weighting_and_report(metrics, sd15):
    model, clip = sd15
    custom = model.clone()
    custom.set_model_attn2_output_patch(lambda n, extra_options: n * 1.01)
    out = lfd(metrics, model, custom, conditioning(clip, NO_WORD[:1]), weighting="fisher")
    lfd_value, stderr, report = out.result
    assert lfd_value > 0.0 and stderr >= 0.0
    assert "Fisher (score space)" in report and f"{lfd_value:.6g}" in report
    assert out.ui.as_dict() == {"text": (report,)}  # shown on the node


def test_same_seed_same_value_other_seed_other_draws(metrics, sd15):
    model, clip = sd15
    custom = model.clone()
    custom.set_model_attn2_output_patch(lambda n, extra_options: n * 1.01)
    cond = conditioning(clip, NO_WORD[:1])
    first = value(lfd(metrics, model, custom, cond, seed=3))
    assert value(lfd(metrics, model, custom, cond, seed=3)) == first
    assert value(lfd(metrics, model, custom, cond, seed=4)) != first


def test_progress_bar_and_cancel(metrics, sd15):
    import comfy.model_management
    import comfy.utils
    model, clip = sd15
    cond = conditioning(clip, NO_WORD)
    updates = []
    old_hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        lfd(metrics, model, model.clone(), cond)
        # 2 models x 2 prompts x 2 timesteps: the bar moves forward and reaches its total (newer ComfyUI
        # throttles the updates in between, so their number is not what a user sees).
        values = [value for value, total in updates]
        assert {total for _, total in updates} == {8} and values == sorted(set(values)) and values[-1] == 8

        calls = []

        def cancel_after_first(value, total, preview, node_id=None):
            comfy.model_management.interrupt_current_processing(True)
        comfy.utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            lfd(metrics, counting(model, calls), model.clone(), cond)
        assert len(calls) == 1  # stopped right after the first UNet call
    finally:
        comfy.utils.set_progress_bar_global_hook(old_hook)
        comfy.model_management.interrupt_current_processing(False)


def test_bad_inputs_are_clear_errors(metrics, sd15, sdxl):
    model, clip = sd15
    with pytest.raises(ValueError, match="at least one prompt"):
        lfd(metrics, model, model.clone(), [])
    with pytest.raises(ValueError, match="latent spaces"):
        lfd(metrics, model, sdxl[0], conditioning(clip, NO_WORD[:1]))
    with pytest.raises(ValueError, match="weighting"):
        lfd(metrics, model, model.clone(), conditioning(clip, NO_WORD[:1]), weighting="l2")


# ------------------------------------------------------------------ Wasserstein-2

TINY_CLIP_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
                    "image_size": 32, "intermediate_size": 64, "layer_norm_eps": 1e-5,
                    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
                    "num_hidden_layers": 2, "patch_size": 8, "projection_dim": 16}


@pytest.fixture(scope="module")
def clip_vision(comfy_path, tmp_path_factory):
    """comfy.clip_vision.ClipVisionModel built from a tiny config (what Load CLIP Vision returns)."""
    import comfy.clip_vision
    config = tmp_path_factory.mktemp("clip_vision") / "tiny_clip_vision.json"
    config.write_text(json.dumps(TINY_CLIP_VISION))
    with h.executor_mode():
        model = comfy.clip_vision.ClipVisionModel(str(config))
        h.init_weights(model.model, h.SEED + 20)
    return model


def images(n, seed, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, h.IMAGE_SIZE, h.IMAGE_SIZE, 3), generator=g) * scale + offset).clamp(0, 1)


def w2(metrics, custom, base, clip_vision, normalize=True):
    return h.run_node(metrics.InfusionWasserstein, custom, base, clip_vision, normalize)


def test_w2_of_a_set_with_itself_is_zero(metrics, clip_vision):
    base = images(6, 0)
    out = w2(metrics, base, base, clip_vision)
    gaussian, report = out.result
    assert gaussian < 1e-6
    assert "Empirical W2 (optimal assignment): 0\n" in report
    assert out.ui.as_dict() == {"text": (report,)}


def test_w2_grows_for_a_collapsed_or_shifted_set(metrics, clip_vision):
    base = images(8, 1)
    similar = value(w2(metrics, images(8, 2), base, clip_vision))
    collapsed = images(1, 3).repeat(8, 1, 1, 1) + images(8, 4, scale=0.02)
    shifted = images(8, 5, scale=0.5, offset=0.5)  # brighter, lower contrast
    assert value(w2(metrics, collapsed.clamp(0, 1), base, clip_vision)) > similar
    assert value(w2(metrics, shifted, base, clip_vision)) > similar


def test_w2_needs_two_images_per_set(metrics, clip_vision):
    with pytest.raises(ValueError, match="at least 2"):
        w2(metrics, images(1, 6), images(4, 7), clip_vision)
