"""Train Infusion Concept end to end on a real ComfyUI (tiny SD1.5-shaped model): outputs,
files and metadata, bit-identical reruns and resumes, cancel, non-finite loss, and a model
left exactly as it was."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from infusion_dev import comfy_harness as h

SETTINGS = dict(word="dog", output_name="rex", steps=3, learning_rate=0.01, batch_size=2, gradient_accumulation=2,
                resolution=64, seed=5, templates="a photo of a {}\nimage of the {}\n{}", flip=True, save_every=0,
                resume=False, variant="value", precision="fp32", gradient_checkpointing=True, sample_every=0)


def train(pack, model, clip, vae, photos, masks=None, prompt=None, **overrides):
    node = h.train_node(pack, "9", prompt)
    return h.run_node(node, model, clip, vae=vae, photos=photos, masks=masks, **{**SETTINGS, **overrides})


@pytest.fixture
def photos():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 72, 64, 3, generator=g)  # not square: cropped to 64 x 64


@pytest.fixture
def folder(tmp_models_dir):
    return os.path.join(tmp_models_dir, "infusion")


def weights(model):
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_outputs_files_and_metadata(pack, sd15, vae, photos, folder):
    model, clip = sd15
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
              "6": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["4", 0], "lora_name": "x"}},
              "9": {"class_type": "TrainInfusion", "inputs": {"model": ["6", 0]}}}
    out = train(pack, model, clip, vae, photos, prompt=prompt, save_every=2, precision="auto")
    concept, loss, graph, path, samples = out.result
    assert path == os.path.join(folder, "rex.safetensors") and os.path.isfile(path)
    assert sorted(f for f in os.listdir(folder) if f.startswith("rex")) == [
        "rex.resume", "rex.safetensors", "rex_step00002.safetensors"]
    assert len(loss["loss"]) == 3 and graph.shape == (1, 320, 512, 3)
    assert out.ui is not None
    loaded = h.pack_submodule(pack, "infusion.format").load_concept(path)
    assert loaded.word == "dog" and loaded.name == "rex" and len(loaded.values) == 16
    assert all(torch.equal(loaded.values[l], concept.values[l]) for l in concept.values)
    training, provenance = loaded.metadata["training"], loaded.metadata["provenance"]
    assert training["steps_done"] == 3 and training["final_loss"] == loss["loss"][-1]
    assert training["seed"] == 5 and training["learning_rate"] == 0.01 and training["effective_batch"] == 4
    assert training["precision"] == "fp32"  # auto, on the CPU: the precision chosen is what the file records
    assert training["photos"] == 3 and len(training["photos_sha256"]) == 64 and training["status"] == "complete"
    assert training["templates"] == ["a photo of a {}", "image of the {}", "{}"]
    assert training["trained_in"] == "value space, in units of each layer's output gain"
    assert sorted(training["value_scales"]) == sorted(f"value.{l.key}" for l in concept.values)
    assert all(s > 0 for s in training["value_scales"].values())
    assert provenance["base_model"] == "base.safetensors" and provenance["prediction"] == "eps"
    with safe_open(os.path.join(folder, "rex_step00002.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["training"])["steps_done"] == 2


def test_same_inputs_and_seed_give_a_bit_identical_file(pack, sd15, vae, photos, folder):
    model, clip = sd15
    first = read(train(pack, model, clip, vae, photos).result[3])
    assert read(train(pack, model, clip, vae, photos).result[3]) == first
    assert read(train(pack, model, clip, vae, photos, seed=6).result[3]) != first


def test_a_finished_run_resumed_to_more_steps_continues_it(pack, sd15, vae, photos, folder):
    """A run of 2 resumed to 4 carries on from its state (the learning rate's cosine then spans the new total,
    so it is not the bit-identical twin of a run of 4: resuming to the same total is, see the cancel test)."""
    model, clip = sd15
    half = train(pack, model, clip, vae, photos, steps=2, output_name="half").result
    resumed = train(pack, model, clip, vae, photos, steps=4, output_name="half", resume=True).result
    assert resumed[1]["loss"][:2] == half[1]["loss"] and len(resumed[1]["loss"]) == 4
    assert resumed[0].metadata["training"]["steps_done"] == 4
    with pytest.raises(ValueError, match="learning_rate"):
        train(pack, model, clip, vae, photos, steps=6, output_name="half", resume=True, learning_rate=0.02)


@pytest.mark.parametrize("earlier", [None, "value space"])
def test_a_resume_state_from_an_earlier_parametrization_is_refused(pack, sd15, vae, photos, folder, earlier):
    """Earlier versions trained a UNet's vectors in text space (no record), then in absolute value space: their
    resume states hold other numbers."""
    model, clip = sd15
    state_mod = h.pack_submodule(pack, "infusion.training.state")
    train(pack, model, clip, vae, photos, steps=1, output_name="old")
    path = os.path.join(folder, "old.resume")
    state = state_mod.load_state(path)
    state.run.pop("value_scales")
    state.run.pop("trained_in")
    if earlier:
        state.run["trained_in"] = earlier
    state_mod.save_state(state, path)
    with pytest.raises(ValueError, match=f"trained in {earlier or 'text space'}, not in value space, in units of "
                                         "each layer's output gain.*switch resume off"):
        train(pack, model, clip, vae, photos, steps=2, output_name="old", resume=True)


def test_cancel_stops_within_a_step_saves_and_leaves_the_model_untouched(pack, sd15, vae, photos, folder, monkeypatch):
    import comfy.model_management
    import comfy.utils
    model, clip = sd15
    before, options = weights(model), repr(model.model_options)
    seen = []

    def hook(value, total, preview, node_id=None, prompt_id=None):
        seen.append((value, total, preview[0], preview[1].size))
        if value == 2:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(pack, model, clip, vae, photos, steps=5, output_name="stop")
    assert [s[:3] for s in seen] == [(1, 5, "PNG"), (2, 5, "PNG")]
    state = h.pack_submodule(pack, "infusion.training.state").load_state(os.path.join(folder, "stop.resume"))
    assert state.step == 2 and len(state.losses) == 2
    partial = h.pack_submodule(pack, "infusion.format").load_concept(os.path.join(folder, "stop.safetensors"))
    assert partial.metadata["training"]["status"] == "interrupted" and partial.metadata["training"]["steps_done"] == 2
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].is_inference() for k in before)
    assert repr(model.model_options) == options
    unet = model.model.diffusion_model
    assert not any("forward" in m.__dict__ for m in unet.modules())
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    resumed = train(pack, model, clip, vae, photos, steps=5, output_name="stop", resume=True).result
    full = train(pack, model, clip, vae, photos, steps=5, output_name="nonstop").result
    assert resumed[1]["loss"] == full[1]["loss"]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_step(pack, sd15, vae, photos, folder):
    model, clip = sd15
    calls = {"n": 0}

    def poison(n, context, value, extra_options):  # a model that turns NaN in its third step
        if extra_options["block"] == ("input", 1):
            calls["n"] += 1
        return n, context, value * float("nan") if calls["n"] > 2 * 2 else value

    sick = model.clone()
    sick.set_model_attn2_patch(poison)
    error = h.pack_submodule(pack, "infusion.training.loop").NonFiniteLossError
    with pytest.raises(error) as e:
        train(pack, sick, clip, vae, photos, steps=5, output_name="nan", gradient_checkpointing=False)
    message = str(e.value)
    assert "loss became nan at step 3" in message and "(step 2)" in message and "nan.safetensors" in message and "learning rate" in message
    kept = h.pack_submodule(pack, "infusion.format").load_concept(os.path.join(folder, "nan.safetensors"))
    assert kept.metadata["training"]["steps_done"] == 2
    assert all(torch.isfinite(v).all() for v in kept.values.values())


def test_input_model_and_weights_are_unchanged(pack, sd15, vae, photos):
    model, clip = sd15
    before, options = weights(model), repr(model.model_options)
    concept = train(pack, model, clip, vae, photos).result[0]
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].is_inference() for k in before)
    assert all(not p.requires_grad and p.grad is None for p in model.model.parameters())
    assert repr(model.model_options) == options and not any(v.abs().sum() == 0 for v in concept.values.values())


def test_clear_errors_for_bad_inputs(pack, sd15, vae, photos):
    model, clip = sd15
    with pytest.raises(ValueError, match="multiple of 64"):
        train(pack, model, clip, vae, photos, resolution=96)
    with pytest.raises(ValueError, match="whole word"):
        train(pack, model, clip, vae, photos, templates="a photo of {}s")
    with pytest.raises(ValueError, match="has no"):
        train(pack, model, clip, vae, photos, templates="a photo")
    with pytest.raises(ValueError, match="one mask per photo"):
        train(pack, model, clip, vae, photos, masks=torch.ones(2, 72, 64))
    with pytest.raises(ValueError, match="empty"):
        train(pack, model, clip, vae, photos, masks=torch.zeros(3, 72, 64))
    with pytest.raises(ValueError, match="no resume state"):
        train(pack, model, clip, vae, photos, output_name="never", resume=True)
    with pytest.raises(ValueError, match="mask 2 is 64x72 but its photo is 50x60"):
        train(pack, model, clip, vae, [photos[:1], photos[1:2, :60, :50]], masks=[torch.ones(72, 64)] * 2)
    with pytest.raises(ValueError, match="3 texts for 2 photos"):
        train(pack, model, clip, vae, photos[:2], texts=["a {}", "", "a {} again"])
    with pytest.raises(ValueError, match="model came as a list of 2: .*connect one model"):
        train(pack, [model, model], clip, vae, photos)  # a list output (the executor's lists) into one model


def test_latents_train_like_the_photos_they_encode(pack, sd15, vae, photos):
    """A LATENT (as ComfyUI's own trainer takes it) is the photos' VAE encoding: the same concept, bit for bit,
    when the photos need no crop and flips are off (mirrored latents are not mirrored photos' latents)."""
    model, clip = sd15
    square = photos[:, :64]
    from_photos = train(pack, model, clip, vae, square, output_name="from_photos", flip=False).result[0]
    latents = h.vae_encode(vae, square)
    node = h.train_node(pack, "9")
    from_latents = h.run_node(node, model, clip, latents=latents, **{**SETTINGS, "output_name": "from_latents",
                                                                     "flip": False}).result[0]
    assert all(torch.equal(from_photos.values[l], from_latents.values[l]) for l in from_photos.values)
    assert from_latents.metadata["training"]["resolution"] is None


@pytest.mark.parametrize("given, message", [
    (("photos", "latents"), "either as photos .* or as latents, not both"),
    ((), "either as photos .* or as latents, not both and not neither"),
    (("photos",), "photos need the model's VAE"),
])
def test_photos_or_latents_but_not_both_nor_neither(pack, sd15, vae, photos, given, message):
    model, clip = sd15
    inputs = {"photos": photos, "latents": {"samples": torch.zeros(3, 4, 8, 8)}}
    node = h.train_node(pack, "9")
    with pytest.raises(ValueError, match=message):
        h.run_node(node, model, clip, **{k: inputs[k] for k in given}, **SETTINGS)


def test_out_of_memory_pauses_keeps_the_last_step_and_resumes_with_a_smaller_batch(pack, sd15, vae, photos, folder):
    """A real torch.OutOfMemoryError raised from inside the model call, in the 2nd micro-batch of step 3."""
    from comfy.patcher_extension import WrappersMP
    model, clip = sd15
    calls = []

    def apply_model(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 2 + 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return executor(*args, **kwargs)

    starving = model.clone()
    starving.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "starve", apply_model)
    session = h.pack_submodule(pack, "infusion.training.session")
    with pytest.raises(session.OutOfMemoryPause, match="training ran out of memory; the last completed step "
                       "\\(step 2\\) is kept in .*rex.safetensors and its .resume file. .*batch_size 1 with "
                       "gradient_accumulation 4 \\(the same effective batch of 4\\)"):
        train(pack, starving, clip, vae, photos, steps=4)
    with safe_open(os.path.join(folder, "rex.safetensors"), "pt") as f:
        training = json.loads(f.metadata()["training"])
    assert training["status"] == "paused: out of memory" and training["steps_done"] == 2
    concept, loss, _, _, _ = train(pack, model, clip, vae, photos, steps=4, resume=True, batch_size=1,
                                gradient_accumulation=4).result
    assert len(loss["loss"]) == 4 and all(torch.isfinite(v).all() for v in concept.values.values())


# ------------------------------------------------------------------ sample previews

PREVIEWS = dict(sample_every=1, sample_steps=2, sample_prompts="a photo of a {}\na {} on the moon")


def preview_files(name):
    import folder_paths
    folder = os.path.join(folder_paths.get_output_directory(), "infusion", name, "samples")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_previews_never_change_the_concept(pack, sd15, vae, photos, folder):
    model, clip = sd15
    plain = train(pack, model, clip, vae, photos, output_name="plain").result
    shown = train(pack, model, clip, vae, photos, output_name="shown", **PREVIEWS).result
    assert plain[1] == shown[1]  # the same losses, step by step
    assert all(torch.equal(plain[0].values[l], shown[0].values[l]) for l in plain[0].values)
    assert preview_files("shown") == [f"step{s:05d}_{p}.png" for s in range(4) for p in (1, 2)]
    grid = shown[4]
    assert grid.shape == (1, 2 * 64, 4 * 64, 3)  # a row per prompt, a column per step sampled
    assert not torch.equal(grid[:, :64, :64], grid[:, :64, 64:128])  # step 0 is the base model, then the concept
    assert plain[4].shape[0] == 1 and preview_files("plain") == []  # previews off: a note, no files


def test_resume_continues_the_previews_where_they_stopped(pack, sd15, vae, photos):
    model, clip = sd15
    train(pack, model, clip, vae, photos, output_name="cont", steps=2, **PREVIEWS)
    assert len(preview_files("cont")) == 3 * 2
    grid = train(pack, model, clip, vae, photos, output_name="cont", steps=4, resume=True, **PREVIEWS).result[4]
    assert len(preview_files("cont")) == 5 * 2 and grid.shape == (1, 2 * 64, 5 * 64, 3)
    train(pack, model, clip, vae, photos, output_name="cont", steps=1, **PREVIEWS)  # a new run starts afresh
    assert preview_files("cont") == [f"step{s:05d}_{p}.png" for s in range(2) for p in (1, 2)]


def test_previews_at_a_chosen_width_and_height(pack, sd15, vae, photos):
    model, clip = sd15
    grid = train(pack, model, clip, vae, photos, output_name="tall", steps=1, sample_size=64, sample_height=128,
                 **PREVIEWS).result[4]
    assert grid.shape == (1, 2 * 128, 2 * 64, 3)  # a row per prompt of 64 x 128 previews, at steps 0 and 1
    from PIL import Image
    import folder_paths
    first = os.path.join(folder_paths.get_output_directory(), "infusion", "tall", "samples", "step00000_1.png")
    assert Image.open(first).size == (64, 128)
    with pytest.raises(ValueError, match="sample_size and sample_height multiples of 8"):
        train(pack, model, clip, vae, photos, output_name="tall", sample_height=100, **PREVIEWS)


def test_cancel_during_a_preview_keeps_the_last_step(pack, sd15, vae, photos, folder, monkeypatch):
    import comfy.model_management
    import nodes
    model, clip = sd15
    previews = h.pack_submodule(pack, "infusion.training.previews")
    sample = previews.Previewer.sample

    def cancelled_at_step_2(self, step, concept):
        if step == 2:
            nodes.interrupt_processing(True)  # the user presses Cancel while the preview samples
        return sample(self, step, concept)

    monkeypatch.setattr(previews.Previewer, "sample", cancelled_at_step_2)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(pack, model, clip, vae, photos, output_name="stop", steps=4, **PREVIEWS)
    finally:
        nodes.interrupt_processing(False)
    with safe_open(os.path.join(folder, "stop.safetensors"), "pt") as f:
        training = json.loads(f.metadata()["training"])
    assert training["status"] == "interrupted" and training["steps_done"] == 2


def test_preview_inputs_are_checked(pack, sd15, vae, photos):
    model, clip = sd15
    with pytest.raises(ValueError, match="the sample prompt 'a cat on the moon' does not contain the class word 'dog'"):
        train(pack, model, clip, vae, photos, **{**PREVIEWS, "sample_prompts": "a cat on the moon"})
    node = h.train_node(pack, "9")
    with pytest.raises(ValueError, match="sample previews are decoded with the VAE: connect vae, or set sample_every"):
        h.run_node(node, model, clip, latents=h.vae_encode(vae, photos[:, :64]), **{**SETTINGS, **PREVIEWS})


def test_a_second_run_on_a_name_being_trained_is_refused_naming_it(pack, sd15, vae, photos, folder):
    """Two trainings writing one output_name at once (two ComfyUIs on one models folder) would interleave their
    files: the second is refused while the first holds the name, and the name is free again afterwards."""
    from filelock import FileLock
    model, clip = sd15
    session = h.pack_submodule(pack, "infusion.training.session")
    with FileLock(os.path.join(folder, ".busy.lock")):  # what the first run holds while it trains
        with pytest.raises(session.NameInUse, match=f"another training is writing 'busy' in {folder} right now"):
            train(pack, model, clip, vae, photos, steps=1, output_name="busy")
    assert not os.path.exists(os.path.join(folder, "busy.safetensors"))
    train(pack, model, clip, vae, photos, steps=1, output_name="busy")
    assert os.path.isfile(os.path.join(folder, "busy.safetensors"))


@pytest.mark.parametrize("fails, error", [("os.replace", "ENOSPC"), ("tempfile.mkstemp", "EACCES")])
def test_a_full_disk_or_read_only_folder_loses_nothing(pack, sd15, vae, photos, folder, monkeypatch, fails, error):
    """Saves that fail as a full disk (at the rename) or a read-only folder (at the first write) do: training
    goes on past the failed snapshots, the node returns the trained concept (the one a run that could save
    makes) and says where and why it was not saved, and every file saved before is unchanged."""
    import errno
    import importlib
    model, clip = sd15
    train(pack, model, clip, vae, photos, save_every=1)
    before = {n: read(os.path.join(folder, n)) for n in os.listdir(folder)}
    module_name, function = fails.split(".")
    module = importlib.import_module(module_name)
    real = getattr(module, function)

    def refuse(*args, **kwargs):
        where = kwargs.get("dir") or args[-1]
        if os.path.abspath(os.path.dirname(where) if fails == "os.replace" else where) == os.path.abspath(folder):
            code = getattr(errno, error)
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, refuse)
    concept, loss, _, path, _ = train(pack, model, clip, vae, photos, save_every=1, seed=6).result
    monkeypatch.undo()
    assert path.startswith(f"not saved: could not save rex.safetensors in {folder} ({os.strerror(getattr(errno, error))})")
    assert "free some space on that disk or make the folder writable" in path and len(loss["loss"]) == 3
    assert {n: read(os.path.join(folder, n)) for n in os.listdir(folder)} == before  # no temporary file either
    saved = train(pack, model, clip, vae, photos, save_every=1, seed=6).result[0]
    assert all(torch.equal(concept.values[k].float(), saved.values[k].float()) for k in saved.values)


def test_training_does_not_depend_on_what_the_process_ran_before(pack, vae, photos):
    """A LoRA (rank 4 on every attn2 to_k and to_v) sampled and measured by the Latent Fisher divergence node in
    the same process first, which leaves its weights in the model: the concept trained after it, with previews
    and without, is the one trained before it, and the Info node's norms are the same (both read the LoRA's
    to_v where ComfyUI had not loaded the base model again)."""
    import comfy.sd
    model, clip = h.unshared(h.tiny_sd15)
    settings = dict(steps=3, learning_rate=0.1, seed=21, gradient_checkpointing=False)
    before = train(pack, model, clip, vae, photos, output_name="before", **settings).result[0]
    lora, sd, g = {}, model.model.state_dict(), torch.Generator().manual_seed(3)
    for key in [k for k in sd if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]:
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        out_f, in_f = sd[key].shape
        lora[f"{name}.lora_up.weight"] = torch.randn((out_f, 4), generator=g) * 0.1
        lora[f"{name}.lora_down.weight"] = torch.randn((4, in_f), generator=g) * 0.1
    metrics = h.pack_submodule(pack, "nodes.metrics")
    cond = h.encode(clip, "a photo of a cat")
    latent = {"samples": torch.randn((2, 4, h.LATENT_SIZE, h.LATENT_SIZE), generator=torch.Generator().manual_seed(0))}

    def lora_run():  # as the executor runs nodes: in inference mode
        with h.executor_mode():
            for strength in (0.0, 0.5, 1.0):
                with_lora = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)[0]
                h.sample(with_lora, cond, h.encode(clip, ""))
                h.run_node(metrics.InfusionLatentFisherDivergence, model, with_lora, cond, latent, 2, 2, 0,
                           "epsilon")

    norms = h.pack_submodule(pack, "infusion.concept_tools").residual_norms
    in_value_space = norms(before, model)  # Infusion Concept Info with the MODEL reads W_v too
    lora_run()
    assert norms(before, model) == in_value_space
    lora_run()
    shown = train(pack, model, clip, vae, photos, output_name="shown", **settings, **PREVIEWS).result[0]
    lora_run()
    plain = train(pack, model, clip, vae, photos, output_name="plain", **settings).result[0]
    for concept in (shown, plain):
        assert all(torch.equal(concept.values[l], before.values[l]) for l in before.values)
