"""Models loaded with fp8 weights, as many FLUX.1 and Qwen-Image users load them (Load Diffusion Model's
weight_dtype): ComfyUI keeps the weights in fp8 and casts each to the compute dtype as it is used (on the
CPU, fp32). Apply keeps its exact promises against the same fp8-loaded base, training runs through those
casting ops and moves every vector, and the file is the same kind as from a model loaded at full precision."""
import pytest
import torch

from infusion_dev import comfy_harness as h
from test_dit import NO_WORD, WORD_PROMPT, apply, photo_latents, random_concept, sample

FP8 = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
TRAIN = dict(word="dog", steps=2, learning_rate=0.05, batch_size=2, gradient_accumulation=1, seed=0,
             templates="a photo of a {}", flip=False, save_every=0, resume=False, variant="value",
             precision="fp32", gradient_checkpointing=True, sample_every=0)


@pytest.fixture(scope="module")
def flux(pack):
    return h.tiny_dit("flux")


def fp8_flux(weight_dtype):
    import os

    from infusion_dev.tiny_dits import flux_through_loader
    with h.executor_mode():
        return flux_through_loader(os.path.join(h.models_dir(), "diffusion_models"), weight_dtype)


def weight_dtypes(model):
    return {p.dtype for p in model.model.diffusion_model.parameters() if p.ndim == 2}


@pytest.mark.parametrize("weight_dtype", sorted(FP8))
def test_apply_keeps_its_exact_promises_on_fp8_weights(pack, flux, weight_dtype):
    _, clip = flux
    model = fp8_flux(weight_dtype)
    assert weight_dtypes(model) == {getattr(torch, FP8[weight_dtype])}
    concept = random_concept(pack, model)
    applied, word_clip = apply(model, clip, concept)
    assert torch.equal(sample(applied, word_clip, NO_WORD), sample(model, clip, NO_WORD))
    assert not torch.equal(sample(applied, word_clip, WORD_PROMPT), sample(model, clip, WORD_PROMPT))
    muted, muted_clip = apply(model, clip, concept, strength=0.0)
    assert torch.equal(sample(muted, muted_clip, WORD_PROMPT), sample(model, clip, WORD_PROMPT))


def train(pack, model, clip, name):
    return h.run_node(h.train_node(pack), model, clip, latents=photo_latents(), output_name=name, **TRAIN).result


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_training_on_fp8_weights_moves_every_vector_and_saves_the_same_kind_of_file(pack, flux, weight_dtype,
                                                                                   tmp_models_dir):
    model, clip = flux
    fp8 = fp8_flux(weight_dtype)
    before = {k: v.clone() for k, v in fp8.model.state_dict().items()}
    concept, loss, _, path, _ = train(pack, fp8, clip, f"fp8_{weight_dtype}")
    full, _, _, _, _ = train(pack, model, clip, "fp8_reference")
    assert all(v == v for v in loss["loss"]) and all(v.abs().sum() > 0 for v in concept.values.values())
    assert all(torch.equal(before[k], v) for k, v in fp8.model.state_dict().items())  # the model is untouched
    loaded = h.pack_submodule(pack, "infusion.format").load_concept(path)
    assert sorted(loaded.values) == sorted(full.values) and loaded.vector_space == full.vector_space
    assert all(loaded.values[k].dtype == full.values[k].dtype for k in full.values)
    # fp8 rounds the weights, not the method: both learn the same directions from the same photos and seed
    cosine = torch.nn.functional.cosine_similarity(torch.cat([concept.values[k].flatten() for k in sorted(full.values)]),
                                                   torch.cat([full.values[k].flatten() for k in sorted(full.values)]),
                                                   dim=0)
    assert cosine > 0.9, cosine


def test_an_fp8_scaled_file_applies_exactly_and_trains(pack, flux, tmp_models_dir):
    """An fp8 "scaled" FLUX.1 file (each weight in fp8 with its own scale beside it, as the fp8 files people
    download are made) through Load Diffusion Model: ComfyUI finds the scales and multiplies them back in as each
    weight is used. The exact promises hold against that same model, and training moves every vector and learns
    what the full-precision model learns."""
    import os

    from infusion_dev.tiny_dits import scaled_fp8_flux
    model, clip = flux
    with h.executor_mode():
        scaled = scaled_fp8_flux(os.path.join(h.models_dir(), "diffusion_models"))
    # ComfyUI applied the scales: the fp8 model draws what the full-precision one draws, to fp8's rounding
    full_sample, scaled_sample = sample(model, clip, NO_WORD), sample(scaled, clip, NO_WORD)
    assert not torch.equal(full_sample, scaled_sample)
    assert torch.nn.functional.cosine_similarity(full_sample.flatten(), scaled_sample.flatten(), dim=0) > 0.99
    concept = random_concept(pack, scaled)
    applied, word_clip = apply(scaled, clip, concept)
    assert torch.equal(sample(applied, word_clip, NO_WORD), scaled_sample)
    assert not torch.equal(sample(applied, word_clip, WORD_PROMPT), sample(scaled, clip, WORD_PROMPT))
    trained = train(pack, scaled, clip, "fp8_scaled")[0]
    full = train(pack, model, clip, "fp8_scaled_reference")[0]
    assert all(v.abs().sum() > 0 for v in trained.values.values())
    cosine = torch.nn.functional.cosine_similarity(torch.cat([trained.values[k].flatten() for k in sorted(full.values)]),
                                                   torch.cat([full.values[k].flatten() for k in sorted(full.values)]),
                                                   dim=0)
    assert cosine > 0.9, cosine


def test_an_sd15_checkpoint_loaded_in_fp8_trains_and_applies_exactly(pack, vae, tmp_models_dir):
    """ComfyUI's checkpoint loading with an fp8 weight dtype (the model_options Load Diffusion Model passes)."""
    import comfy.sd
    with h.executor_mode():
        model, clip = comfy.sd.load_checkpoint_guess_config(
            h.tiny_sd15_checkpoint(), model_options={"dtype": torch.float8_e4m3fn})[:2]
    assert weight_dtypes(model) == {torch.float8_e4m3fn}
    photos = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    concept = h.run_node(h.train_node(pack), model, clip, vae=vae, photos=photos, output_name="fp8_sd15",
                         **{**TRAIN, "resolution": 64}).result[0]
    assert all(v.abs().sum() > 0 for v in concept.values.values())
    applied, word_clip = apply(model, clip, concept)
    assert torch.equal(h.sample(applied, h.encode(word_clip, NO_WORD), h.encode(word_clip, ""))["samples"],
                       h.sample(model, h.encode(clip, NO_WORD), h.encode(clip, ""))["samples"])
    assert not torch.equal(h.sample(applied, h.encode(word_clip, WORD_PROMPT), h.encode(word_clip, ""))["samples"],
                           h.sample(model, h.encode(clip, WORD_PROMPT), h.encode(clip, ""))["samples"])
