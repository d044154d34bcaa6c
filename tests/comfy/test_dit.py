"""Infusion on the DiTs (Flux's family, Qwen-Image, MageFlow, Z-Image, Krea 2, the Hunyuan models, AuraFlow, SD3 /
SD3.5, Ideogram 4, HiDream, CogVideoX; LTX-Video, Kandinsky 5 and Wan 2.1 / 2.2 through their cross-attention), on a
real ComfyUI: tiny random-weight models in ComfyUI's own classes with their families' real tokenizers, the exact
promises through ComfyUI's sampler, both variants, another pack's attention override alongside, the full-size layer
tables, training, LoRA and the metrics."""
import os

import pytest
import torch

from infusion_dev import comfy_harness as h
from infusion_dev import comfy_versions, family_models

FAMILIES = h.dit_families()
CROSS_ATTENTION = ("ltxv", "kandinsky5", "wan21", "wan22")  # the prompt read by a cross-attention: every query is an image query
VALUE_ONLY = (*CROSS_ATTENTION, "hidream")  # and HiDream, whose text follows the image: no image-queries variant
WORD_PROMPT = "a photo of a Dog on the beach"
NO_WORD = "a photo of a cat on the beach"
NEGATIVE = "blurry, low quality"


@pytest.fixture(params=FAMILIES)
def dit(request, pack):
    model, clip = h.tiny_dit(request.param)
    return request.param, model.clone(), clip.clone()


@pytest.fixture
def metrics_mod(pack):
    return h.pack_submodule(pack, "nodes.metrics")


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
    return h.sample(model, h.encode(clip, positive), h.encode(clip, negative), h.dit_latent(model), seed=seed,
                    scheduler="simple")["samples"]


def first_step(model, clip, positive, negative=NEGATIVE):
    return h.first_step(model, h.encode(clip, positive), h.encode(clip, negative), h.dit_latent(model),
                        scheduler="simple")


@pytest.mark.parametrize("variant", ["value", "image-queries"])
def test_the_exact_promises_through_comfyuis_sampler(pack, dit, variant):
    family, model, clip = dit
    concept = random_concept(pack, model, variant=variant)
    if family in VALUE_ONLY and variant == "image-queries":
        with pytest.raises(ValueError, match="the image-queries variant does not apply to .* models .*theirs: value. "
                                             "Train the concept with one of those"):
            apply(model, clip, concept)
        return
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
    with_word_negative = first_step(applied, word_clip, NO_WORD, "a dog")[1]
    assert not torch.equal(with_word_negative, first_step(model, clip, NO_WORD, "a dog")[1])


def test_two_concepts_on_different_words_combine(pack, dit):
    family, model, clip = dit
    dog, beach = random_concept(pack, model, "dog", seed=1), random_concept(pack, model, "beach", seed=2)
    with_dog = apply(model, clip, dog)
    both = apply(*with_dog, beach)
    only_beach = apply(model, clip, beach)
    outputs = [sample(m, c, WORD_PROMPT) for m, c in (with_dog, only_beach, both)]
    assert not torch.equal(outputs[2], outputs[0]) and not torch.equal(outputs[2], outputs[1])
    # A prompt that says neither word is the base model's, and one that says one word that concept's alone.
    lake = "a photo of a cat on the lake"
    assert torch.equal(sample(both[0], both[1], lake), sample(model, clip, lake))
    dog_at_lake = "a photo of a dog on the lake"
    assert torch.equal(sample(both[0], both[1], dog_at_lake), sample(with_dog[0], with_dog[1], dog_at_lake))
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


def attention_nodes():
    """Nodes that set the attention override without calling the one before: a stand-in for the sage / flash
    attention nodes of other packs (as ComfyUI's set_model_optimized_attention sets it), and ComfyUI's own
    ModelAttentionBackend where this ComfyUI has it (0.33)."""
    import comfy_extras.nodes_model_advanced as advanced

    def third_party(model, calls):
        patched = model.clone()

        def attention(func, *args, **kwargs):
            calls.append(args[2].shape)
            return func(*args, **kwargs)
        patched.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = attention
        return patched

    found = {"another pack's attention node": third_party}
    if hasattr(advanced, "ModelAttentionBackend"):
        found["ComfyUI's ModelAttentionBackend"] = (
            lambda model, calls: advanced.ModelAttentionBackend().patch(model, "pytorch attention")[0])
    return found


@pytest.mark.parametrize("order", ["before Apply", "after Apply"])
def test_a_node_that_replaces_the_attention_override_keeps_the_concept_in_either_order(pack, dit, order):
    """Placed after Apply, such a node used to drop the concept silently (the base model's pictures). In either
    order the concept now acts through that node's attention, and the exact promises hold with it."""
    family, model, clip = dit
    concept = random_concept(pack, model)
    for name, attention_node in attention_nodes().items():
        calls = []
        backend = attention_node(model, calls)
        if order == "before Apply":
            applied, word_clip = apply(backend, clip, concept)
        else:
            applied, word_clip = apply(model, clip, concept)
            applied = attention_node(applied, calls)
        reference, _ = apply(attention_node(model, []), clip, concept)  # the concept over that attention
        drawn = sample(applied, word_clip, WORD_PROMPT)
        assert torch.equal(drawn, sample(reference, word_clip, WORD_PROMPT)), name
        assert not torch.equal(drawn, sample(backend, clip, WORD_PROMPT)), name  # not the base model's picture
        assert torch.equal(sample(applied, word_clip, NO_WORD), sample(backend, clip, NO_WORD)), name
        if order == "before Apply":
            silenced = apply(backend, clip, concept, 0.0)[0]
        else:
            silenced = attention_node(apply(model, clip, concept, 0.0)[0], [])
        assert torch.equal(sample(silenced, word_clip, WORD_PROMPT), sample(backend, clip, WORD_PROMPT)), name
        assert name == "ComfyUI's ModelAttentionBackend" or calls, name  # the node's attention served


def test_a_prompt_the_concept_cannot_see_is_named(pack, caplog):
    """Prompts encoded with the CLIP that went into Apply carry no word marks: the run says so, once (FLUX.1; the
    check reads no family-specific part but where the residuals sit, which every DiT shares)."""
    model, clip = h.tiny_dit("flux")
    m, c = apply(model, clip, random_concept(pack, model))
    with caplog.at_level("WARNING"):
        sample(m, c, WORD_PROMPT)
        told = [r.getMessage() for r in caplog.records if "Infusion" in r.getMessage()]
        sample(m, clip, WORD_PROMPT)
    told_now = [r.getMessage() for r in caplog.records if "Infusion" in r.getMessage()]
    assert told == [] and len(told_now) == 1 and "cannot see its word" in told_now[0]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in VALUE_ONLY])
def test_image_queries_variant_computes_the_text_rows_from_the_base_values(pack, family):
    """In the model: the first joint attention's text rows are the base model's under image-queries (to
    rounding: the queries are split), not under value; the image is changed under both. (Cross-attention families
    have no text rows among the queries, and refuse the variant: test_the_exact_promises_through_comfyuis_sampler.)"""
    model, clip = h.tiny_dit(family)
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


@pytest.mark.parametrize("family", [f for f in ("hunyuan_image", "hunyuan_video15") if f in FAMILIES]
                         or ["hunyuan_image"])
def test_the_text_layout_is_the_models_own(pack, family):
    """The Hunyuan models join ByT5 rows of quoted text to the prompt's (after them, or before them where the model
    tags each kind of row: HunyuanVideo 1.5), and HunyuanVideo 1.5 SigLIP rows of an image before everything: the
    adapter counts as many text rows as the model's joint attention has before the image's (recorded at its first
    block), and puts the prompt's first row after those the model puts before it. 0.3.64's HunyuanImage (the
    image first, no labels) is refused, saying to update ComfyUI."""
    dit, families = P(pack, "infusion.families.dit"), P(pack, "infusion.families")
    if family not in FAMILIES:
        from infusion_dev import tiny_dits
        with pytest.raises(ValueError, match="HunyuanImage21 model, which Infusion cannot reach here: this "
                                             "ComfyUI's Hunyuan models put the image rows before .*update ComfyUI"):
            families.adapter_for(tiny_dits.hunyuan_image_model())
        return
    model = h.tiny_dit(family)[0]
    adapter, dm = families.adapter_for(model), model.get_model_object("diffusion_model")
    latent = h.dit_latent(model)["samples"]
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(latent.shape, generator=g), torch.randn(1, 7, 64, generator=g)
    glyphs, image = torch.randn(1, 3, 1472, generator=g), torch.randn(1, 5, 1152, generator=g)
    video = family == "hunyuan_video15"
    for inputs in ({}, {"txt_byt5": glyphs}, *([{"txt_byt5": glyphs, "clip_fea": image}] if video else [])):
        lengths = []

        def record(func, q, k, v, *args, **kwargs):
            if kwargs.get("transformer_options", {}).get("block_type") == "double":
                lengths.append(k.shape[2] if kwargs.get("skip_reshape") else k.shape[1])
            return func(q, k, v, *args, **kwargs)

        if video:  # its image-to-video channels, empty as ComfyUI fills them for text to video
            x = torch.cat([x[:, :32], torch.zeros(1, 33, *x.shape[2:])], dim=1)
        dm(x, torch.tensor([0.5]), context, transformer_options={dit.OVERRIDE_KEY: record}, **inputs)
        first, rows = adapter.text_layout(dm, 7, inputs)
        assert lengths and lengths[0] == rows + latent[0, 0].numel()
        assert rows == 7 + 3 * ("txt_byt5" in inputs) + 5 * ("clip_fea" in inputs)
        assert first == (rows - 7 if video else 0)


def word_rows(pack, clip):
    """The rows of "dog" in WORD_PROMPT's context."""
    tokens = clip.tokenize(WORD_PROMPT)
    return list(P(pack, "infusion.word_positions").word_positions(clip.tokenizer, tokens, ["dog"]).words["dog"])


def rows_moved_by(pack, change, concept, block):
    """The (batch, row) pairs where `change` (values [batch, rows, heads x width], with the concept less without
    it) is not 0, each found equal to the concept's first vector of `block`."""
    changed = change.abs().sum(-1).nonzero().tolist()
    r = concept.values[P(pack, "infusion.concept").LayerId(block, 0)]
    for b, j in changed:
        torch.testing.assert_close(change[b, j], r.to(change))
    return changed


@pytest.mark.parametrize("family", [f for f in CROSS_ATTENTION if f in FAMILIES])
def test_a_cross_attention_concept_adds_its_vector_to_the_texts_values_at_the_word_alone(pack, family):
    """LTX-Video and Kandinsky 5: the calls labelled "cross" are exactly the text cross-attentions (keys of the
    prompt's rows), one a block; in the first block the self-attention's values are the base model's and the
    cross-attention's differ by r_0 at the word's rows of the prompt that says it, and nowhere else. Another
    pack's object patch on the cross-attention's class (a subclass) still runs, under the label."""
    model, clip = h.tiny_dit(family)
    concept = random_concept(pack, model)
    adapter = P(pack, "infusion.families").adapter_for(model)
    blocks = len(adapter.blocks(model.get_model_object("diffusion_model")))
    first_block_key = f"diffusion_model.{adapter.blocks_name}.0.{adapter.attention_name}.__class__"
    other_pack = []

    def run(strength):
        calls = []

        def record(func, q, k, v, *args, **kwargs):
            options, heads_first = kwargs["transformer_options"], kwargs.get("skip_reshape", False)
            rows = (lambda t: t.transpose(1, 2).flatten(2)) if heads_first else (lambda t: t)
            calls.append((options.get("block_type"), options.get("block_index"), rows(k).shape[1], rows(v).clone()))
            return func(q, k, v, *args, **kwargs)

        base = model.clone()
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
        original = base.get_model_object(first_block_key)

        class OtherPacks(original):
            def forward(self, *args, **kwargs):
                other_pack.append(kwargs["transformer_options"].get("block_type"))
                return super().forward(*args, **kwargs)
        base.add_object_patch(first_block_key, OtherPacks)
        applied, word_clip = apply(base, clip, concept, strength)
        first_step(applied, word_clip, WORD_PROMPT)
        return calls

    base, moved = run(0.0), run(1.0)
    context = h.encode(clip, WORD_PROMPT)[0][0].shape[1]
    negative = h.encode(clip, NEGATIVE)[0][0].shape[1]  # one model call for both, or one each (unequal lengths)
    cross = [c for c in moved if c[0] == "cross"]
    calls = 1 if negative == context else 2
    assert [c[1] for c in cross] == list(range(blocks)) * calls
    assert sorted(c[2] for c in cross) == sorted([context] * blocks + [negative] * blocks * (calls - 1))
    assert other_pack and set(other_pack) == {"cross"}  # the other pack's patch ran, under the label
    cross_0 = next(i for i, c in enumerate(moved) if c[0] == "cross" and c[2] == context)
    self_0 = cross_0 - 1  # the block's self-attention, just before
    assert moved[self_0][0] != "cross" and torch.equal(moved[self_0][3], base[self_0][3])
    changed = rows_moved_by(pack, moved[cross_0][3] - base[cross_0][3], concept, "cross")
    assert len({b for b, _ in changed}) == 1 and [j for _, j in changed] == word_rows(pack, clip)


@pytest.mark.skipif("wan21" not in FAMILIES, reason="no Wan in this ComfyUI")
def test_wan_image_to_video_leaves_the_images_values_alone(pack):
    """Wan 2.1 image-to-video: each cross-attention also attends to the CLIP image's 257 rows, through keys and values
    of their own, in a call of its own under the same label; that call's values stay the base model's bit for bit,
    and the prompt's move at the word's rows alone."""
    from types import SimpleNamespace

    from infusion_dev import tiny_dits
    with h.executor_mode():
        model = tiny_dits.wan21_i2v_model()
    _, clip = h.tiny_dit("wan21")
    concept = random_concept(pack, model)
    image = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1280,
                                                                  generator=torch.Generator().manual_seed(4)))

    def with_image(conditioning):
        return [[c, {**extra, "clip_vision_output": image}] for c, extra in conditioning]

    def run(strength):
        calls = []

        def record(func, q, k, v, *args, **kwargs):
            if kwargs["transformer_options"].get("block_type") == "cross":
                calls.append((k.shape[1], v.clone()))
            return func(q, k, v, *args, **kwargs)

        base = model.clone()
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
        applied, word_clip = apply(base, clip, concept, strength)
        h.first_step(applied, with_image(h.encode(word_clip, WORD_PROMPT)), with_image(h.encode(word_clip, NEGATIVE)),
                     h.dit_latent(applied), scheduler="simple")
        return calls

    base, moved = run(0.0), run(1.0)
    image_calls = [i for i, (keys, _) in enumerate(moved) if keys == 257]
    text_calls = [i for i, (keys, _) in enumerate(moved) if keys == h.encode(clip, WORD_PROMPT)[0][0].shape[1]]
    assert len(image_calls) == len(text_calls) == 2 and len(moved) == 4  # one of each a block
    assert all(torch.equal(moved[i][1], base[i][1]) for i in image_calls)
    changed = rows_moved_by(pack, moved[text_calls[0]][1] - base[text_calls[0]][1], concept, "cross")
    assert len({b for b, _ in changed}) == 1 and [j for _, j in changed] == word_rows(pack, clip)


def test_sd35_mediums_attention_over_the_image_alone_is_left_alone(pack):
    """SD3.5 Medium's first blocks also attend over the image alone, a second call under the joint call's label (the
    tiny SD3's first block): that call's values stay the base model's bit for bit, and the joint call's move by r_0
    at the word's rows alone."""
    model, clip = h.tiny_dit("sd3")
    concept = random_concept(pack, model)

    def run(strength):
        calls = []

        def record(func, q, k, v, *args, **kwargs):
            if kwargs["transformer_options"].get("block_index") == 0:
                calls.append((k.shape[1], v.clone()))
            return func(q, k, v, *args, **kwargs)

        base = model.clone()
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
        applied, word_clip = apply(base, clip, concept, strength)
        # At 256 px the image's rows outnumber the prompt's, as at every size SD3.5 Medium draws.
        h.first_step(applied, h.encode(word_clip, WORD_PROMPT), h.encode(word_clip, NEGATIVE), latent,
                     scheduler="simple")
        return calls

    latent = h.dit_latent(model, pixels=256)
    base, moved = run(0.0), run(1.0)
    text, image = h.encode(clip, WORD_PROMPT)[0][0].shape[1], latent["samples"][0, 0].numel() // 4
    assert image > text
    assert [keys for keys, _ in moved] == [text + image, image]
    assert torch.equal(moved[1][1], base[1][1])
    changed = rows_moved_by(pack, (moved[0][1] - base[0][1]).flatten(2), concept, "double")
    assert len({b for b, _ in changed}) == 1 and [j for _, j in changed] == word_rows(pack, clip)


def test_sd3s_word_stands_in_its_clip_rows_and_in_its_t5_rows(pack):
    """SD3's context is CLIP-L's and CLIP-G's rows side by side, then T5-XXL's, each part there only when its encoder
    is loaded (SD3 runs without T5, or on T5 alone): the word is marked in each part, and the rows counted are the
    rows the encoder hands the model in each configuration."""
    prompt = P(pack, "infusion.word_positions")
    _, clip = h.tiny_dit("sd3")
    encoder = clip.cond_stage_model
    tokens = clip.tokenize("A Dog, and another dog.")
    clip_rows, t5_rows = len(tokens["g"][0]), len(tokens["t5xxl"][0])
    t5_ids = [t[0] for t in tokens["t5xxl"][0]]
    t5_dogs = [j for j, piece in enumerate(clip.tokenizer.t5xxl.tokenizer.convert_ids_to_tokens(t5_ids))
               if piece.lower() == "\u2581dog"]
    assert len(t5_dogs) == 2
    parts = {"both": ((), [2, 6, *(clip_rows + j for j in t5_dogs)], clip_rows + t5_rows),
             "CLIP": (("t5xxl",), [2, 6], clip_rows), "T5": (("clip_l", "clip_g"), t5_dogs, t5_rows)}
    for name, (unloaded, rows, length) in parts.items():
        held = {n: getattr(encoder, n) for n in unloaded}
        try:
            for n in unloaded:
                setattr(encoder, n, None)  # as ComfyUI's SD3 CLIP holds an encoder it was not given
            positions = prompt.word_positions(clip.tokenizer, tokens, ["dog"], encoder)
            context = clip.encode_from_tokens_scheduled(tokens)[0][0]
        finally:
            for n, module in held.items():
                setattr(encoder, n, module)
        assert list(positions.words["dog"]) == rows and positions.length == length == context.shape[1], name


@pytest.mark.skipif("hidream" not in FAMILIES, reason="no HiDream tokenizer to test with in this ComfyUI")
def test_hidreams_word_stands_in_its_t5_rows_and_both_llama_parts_after_the_image(pack):
    """HiDream's joint sequence is the image's rows, then T5's 128, then Llama's last layer's, then each block's own
    Llama layer's: the word is marked in T5's pieces and in Llama's (twice), the rows counted are those the text
    encoder hands the model, and the concept moves the first block's values at exactly those rows after the
    image's."""
    prompt = P(pack, "infusion.word_positions")
    model, clip = h.tiny_dit("hidream")
    tokens = clip.tokenize("A Dog, and another dog.")
    llama_ids = [t[0] for t in tokens["llama"][0]]
    llama_text = [clip.tokenizer.llama.tokenizer.decode([i]).strip() for i in llama_ids]
    t5_ids = [t[0] for t in tokens["t5xxl"][0]]
    t5_text = [clip.tokenizer.t5xxl.tokenizer.decode([i]).strip() for i in t5_ids]
    positions = prompt.word_positions(clip.tokenizer, tokens, ["dog"], clip.cond_stage_model)
    t5_rows, llama_rows = len(t5_ids), len(llama_ids)
    marked = positions.words["dog"]
    assert [t5_text[j] for j in marked if j < t5_rows] == ["Dog", "dog"]
    assert [llama_text[j - t5_rows] for j in marked if t5_rows <= j < t5_rows + llama_rows] == ["Dog", "dog"]
    assert [j - llama_rows for j in marked if j >= t5_rows + llama_rows] == [j for j in marked if j >= t5_rows][:2]
    assert prompt.word_positions(clip.tokenizer, clip.tokenize("dogs and a hotdog"), ["dog"]).words == {}
    conditioning = clip.encode_from_tokens_scheduled(tokens)[0]
    assert t5_rows == conditioning[0].shape[1] == 128 and llama_rows == conditioning[1]["conditioning_llama3"].shape[2]
    assert positions.length == t5_rows + 2 * llama_rows

    concept = random_concept(pack, model)

    def first_values(strength):
        values = []

        def record(func, q, k, v, *args, **kwargs):
            if not values:
                values.append(v.clone())
            return func(q, k, v, *args, **kwargs)

        base = model.clone()
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
        applied, word_clip = apply(base, clip, concept, strength)
        first_step(applied, word_clip, "A Dog, and another dog.")
        return values[0]

    image = h.dit_latent(model)["samples"][0, 0].numel() // 4
    changed = rows_moved_by(pack, first_values(1.0) - first_values(0.0), concept, "double")
    assert len({b for b, _ in changed}) == 1 and [j - image for _, j in changed] == list(marked)
    # Conditioning (Concat) joins T5 rows but not Llama rows: the word's Llama rows are then unknown, and it says so.
    applied, word_clip = apply(model, clip, concept)
    joined = node("ConditioningConcat")().concat(h.encode(word_clip, WORD_PROMPT), h.encode(word_clip, NO_WORD))[0]
    with pytest.raises(ValueError, match=r"Conditioning \(Concat\) joins prompts' T5 rows but not their Llama rows"):
        h.sample(applied, joined, h.encode(word_clip, NEGATIVE), h.dit_latent(applied), scheduler="simple")


@pytest.mark.skipif("wan21" not in FAMILIES, reason="no Wan in this ComfyUI")
def test_a_wan_concept_holds_in_every_frame_and_trains_from_a_clip(pack, tmp_models_dir):
    """A clip of 9 frames (3 latent frames): a prompt without the word and strength 0 are the base model's in every
    frame, bit for bit; the word changes every frame; the concept's change of a layer's output is linear in the
    strength. Training reads short clips as it reads photos (one-frame clips)."""
    model, clip = h.tiny_dit("wan21")
    concept = random_concept(pack, model)
    clip_latent = {"samples": torch.zeros(1, 16, 3, 8, 8)}

    def frames(m, c, prompt):
        return h.sample(m, h.encode(c, prompt), h.encode(c, NEGATIVE), clip_latent, scheduler="simple")["samples"]

    applied, word_clip = apply(model, clip, concept)
    base, with_word = frames(model, clip, WORD_PROMPT), frames(applied, word_clip, WORD_PROMPT)
    assert all(not torch.equal(with_word[:, :, f], base[:, :, f]) for f in range(3))
    assert torch.equal(frames(applied, word_clip, NO_WORD), frames(model, clip, NO_WORD))
    assert torch.equal(frames(apply(model, clip, concept, 0.0)[0], word_clip, WORD_PROMPT), base)

    def first_layer(strength):
        """The first block's cross-attention output (its input is the base model's at any strength)."""
        outputs = []

        def record(func, *args, **kwargs):
            out = func(*args, **kwargs)
            if kwargs["transformer_options"].get("block_type") == "cross" and not outputs:
                outputs.append(out)
            return out

        recorded = model.clone()
        recorded.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
        h.first_step(apply(recorded, clip, concept, strength)[0], h.encode(word_clip, WORD_PROMPT),
                     h.encode(word_clip, NEGATIVE), clip_latent, scheduler="simple")
        return outputs[0]

    # The attention is a weighted sum of the values: s * r_l there moves the layer's output linearly in s.
    out = {s: first_layer(s) for s in (0.0, 0.5, 1.0)}
    assert not torch.equal(out[1.0], out[0.0])
    torch.testing.assert_close(out[1.0] - out[0.0], 2 * (out[0.5] - out[0.0]), rtol=1e-4, atol=1e-6)
    clips = {"samples": torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(5))}
    trained = h.run_node(h.train_node(pack), model.clone(), clip, latents=clips, output_name="wan_clip",
                         **TRAIN).result[0]
    assert all(v.abs().sum() > 0 for v in trained.values.values())


@pytest.mark.skipif("wan21" not in FAMILIES, reason="no Wan in this ComfyUI")
def test_photos_train_a_video_model_each_as_a_one_frame_clip(pack):
    """A video VAE (Wan's, Qwen-Image's) reads a batch of images as one clip's frames: the photos of a bucket are
    encoded each as a clip of one frame, as VAE Encode encodes one photo."""
    from infusion_dev import tiny_dits
    model, _ = h.tiny_dit("wan21")
    g = torch.Generator().manual_seed(6)
    photos = [torch.rand(64, 64, 3, generator=g) for _ in range(3)]
    with h.executor_mode():
        vae = tiny_dits.wan_vae()
        latents = P(pack, "infusion.training.encoding").encode_photos(vae, model, photos, None, [(64, 64)] * 3,
                                                                       False).buckets[0].latents
        alone = model.model.process_latent_in(vae.encode(photos[1][None]).float())
    assert tuple(latents.shape) == (3, 16, 1, 8, 8)
    assert torch.equal(latents[1:2], alone)


@pytest.mark.skipif("wan21" not in FAMILIES, reason="no Wan in this ComfyUI")
def test_a_video_models_previews_are_clips_of_the_frames_asked_for(pack, tmp_models_dir):
    """sample_frames 5 on Wan: each preview samples a 2-frame latent (Wan: 4 frames a latent frame, and the first),
    and shows the 5 frames its VAE decodes side by side."""
    class FramesVAE:
        """A video VAE's decode ([1, frames, H, W, 3]), each frame one flat grey: frame k of 4 at k / 4."""

        def __init__(self):
            self.latents = []

        def decode(self, latent):
            self.latents.append(tuple(latent.shape))
            frames, height, width = (latent.shape[2] - 1) * 4 + 1, latent.shape[3] * 8, latent.shape[4] * 8
            return torch.linspace(0, 1, frames).view(1, frames, 1, 1, 1).expand(1, frames, height, width, 3).clone()

    model, clip = h.tiny_dit("wan21")
    vae = FramesVAE()
    grid = train(pack, model.clone(), clip, "wan_previews", "wan21", vae=vae, steps=1, sample_every=1,
                 sample_steps=1, sample_size=64, sample_frames=5, sample_prompts="a {}")[4]
    assert set(vae.latents) == {(1, 16, 2, 8, 8)}
    assert tuple(grid.shape) == (1, 64, 2 * 5 * 64, 3)  # one prompt; the base model and step 1, 5 frames each
    tile = grid[0, :, : 5 * 64]
    means = [float(tile[:, k * 64:(k + 1) * 64].mean()) for k in range(5)]
    assert means == pytest.approx([k / 4 for k in range(5)], abs=1 / 255)


@pytest.mark.parametrize("family", [f for f in (*CROSS_ATTENTION, "sd3", "ideogram4", "hidream", "cogvideox")
                                    if f in FAMILIES])
def test_a_model_comfyui_copies_under_the_same_patches_runs_its_own_cross_attentions(pack, family):
    """ComfyUI builds a new model under a patcher's patches (0.33's non-dynamic delegate reloads it, Train LoRA
    deep-copies it; both through clone's model_override): the concept's labels (on the cross-attentions' classes,
    SD3's joint blocks', Ideogram 4's, HiDream's and CogVideoX's blocks') then act on the new model's own modules,
    so it draws what the concept applied to that model draws (a label holding the module it was made from would run
    the old one)."""
    import inspect

    from infusion_dev import tiny_dits

    model, clip = h.tiny_dit(family)
    concept = random_concept(pack, model)
    applied, word_clip = apply(model, clip, concept)
    other = getattr(tiny_dits, f"{family}_model")(seed=7)  # the same layout, other weights
    if "model_override" in inspect.signature(applied.clone).parameters:
        reloaded = applied.clone(model_override=other.get_clone_model_override())
    else:  # 0.3.64 makes no such copy; its clone with the model replaced stands for one
        reloaded = applied.clone()
        reloaded.model = other.model
    assert reloaded.model is other.model
    expected = sample(apply(other, clip, concept)[0], word_clip, WORD_PROMPT)
    assert torch.equal(sample(reloaded, word_clip, WORD_PROMPT), expected)
    assert not torch.equal(expected, sample(other, word_clip, WORD_PROMPT))


def test_auraflows_concept_acts_at_the_words_rows_after_its_registers(pack):
    """AuraFlow's joint sequence starts with 8 learnt register rows, then the prompt's: in its first double block the
    concept changes the values at the word's rows shifted by 8, by r_0, and nowhere else (recorded by an override
    that runs under the concept's)."""
    model, clip = h.tiny_dit("aura_flow")
    concept = random_concept(pack, model)
    registers = int(model.get_model_object("diffusion_model").register_tokens.shape[1])

    def first_double_values(strength):
        seen = []

        def record(func, q, k, v, *args, **kwargs):
            if kwargs["transformer_options"].get("block_type") == "double" and not seen:
                seen.append(v.transpose(1, 2).flatten(2).clone())  # [batch, rows, heads x width]
            return func(q, k, v, *args, **kwargs)

        base = model.clone()
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
        applied, word_clip = apply(base, clip, concept, strength)
        first_step(applied, word_clip, WORD_PROMPT)
        return seen[0]

    changed = rows_moved_by(pack, first_double_values(1.0) - first_double_values(0.0), concept, "double")
    assert registers == 8 and [j for _, j in changed] == [registers + j for j in word_rows(pack, clip)]


@pytest.mark.parametrize("first", [0, 2])
@pytest.mark.parametrize("heads_first", [True, False])
def test_the_override_adds_the_residual_to_the_values_at_the_word_only(pack, heads_first, first):
    """The attention override itself, on ComfyUI's own attention function: value adds s r at the word's
    text rows for every query; image-queries gives the text queries the base values, bit for bit. The prompt's
    rows may follow `first` other text rows (the Hunyuan models')."""
    import comfy.ldm.modules.attention as attention

    dit = P(pack, "infusion.families.dit")
    residual_mod, tokens = P(pack, "infusion.residual"), P(pack, "infusion.tokens")
    concept_mod = P(pack, "infusion.concept")
    layer = concept_mod.LayerId("double", 0)
    heads, width, prompt, image = 2, 8, 4, 6
    text = first + prompt
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, text + image, width, generator=g) for _ in range(3))
    if not heads_first:
        q, k, v = (t.transpose(1, 2).reshape(2, text + image, heads * width) for t in (q, k, v))
    positions = residual_mod.BatchPositions({"a": tokens.WordPositions(length=prompt, words={"dog": (1,)}),
                                             "b": tokens.WordPositions(length=prompt, words={})})
    options = {"block_type": "double", "block_index": 0, "uuids": ["a", "b"], residual_mod.BATCH_KEY: positions,
               dit.TEXT_KEY: (prompt, text, first, None)}
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
        moved[0, :, first + 1] += 2.0 * r.view(heads, width)
    else:
        moved[0, first + 1] += 2.0 * r
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
    layers = P(pack, "infusion.patching").model_layers
    other = next(f for f in FAMILIES if layers(h.tiny_dit(f)[0])[0] != layers(model)[0])
    with pytest.raises(ValueError, match="Train the concept on this model"):
        apply(model, clip, random_concept(pack, h.tiny_dit(other)[0]))


def test_the_previews_latent_is_the_empty_latent_comfyuis_own_nodes_give_the_model(pack, dit):
    """Training's previews sample from an empty latent of the model's own size and frame axis (FLUX.2's and Wan 2.2's
    latents are 1/16 of the picture, LTX-Video's 1/32 with frames, Chroma Radiance's the pixels): the one Empty Latent Image
    gives through KSampler, or the family's own empty latent node (0.3.64's formats carry no downscale ratio)."""
    import comfy.sample
    import nodes

    family, model, _ = dit
    shape = P(pack, "infusion.compat").latent_shape(model.get_model_object("latent_format"), 64, 96)
    if family == "ltxv":
        from comfy_extras.nodes_lt import EmptyLTXVLatentVideo
        expected = EmptyLTXVLatentVideo.execute(96, 64, 1).result[0]["samples"]
    elif family == "wan21":
        from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo  # what Wan 2.1's own workflows start from
        node = EmptyHunyuanLatentVideo
        expected = (node.execute(96, 64, 1) if hasattr(node, "execute") else node().generate(96, 64, 1))
        expected = (expected.result if hasattr(expected, "result") else expected)[0]["samples"]
    elif family == "wan22":
        from comfy_extras.nodes_wan import Wan22ImageToVideoLatent
        expected = Wan22ImageToVideoLatent.execute(None, 96, 64, 1, 1).result[0]["samples"]
    elif family == "chroma_radiance":
        from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage
        expected = EmptyChromaRadianceLatentImage.execute(width=96, height=64).result[0]["samples"]
    else:
        empty = nodes.EmptyLatentImage().generate(96, 64, 1)[0]
        ratio = (empty["downscale_ratio_spacial"],) if "downscale_ratio_spacial" in empty else ()
        expected = comfy.sample.fix_empty_latent_channels(model, empty["samples"], *ratio)
    assert shape == tuple(expected.shape)


# ------------------------------------------------------------------ training

TRAIN = dict(word="dog", steps=2, learning_rate=0.05, batch_size=2, gradient_accumulation=1, seed=0,
             templates="a photo of a {}\n{}", flip=True, save_every=0, resume=False, variant="value",
             precision="fp32", gradient_checkpointing=True, sample_every=0)
PREDICTIONS = {**{family: "flow velocity" for family in FAMILIES}, "cogvideox": "v"}  # CogVideoX: v, DDPM's


def photo_latents(n=2, seed=3, family="flux"):
    """Latents as the family's VAE gives them: Qwen-Image's and Krea 2's (a video VAE) have one frame; Chroma Radiance's
    are pixels."""
    shape = {"qwen_image": (n, 16, 1, 8, 8), "krea2": (n, 16, 1, 8, 8), "flux2": (n, 128, 4, 4),
             "mage_flow": (n, 128, 4, 4), "hunyuan_image": (n, 64, 4, 4), "hunyuan_video15": (n, 32, 1, 4, 4),
             "ltxv": (n, 128, 1, 4, 4), "kandinsky5": (n, 16, 1, 8, 8), "chroma_radiance": (n, 3, 64, 64),
             "aura_flow": (n, 4, 8, 8), "wan21": (n, 16, 1, 8, 8), "wan22": (n, 48, 1, 4, 4),
             "ideogram4": (n, 128, 4, 4), "cogvideox": (n, 16, 1, 8, 8)}.get(
        family, (n, 16, 8, 8))
    return {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(seed))}


def train(pack, model, clip, name, family, **overrides):
    return h.run_node(h.train_node(pack), model, clip, latents=photo_latents(family=family), output_name=name,
                      **{**TRAIN, **overrides}).result


def test_trains_through_the_node_saves_value_space_and_applies(pack, dit, tmp_models_dir):
    family, model, clip = dit
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    concept, loss, _, path, _ = train(pack, model, clip, f"dit_{family}", family)
    assert concept.vector_space == "value" and len(loss["loss"]) == 2 and all(v == v for v in loss["loss"])
    assert all(v.abs().sum() > 0 for v in concept.values.values())
    assert concept.metadata["provenance"]["prediction"] == PREDICTIONS[family]
    if family == "flux":  # FLUX.1-dev is guidance-distilled: trained at guidance 1 (see families/flux.py)
        conditioning = P(pack, "infusion.families").adapter_for(model).training_conditioning(
            model.get_model_object("diffusion_model"))
        assert conditioning == {"guidance": 1.0}
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loaded = P(pack, "infusion.format").load_concept(path)
    assert loaded.vector_space == "value"
    assert all(torch.equal(loaded.values[layer], concept.values[layer]) for layer in concept.values)
    applied, word_clip = apply(model, clip, loaded)
    assert not torch.equal(sample(applied, word_clip, WORD_PROMPT), sample(model, clip, WORD_PROMPT))
    assert torch.equal(sample(applied, word_clip, NO_WORD), sample(model, clip, NO_WORD))


@pytest.mark.skipif("wan21" not in FAMILIES, reason="no Wan in this ComfyUI")
def test_wan_image_to_video_trains_from_photos_alone(pack, tmp_models_dir):
    """Wan 2.1 image-to-video trains from photos with no start image (docs/dit.md says what that means): every vector
    moves, and the file applies to that model, a prompt without the word staying its own bit for bit."""
    from infusion_dev import tiny_dits
    with h.executor_mode():
        model = tiny_dits.wan21_i2v_model()
    _, clip = h.tiny_dit("wan21")
    concept, loss, _, path, _ = train(pack, model, clip, "dit_wan21_i2v", "wan21")
    assert concept.family == "WAN21_I2V" and all(v == v for v in loss["loss"])
    assert all(v.abs().sum() > 0 for v in concept.values.values())
    applied, word_clip = apply(model, clip, P(pack, "infusion.format").load_concept(path))
    assert not torch.equal(sample(applied, word_clip, WORD_PROMPT), sample(model, clip, WORD_PROMPT))
    assert torch.equal(sample(applied, word_clip, NO_WORD), sample(model, clip, NO_WORD))


def test_training_draws_noise_levels_from_the_models_own_schedule(pack, dit, tmp_models_dir):
    """Every training call sees a timestep of the model's schedule, spread over it (the toy world found
    integer steps read in Flux's and Z-Image's time unit: sigma 0, a NaN loss, or beyond pure noise)."""
    family, model, clip = dit
    sampling = model.get_model_object("model_sampling")
    seen = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda _, args: seen.append(args[1].detach().clone()))
    try:
        train(pack, model, clip, f"schedule_{family}", family, steps=16, gradient_checkpointing=False)
    finally:
        hook.remove()
    seen = torch.cat(seen).float()
    ends = sorted(float(sampling.timestep(s)) for s in (sampling.sigma_min, sampling.sigma_max))
    assert ends[0] - 1e-6 <= seen.min() and seen.max() <= ends[1] + 1e-6, (seen, ends)
    assert seen.unique().numel() >= 8  # 32 draws spread over the schedule, not one noise level


@pytest.mark.parametrize("family", [f for f in ("flux", "qwen_image", "ltxv", "sd3") if f in FAMILIES])
def test_gradient_checkpointing_and_the_image_queries_variant_train(pack, family):
    """Flux's blocks (and LTX-Video's) add to their inputs in place, and a recomputation must see each block's own
    label (SD3's, which ComfyUI would recompute under a block patch); with and without recomputation the concept is
    the same."""
    model, clip = h.tiny_dit(family)
    runs = {on: train(pack, model.clone(), clip, f"ckpt_{family}_{on}", family, gradient_checkpointing=on)[0]
            for on in (False, True)}
    assert all(torch.equal(runs[False].values[l], runs[True].values[l]) for l in runs[True].values)
    if family in CROSS_ATTENTION:
        with pytest.raises(ValueError, match="the image-queries variant does not apply to LTX-Video models"):
            train(pack, model.clone(), clip, f"image_{family}", family, variant="image-queries")
        return
    image, _, _, _, _ = train(pack, model.clone(), clip, f"image_{family}", family, variant="image-queries")
    assert image.variant == "image-queries" and all(v.abs().sum() > 0 for v in image.values.values())
    assert any(not torch.equal(image.values[l], runs[True].values[l]) for l in image.values)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_backpropagation_through_flux_blocks_matches_finite_differences(pack, checkpointing):
    """The gradient reaching a residual through blocks that change their inputs in place (Flux's), in
    float64: autograd against central differences along a random direction."""
    import comfy.model_patcher

    dit = P(pack, "infusion.families.dit")
    residual_mod, tokens = P(pack, "infusion.residual"), P(pack, "infusion.tokens")
    adapter = P(pack, "infusion.families").adapter_for(h.tiny_dit("flux")[0])
    from infusion_dev import tiny_dits, tiny_models
    model = tiny_models.init_weights(tiny_dits._flux(True), 5).double()
    dm = model.diffusion_model
    patcher = comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    concept = random_concept(pack, h.tiny_dit("flux")[0], scale=0.0)
    residual = dit.DiTResidual(concept, trainable=True).double()
    adapter.install(patcher, residual)
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 16, 4, 4, generator=g).double(), torch.randn(1, 5, 64, generator=g).double()
    pooled = torch.randn(1, 768, generator=g).double()
    options = {**patcher.model_options["transformer_options"], "uuids": ["a"], dit.TEXT_KEY: (5, 5, 0, None),
               residual_mod.BATCH_KEY: residual_mod.BatchPositions({"a": tokens.WordPositions(5, {"dog": (1, 2)})})}

    def loss():
        out = dm(x, torch.tensor([0.6]).double(), context, pooled, guidance=torch.tensor([1.0]).double(),
                 transformer_options=dict(options))
        return out.square().mean()

    with P(pack, "infusion.compat").training_mode(), adapter.training_blocks(dm, checkpointing, list(residual.values)):
        loss().backward()
    grads = torch.cat([p.grad for p in residual.values])
    direction = torch.randn(grads.shape, generator=g, dtype=torch.float64)
    eps = 1e-3  # ComfyUI computes Flux's rotary embedding in float32: smaller steps drown in its rounding
    with torch.no_grad(), P(pack, "infusion.compat").training_mode():
        def shifted(step):
            offset = 0
            for p in residual.values:
                p.add_(step * direction[offset:offset + p.numel()])
                offset += p.numel()
        shifted(eps)
        up = loss()
        shifted(-2 * eps)
        down = loss()
        shifted(eps)
    # rtol 1e-4: a wrong backward was 2.5e-3 off
    torch.testing.assert_close(grads @ direction, (up - down) / (2 * eps), rtol=1e-4, atol=1e-12)


def random_lora(model, rank=2, seed=4):
    """A LoRA in ComfyUI's format on the first double block's projections (image and text)."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name in ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_mlp.0"):
        weight = model.model.diffusion_model.get_submodule(name).weight
        lora[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=g) * 0.1
        lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=g) * 0.1
    return lora


def test_a_lora_and_the_metrics_on_the_same_flux(pack, metrics_mod):
    """A concept applied on top of a LoRA (ComfyUI's LoRA loading) leaves prompts without the word exactly
    the LoRA model's; the Latent Fisher divergence of an applied concept on such prompts is exactly 0, a
    LoRA's is not (flow-matching models are compared in noise space)."""
    model, clip = h.tiny_dit("flux")
    with_lora = comfy_versions.apply_lora(model, random_lora(model), 1.0)
    assert not torch.equal(sample(with_lora, clip, NO_WORD), sample(model, clip, NO_WORD))
    applied, word_clip = apply(with_lora, clip, random_concept(pack, model))
    assert torch.equal(sample(applied, word_clip, NO_WORD), sample(with_lora, clip, NO_WORD))
    assert not torch.equal(sample(applied, word_clip, WORD_PROMPT), sample(with_lora, clip, WORD_PROMPT))

    cond = [entry for p in (NO_WORD, "a red house") for entry in h.encode(word_clip, p)]
    reference = photo_latents(2, seed=9)

    def lfd(custom):
        return h.run_node(metrics_mod.InfusionLatentFisherDivergence, model, custom, cond, reference, 2, 2, 0,
                          "epsilon").result[0]
    assert lfd(apply(model, clip, random_concept(pack, model))[0]) == 0.0
    assert lfd(with_lora) > 0.0


def test_the_latent_fisher_divergence_of_a_concept_is_exactly_zero_without_its_word(pack, dit, metrics_mod):
    """The metric node on every family (flow-matching models compared in noise space)."""
    family, model, clip = dit
    applied, word_clip = apply(model, clip, random_concept(pack, model))
    reference = photo_latents(2, seed=9, family=family)

    def lfd(prompts):
        cond = [entry for p in prompts for entry in h.encode(word_clip, p)]
        return h.run_node(metrics_mod.InfusionLatentFisherDivergence, model, applied, cond, reference, 2, 2, 0,
                          "epsilon").result[0]
    assert lfd([NO_WORD, "a red house"]) == 0.0
    assert lfd([WORD_PROMPT]) > 0.0


# ------------------------------------------------------------------ full-size models, files, refusals

def full_size(name):
    """A full-size model of a family on the meta device (no weight allocated), configured as ComfyUI's
    detection configures it for the released checkpoints."""
    import comfy.model_patcher
    import comfy.supported_models

    if name in family_models.DIT_CONFIGS:
        return family_models.family_model(name)

    from infusion_dev import tiny_dits as tiny
    flux = {**tiny.flux_config(), "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "num_heads": 24,
            "depth": 19, "depth_single_blocks": 38}
    configs = {
        "Flux": (comfy.supported_models.Flux, flux),
        "QwenImage": (comfy.supported_models.QwenImage, {"image_model": "qwen_image", "in_channels": 64}),
    }
    config, unet_config = configs[name]
    model = config(unet_config).get_model({}, device=torch.device("meta"))
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


FULL_SIZE = {"Flux": (57, 3072, "double.18", "single.37"), "QwenImage": (60, 3072, "double.59", None),
             "ZImage": (30, 3840, "double.29", None), "LTXV": (28, 2048, "cross.27", None),
             "Kandinsky5": (32, 1792, "cross.31", None), "Kandinsky5Image": (50, 2560, "cross.49", None),
             "WAN21_T2V": (40, 5120, "cross.39", None), "WAN21_I2V": (40, 5120, "cross.39", None),
             "WAN22_T2V": (30, 3072, "cross.29", None), "SD3": (24, 1536, "double.23", None),
             "Ideogram4": (34, 4608, "single.33", None), "CogVideoX_T2V": (42, 3072, "double.41", None)}
NEWER = {"ZImage": "z_image", "Kandinsky5": "kandinsky5", "Kandinsky5Image": "kandinsky5",
         "Ideogram4": "ideogram4", "CogVideoX_T2V": "cogvideox"}  # not on 0.3.64


@pytest.mark.parametrize("name", [n for n in FULL_SIZE if NEWER.get(n, "flux") in FAMILIES])
def test_full_size_layer_tables_and_file_sizes(pack, name, tmp_path):
    count, width, last_double, last_single = FULL_SIZE[name]
    model = full_size(name)
    layers, family = P(pack, "infusion.patching").model_layers(model)
    assert family == name and len(layers) == count and set(layers.values()) == {(width, width)}
    keys = {layer.key for layer in layers}
    assert last_double in keys and (last_single is None or last_single in keys)
    concept = P(pack, "infusion.concept").InfusionConcept.zeros("dog", layers, family, vector_space="value")
    path = P(pack, "infusion.format").save_concept(concept, str(tmp_path / "c.safetensors"))
    # fp16: two bytes a number, and a header of a few KB (FLUX.1: 57 x 3072 numbers, 342 KiB of them)
    assert count * width * 2 < os.path.getsize(path) < count * width * 2 + 8192


# ------------------------------------------------------------------ the word in T5 and Qwen tokens

@pytest.mark.parametrize("family", [f for f in ("flux", "qwen_image", "z_image", "krea2", "mage_flow",
                                                 "hunyuan_image", "hunyuan_video15", "ltxv", "kandinsky5",
                                                 "aura_flow", "wan21", "ideogram4") if f in FAMILIES])
def test_the_word_is_marked_in_every_piece_and_occurrence_after_the_template(pack, family):
    _, clip = h.tiny_dit(family)
    prompt = P(pack, "infusion.word_positions")
    tokenizer = clip.tokenizer

    def marked(text, word):
        """The marked tokens, decoded together, and how many there are."""
        tokens = clip.tokenize(text)
        key = prompt.context_key(tokens)
        ids = [t[0] for chunk in tokens[key] for t in chunk]
        positions = prompt.word_positions(tokenizer, tokens, [word])
        dropped = len(ids) - positions.length
        rows = positions.words.get(word, ())
        sdt = getattr(tokenizer, key, None) or getattr(tokenizer, f"clip_{key}")  # LTX-Video's: clip_t5xxl
        # 0.3.64's SentencePiece wrapper (AuraFlow's) has no decode; its processor does
        decode = getattr(sdt.tokenizer, "decode", None) or sdt.tokenizer.tokenizer.decode
        return " ".join(decode([ids[j + dropped]]) for j in rows).split(), len(rows)

    assert marked("A Dog, and another dog.", "dog")[0] == ["Dog", "dog"]
    assert marked("dogs and a hotdog", "dog") == ([], 0)
    pieces, count = marked("an axolotl swims", "axolotl")
    assert "".join(pieces).lower() == "axolotl" and (family not in ("flux", "ltxv") or count > 1)  # T5: several pieces
    assert "".join(marked("my teddy  bear sleeps", "teddy bear")[0]) == "teddybear"
    long_prompt = "a photo of a dog " + "in a green field with flowers and trees " * 40 + "and one more dog"
    assert marked(long_prompt, "dog")[0] == ["dog", "dog"]
    # The rows counted are the rows the family's text encoder gives the model (its template dropped).
    tokens = clip.tokenize("a photo of a dog")
    context = clip.encode_from_tokens_scheduled(tokens)[0][0]
    assert context.shape[1] == prompt.word_positions(tokenizer, tokens, ["dog"]).length


@pytest.mark.parametrize("family", [f for f in ("flux", "qwen_image") if f in FAMILIES])
def test_combined_and_concatenated_conditioning_keep_the_marks(pack, family):
    """ConditioningCombine batches both prompts; ConditioningConcat appends the other prompt's rows after
    conditioning_to, whose marks stay valid."""
    model, clip = h.tiny_dit(family)
    applied, word_clip = apply(model, clip, random_concept(pack, model))
    with h.executor_mode():
        concat = node("ConditioningConcat")().concat(h.encode(word_clip, WORD_PROMPT), h.encode(word_clip, "sunny"))[0]
        base_concat = node("ConditioningConcat")().concat(h.encode(clip, WORD_PROMPT), h.encode(clip, "sunny"))[0]
        combine = node("ConditioningCombine")().combine
        combined = combine(h.encode(word_clip, NO_WORD), h.encode(word_clip, "a red car"))[0]
        base_combined = combine(h.encode(clip, NO_WORD), h.encode(clip, "a red car"))[0]
    negative = h.encode(word_clip, NEGATIVE)
    run = lambda m, positive: h.sample(m, positive, negative, h.dit_latent(model), scheduler="simple")["samples"]  # noqa: E731
    assert not torch.equal(run(applied, concat), run(model, base_concat))
    assert torch.equal(run(applied, combined), run(model, base_combined))


def test_the_lumina_transformer_is_reached_where_comfyui_labels_its_layers(pack):
    """Z-Image's transformer (ComfyUI's Lumina 2 model; Lumina 2 itself is refused by name for its Gemma-2 words,
    test_family_table.py) is reached where ComfyUI labels its layers (0.33), and said to be unreachable where it
    does not (0.3.64 neither labels them nor offers block patches)."""
    model = family_models.family_model("Lumina2")
    adapter, compat = P(pack, "infusion.families.lumina").LuminaAdapter(), P(pack, "infusion.compat")
    diffusion_model = model.get_model_object("diffusion_model")
    if compat.labels_blocks(diffusion_model):
        assert adapter.unreachable(diffusion_model) is None
        layers = adapter.layers(diffusion_model)
        assert len(layers) == 26 and set(layers.values()) == {(8 * 96, 8 * 96)}
    else:
        assert "this ComfyUI's Lumina 2 does not label its layers" in adapter.unreachable(diffusion_model)


def test_the_concept_tools_read_a_dit_concept(pack):
    model, clip = h.tiny_dit("flux")
    concept = random_concept(pack, model)
    tools = P(pack, "infusion.concept_tools")
    norms = tools.residual_norms(concept, model)
    assert norms == tools.residual_norms(concept)  # value space already: the norm is where it acts
    text = tools.report(concept, norms, value_space=True)
    assert "4 attention layers, value width 128" in text and "|r|, value space" in text
    assert "double 0: " in text and "  single 0: " in text and "  1: " in text
    weights = tools.layer_weights("double=0, single.1=0.5", sorted(concept.values))
    assert [weights[layer] for layer in sorted(concept.values)] == [0.0, 0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match=r"neither a block \(double, single\)"):
        tools.layer_weights("input=0", sorted(concept.values))


@pytest.mark.parametrize("family", [f for f in ("flux", "qwen_image") if f in FAMILIES])
def test_masks_and_resume_work_on_dits_as_on_unets(pack, family, tmp_models_dir, monkeypatch):
    """Masked training (Qwen-Image's latents have a frame axis, the masks follow it); a run of two steps
    cancelled after one and resumed equals two steps in one run, bit for bit."""
    import comfy.model_management
    import comfy.utils
    model, clip = h.tiny_dit(family)
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 16:48] = 1.0
    settings = dict(TRAIN, masks=masks)
    whole = train(pack, model, clip, f"whole_{family}", family, **settings)[0]
    assert whole.metadata["training"]["masked"] is True
    def cancel_after_one(value, total, preview=None, node_id=None, prompt_id=None):
        if value == 1:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", cancel_after_one)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(pack, model, clip, f"resumed_{family}", family, **settings)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    resumed = train(pack, model, clip, f"resumed_{family}", family, **{**settings, "resume": True})[0]
    assert resumed.metadata["training"]["steps_done"] == 2
    assert all(torch.equal(whole.values[layer], resumed.values[layer]) for layer in whole.values)
