"""SD1.5-, SD2-v- and SDXL-shaped tiny models each train a few steps through the node (eps,
v-prediction, SDXL's extra conditioning) and the result applies through Apply Infusion to Model."""
import pytest
import torch

from infusion_dev import comfy_harness as h

# Tiny widths (32 channels) match none of ComfyUI's configs, so each is a "custom" model of that layout.
FAMILIES = [("sd15", "custom", "eps"), ("sd2v", "custom", "v"), ("sdxl", "custom", "eps")]
SETTINGS = dict(word="dog", steps=1, learning_rate=0.05, batch_size=2, gradient_accumulation=1, resolution=64,
                seed=0, templates="a photo of a {}", flip=False, save_every=0, resume=False, variant="value",
                precision="fp32", gradient_checkpointing=True, sample_steps=2, sample_prompts="a photo of a {}")


def train(pack, model, clip, vae, name, **overrides):
    node = h.train_node(pack, "1")
    photos = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    return h.run_node(node, model, clip, vae=vae, photos=photos, output_name=name, **{**SETTINGS, **overrides}).result


@pytest.mark.parametrize("fixture, family, prediction", FAMILIES)
def test_trains_and_applies(request, pack, vae, fixture, family, prediction):
    import nodes
    model, clip = request.getfixturevalue(fixture)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    concept, loss, _, _, previews = train(pack, model, clip, vae, f"fam_{fixture}")
    assert concept.family == family and len(loss["loss"]) == 1
    # previews through ComfyUI's sampler and VAE: step 0 (the base model) and step 1, one prompt
    assert previews.shape == (1, 64, 128, 3) and not torch.equal(previews[:, :, :64], previews[:, :, 64:])
    assert concept.metadata["provenance"]["prediction"] == prediction
    # one AdamW step moves exactly the vectors that received a gradient: all of them
    assert all(v.abs().sum() > 0 for v in concept.values.values())
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    applied, word_clip = nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"].execute(model, clip, concept, 1.0).result
    negative = h.encode(word_clip, "")
    with_word = h.sample(applied, h.encode(word_clip, "a photo of a dog"), negative)["samples"]
    base = h.sample(model, h.encode(clip, "a photo of a dog"), h.encode(clip, ""))["samples"]
    assert not torch.equal(with_word, base)
    without = h.sample(applied, h.encode(word_clip, "a photo of a cat"), negative)["samples"]
    assert torch.equal(without, h.sample(model, h.encode(clip, "a photo of a cat"), h.encode(clip, ""))["samples"])


def test_key_value_variant_masks_and_fp16_autocast_train(pack, sd15, vae):
    model, clip = sd15
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 16:48] = 1.0
    node = h.train_node(pack, "1")
    photos = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    concept, loss, _, _, _ = h.run_node(node, model, clip, vae=vae, photos=photos, masks=masks, output_name="kv",
                                     **{**SETTINGS, "variant": "key+value", "precision": "fp16"}).result
    assert concept.variant == "key+value" and all(k.abs().sum() > 0 for k in concept.keys.values())
    assert concept.metadata["training"]["masked"] is True and concept.metadata["training"]["precision"] == "fp16"
