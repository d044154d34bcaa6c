"""Training does not depend on how a checkpoint splits its scale between the value projection and the
projection that reads the attention output (value_space.py).

Each attention layer l that the concept reaches is rescaled by a factor a_l drawn in [0.1, 10]: its value
projection times a_l, the projection of its output divided by a_l. The base model computes what it computed
(to float rounding), its values at the word are a_l times larger, and a concept trained on it must draw what
the concept trained on the original draws. The control trains with every scale forced to 1 (the pack's
earlier, absolute step): there the same rescaling changes the concept."""
import pytest
import torch

from infusion_dev import comfy_harness as h

WORD, PROMPT = "dog", "a photo of a dog"
TRAIN = dict(word=WORD, steps=4, learning_rate=0.3, batch_size=2, gradient_accumulation=1, seed=0,
             templates="a photo of a {}\n{}", flip=False, save_every=0, resume=False, variant="value",
             precision="fp32", gradient_checkpointing=False, sample_every=0)
KINDS = ["sd15", "sdxl", "flux", "qwen_image"]


def model_of(kind):
    if kind in ("sd15", "sdxl"):
        return getattr(h, f"tiny_{kind}")()
    return h.tiny_dit(kind)


def latents(model, seed=3):
    channels = model.get_model_object("latent_format").latent_channels
    shape = (2, channels, 1, 8, 8) if model.model.__class__.__name__ == "QwenImage" else (2, channels, 8, 8)
    return {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(seed))}


def trained(pack, model, clip, name):
    """(the concept trained on `model` through the node, samples of the prompt with its word)"""
    import nodes
    concept = h.run_node(h.train_node(pack), model, clip, latents=latents(model), output_name=name, **TRAIN).result[0]
    applied, word_clip = nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"].execute(model, clip, concept, 1.0).result
    return concept, sample(applied, word_clip, model)


def sample(model, clip, shape_of):
    latent = {"samples": torch.zeros(latents(shape_of)["samples"][:1].shape)}
    return h.sample(model, h.encode(clip, PROMPT), h.encode(clip, ""), latent, steps=3, scheduler="simple")["samples"]


def mismatch(concept, on_rescaled, factors, value_space: bool) -> float:
    """The largest relative difference, over layers, between the two concepts' vectors (a value-space vector of
    the rescaled model divided by its layer's factor first)."""
    worst = 0.0
    for layer, v in concept.values.items():
        w = on_rescaled.values[layer] / (factors[layer.key] if value_space else 1.0)
        worst = max(worst, float((w - v).norm() / v.norm()))
    return worst


@pytest.mark.parametrize("kind", KINDS)
def test_a_concept_does_not_depend_on_each_layers_value_scale(pack, kind, monkeypatch):
    model, clip = model_of(kind)
    model = model.clone()

    def factors():  # the same factors on every call, layer by layer in [0.1, 10]: above 3 and below 1/3 in turn
        g, count = torch.Generator().manual_seed(11), iter(range(10 ** 6))
        return lambda: float(10 ** ((-1) ** next(count) * (0.5 + 0.5 * torch.rand((), generator=g))))

    def both(name):
        """(concept, samples) trained on the model as it is, the same on the model rescaled, and the factors"""
        original = trained(pack, model, clip, name)
        with h.rescaled_values(model, factors()) as drawn:
            return original, trained(pack, model, clip, f"{name}_rescaled"), drawn

    base = sample(model, clip, model)
    with h.rescaled_values(model, factors()) as drawn:
        assert min(drawn.values()) < 0.3 and max(drawn.values()) > 3, drawn
        torch.testing.assert_close(sample(model, clip, model), base, rtol=1e-4, atol=1e-4)  # alone: no change

    (concept, drawn_concept), (on_rescaled, drawn_rescaled), factor = both(f"scale_{kind}")
    value_space = concept.vector_space == "value"
    # The same concept, up to float rounding (and the file's fp16): vectors, and the pictures they draw
    assert mismatch(concept, on_rescaled, factor, value_space) < 0.01
    effect, gap = float((drawn_concept - base).abs().max()), float((drawn_rescaled - drawn_concept).abs().max())
    assert gap <= 0.01 * effect + 1e-5 * float(base.abs().max()), (gap, effect)
    if not value_space:  # the tiny UNets' pictures show the concept plainly (the tiny DiTs' hardly)
        assert effect > 0.1, effect

    # The control: with every scale 1 (an absolute step, as before), the rescaling changes the concept.
    monkeypatch.setattr(h.pack_submodule(pack, "infusion.value_space"), "scale_of", lambda projection: 1.0)
    (absolute, drawn_absolute), (absolute_rescaled, drawn_absolute_rescaled), _ = both(f"abs_{kind}")
    assert mismatch(absolute, absolute_rescaled, factor, value_space) > 0.3
    if not value_space:
        assert float((drawn_absolute_rescaled - drawn_absolute).abs().max()) > 0.3 * effect
