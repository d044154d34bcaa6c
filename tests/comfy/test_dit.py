"""Infusion on joint-attention DiTs (Flux dev and schnell, Chroma, Qwen-Image, Z-Image), on a real ComfyUI:
tiny random-weight models in ComfyUI's own classes with their families' real tokenizers, the exact
promises through ComfyUI's sampler, both variants, another pack's attention override alongside, the
full-size layer tables, training, LoRA and the metrics."""
import os

import pytest
import torch

import comfy_harness as h

FAMILIES = h.dit_families()
WORD_PROMPT = "a photo of a Dog on the beach"
NO_WORD = "a photo of a cat on the beach"
NEGATIVE = "blurry, low quality"


@pytest.fixture(params=FAMILIES)
def dit(request, pack):
    model, clip = h.tiny_dit(request.param)
    return request.param, model.clone(), clip.clone()


def P(pack, name):
    return h.pack_submodule(pack, name)


def node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]


def random_concept(pack, model, word="dog", seed=0, scale=1.0, variant="value"):
    layers, family = P(pack, "infusion.patching").model_layers(model)
    concept = P(pack, "infusion.concept").InfusionConcept.zeros(word, layers, family, variant=variant,
                                                                vector_space="value")
    g = torch.Generator().manual_seed(seed)
    for layer in sorted(concept.values):
        concept.values[layer] = torch.randn(concept.values[layer].shape, generator=g) * scale
    return concept


def apply(model, clip, concept, strength=1.0, **kw):
    return node("ApplyInfusion").execute(model, clip, concept, strength, **kw).result


def sample(model, clip, positive, negative=NEGATIVE, seed=0):
    return h.sample(model, h.encode(clip, positive), h.encode(clip, negative), h.dit_latent(), seed=seed,
                    scheduler="simple")["samples"]


def first_step(model, clip, positive, negative=NEGATIVE):
    """cond and uncond predictions of the first sampler step (batched in one model call, as ComfyUI does)."""
    seen = {}

    def grab(args):
        seen.setdefault("cond", args["cond_denoised"].clone())
        seen.setdefault("uncond", args["uncond_denoised"].clone())
        return args["denoised"]

    m = model.clone()
    m.set_model_sampler_post_cfg_function(grab, disable_cfg1_optimization=True)
    h.sample(m, h.encode(clip, positive), h.encode(clip, negative), h.dit_latent(), steps=1, scheduler="simple")
    return seen["cond"], seen["uncond"]


@pytest.mark.parametrize("variant", ["value", "image-queries"])
def test_the_exact_promises_through_comfyuis_sampler(pack, dit, variant):
    family, model, clip = dit
    concept = random_concept(pack, model, variant=variant)
    applied, word_clip = apply(model, clip, concept)
    base = sample(model, clip, WORD_PROMPT)
    assert not torch.equal(sample(applied, word_clip, WORD_PROMPT), base)  # the word draws the concept
    # A prompt without the word (negative prompt without it too) is the base model's, bit for bit.
    assert torch.equal(sample(applied, word_clip, NO_WORD), sample(model, clip, NO_WORD))
    # Strength 0 and block weights of 0 are the base model's, bit for bit.
    assert torch.equal(sample(apply(model, clip, concept, 0.0)[0], word_clip, WORD_PROMPT), base)
    blocks = ", ".join(f"{b}=0" for b in sorted({layer.block for layer in concept.values}))
    silenced, _ = apply(model, clip, concept, block_weights=blocks)
    assert torch.equal(sample(silenced, word_clip, WORD_PROMPT), base)
    # The negative prompt is left alone unless it says the word (batched with a positive that says it).
    cond, uncond = first_step(applied, word_clip, WORD_PROMPT)
    base_cond, base_uncond = first_step(model, clip, WORD_PROMPT)
    assert torch.equal(uncond, base_uncond) and not torch.equal(cond, base_cond)
    assert not torch.equal(first_step(applied, word_clip, NO_WORD, "a dog")[1], first_step(model, clip, NO_WORD, "a dog")[1])


def test_two_concepts_on_different_words_combine(pack, dit):
    family, model, clip = dit
    dog, beach = random_concept(pack, model, "dog", seed=1), random_concept(pack, model, "beach", seed=2)
    with_dog = apply(model, clip, dog)
    both = apply(*with_dog, beach)
    only_beach = apply(model, clip, beach)
    outputs = [sample(m, c, WORD_PROMPT) for m, c in (with_dog, only_beach, both)]
    assert not torch.equal(outputs[2], outputs[0]) and not torch.equal(outputs[2], outputs[1])
    assert torch.equal(sample(both[0], both[1], NO_WORD.replace("beach", "lake")), sample(model, clip,
                                                                                          "a photo of a cat on the lake"))
    with pytest.raises(ValueError, match="both bound to the word 'dog'"):
        apply(*with_dog, random_concept(pack, model, "dog", seed=3))


def test_another_packs_attention_override_keeps_working_alongside(pack, dit):
    """The override is one slot: one set before the concept is called by it, and the concept's residual
    reaches the values one set on top of it (a pack that composes, as ComfyUI asks) passes on."""
    family, model, clip = dit
    calls = []

    def other(func, *args, **kwargs):
        calls.append(args[2].shape)
        return func(*args, **kwargs)

    before = model.clone()
    before.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = other
    applied, word_clip = apply(before, clip, random_concept(pack, model))
    expected, _ = apply(model, clip, random_concept(pack, model))
    assert torch.equal(sample(applied, word_clip, WORD_PROMPT), sample(expected, word_clip, WORD_PROMPT))
    assert calls  # the other pack's override ran under ours
    assert torch.equal(sample(applied, word_clip, NO_WORD), sample(model, clip, NO_WORD))


def test_image_queries_variant_computes_the_text_rows_from_the_base_values(pack, dit):
    """In the model: the first joint attention's text rows are the base model's under image-queries (to
    rounding: the queries are split), not under value; the image is changed under both."""
    family, model, clip = dit
    first_text_rows = {}

    def record(tag):
        def watch(func, *args, **kwargs):
            out = func(*args, **kwargs)
            options = kwargs["transformer_options"]
            if options.get("block_type") is not None and "infusion_text" in options and tag not in first_text_rows:
                rows = options["infusion_text"][1]
                first_text_rows[tag] = out.narrow(2 if kwargs.get("skip_output_reshape") else 1, 0, rows).clone()
            return out
        return watch

    outputs = {}
    for tag, variant, strength in (("base", "value", 0.0), ("image", "image-queries", 1.0), ("value", "value", 1.0)):
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record(tag)
        m, word_clip = apply(m, clip, random_concept(pack, model, variant=variant), strength)
        outputs[tag] = sample(m, word_clip, WORD_PROMPT)
    assert not torch.equal(outputs["image"], outputs["base"]) and not torch.equal(outputs["value"], outputs["base"])
    torch.testing.assert_close(first_text_rows["image"], first_text_rows["base"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first_text_rows["value"], first_text_rows["base"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads_first", [True, False])
def test_the_override_adds_the_residual_to_the_values_at_the_word_only(pack, heads_first):
    """The attention override itself, on ComfyUI's own attention function: value adds s r at the word's
    text rows for every query; image-queries gives the text queries the base values, bit for bit."""
    import comfy.ldm.modules.attention as attention

    dit = P(pack, "infusion.families.dit")
    residual_mod, tokens, concept_mod = P(pack, "infusion.residual"), P(pack, "infusion.tokens"), P(pack, "infusion.concept")
    layer = concept_mod.LayerId("double", 0)
    heads, width, text, image = 2, 8, 4, 6
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, text + image, width, generator=g) for _ in range(3))
    if not heads_first:
        q, k, v = (t.transpose(1, 2).reshape(2, text + image, heads * width) for t in (q, k, v))
    positions = residual_mod.BatchPositions({"a": tokens.WordPositions(length=text, words={"dog": (1,)}),
                                             "b": tokens.WordPositions(length=text, words={})})
    options = {"block_type": "double", "block_index": 0, "uuids": ["a", "b"], residual_mod.BATCH_KEY: positions,
               dit.TEXT_KEY: (text, text)}
    r = torch.randn(heads * width, generator=g)

    def call(variant, strength=1.0):
        concept = concept_mod.InfusionConcept(word="dog", family="test", values={layer: r}, vector_space="value",
                                              image_queries_only=variant == "image-queries")
        override = dit.JointAttention((dit.DiTResidual(concept, strength=strength),), None)
        return override(attention.optimized_attention, q, k, v, heads, skip_reshape=heads_first,
                        transformer_options=options)

    def reference(values, queries=slice(None), items=slice(None)):
        qs = q[items, :, queries] if heads_first else q[items, queries]
        return attention.optimized_attention(qs, k[items], values[items], heads, skip_reshape=heads_first)

    moved = v.clone()
    if heads_first:
        moved[0, :, 1] += 2.0 * r.view(heads, width)
    else:
        moved[0, 1] += 2.0 * r
    base = reference(v)
    assert torch.equal(call("value", 0.0), base)
    torch.testing.assert_close(call("value", 2.0), reference(moved))
    image_only = call("image-queries", 2.0)
    assert torch.equal(image_only[1], base[1])  # the prompt without the word: the base model's call
    # The prompt with it: its text queries against the base values, its image queries against the residual.
    assert torch.equal(image_only[:1, :text], reference(v, slice(0, text), slice(0, 1)))
    assert torch.equal(image_only[:1, text:], reference(moved, slice(text, None), slice(0, 1)))


def test_a_unet_concept_or_another_dits_concept_is_refused(pack, dit, sd15):
    family, model, clip = dit
    unet_layers, unet_family = P(pack, "infusion.patching").model_layers(sd15[0])
    unet_concept = P(pack, "infusion.concept").InfusionConcept.zeros("dog", unet_layers, unet_family)
    with pytest.raises(ValueError, match="made for a custom model \\(16 cross-attention layers, text width 768\\) but "
                                         "this model is .*attention layers, value width"):
        apply(model, clip, unet_concept)
    other = next(f for f in FAMILIES if f != family and h.tiny_dit(f)[0].model.diffusion_model.__class__
                 is not model.model.diffusion_model.__class__)
    with pytest.raises(ValueError, match="Train the concept on this model"):
        apply(model, clip, random_concept(pack, h.tiny_dit(other)[0]))
