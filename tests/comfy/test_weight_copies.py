"""Training holds one copy of the model's weights. Inside ComfyUI's executor the loaded weights are inference
tensors, which autograd cannot save for backward; training used to clone every one and keep the originals until
it ended: two copies of the whole model on the device (46 GB for FLUX.1 dev in bf16). Counted at a training
step, through the executor as a user's graph runs it: every live tensor holding one of the diffusion model's
weights, inference or ordinary."""
import os

import pytest
import torch

from infusion_dev import comfy_harness as h
from infusion_dev.weight_copies import diffusion_model_in_use, weight_copies

CHECKPOINT = "weight_copies_sd15.safetensors"
TRAIN = dict(word="dog", output_name="one_copy", steps=2, learning_rate=0.05, batch_size=2, gradient_accumulation=1,
             resolution=64, seed=0, templates="a photo of a {}", flip=False, save_every=0, resume=False,
             variant="value", precision="fp32", gradient_checkpointing=True, sample_every=0)


def copies_seen(counts: dict[str, int]) -> dict[int, int]:
    """How many weights are held how many times ({copies: weights})."""
    seen: dict[int, int] = {}
    for n in counts.values():
        seen[n] = seen.get(n, 0) + 1
    return seen


@pytest.fixture(scope="module")
def checkpoint(comfy_path):
    """SD1.5's 16 cross-attention layers on 320-channel levels: 356 MB of UNet weights."""
    from infusion_dev import tiny_models
    return tiny_models.write_tiny_sd15_checkpoint(os.path.join(h.models_dir(), "checkpoints", CHECKPOINT),
                                                  every_layer=True)


def train_prompt(pack) -> dict:
    from infusion_dev.comfy_versions import widget_defaults
    defaults = widget_defaults(h.pack_submodule(pack, "nodes.train").TrainInfusion)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "3": {"class_type": "TrainInfusion",
              "inputs": {**defaults, **TRAIN, "model": ["1", 0], "clip": ["1", 1], "latents": ["2", 0]}},
    }


def test_a_checkpoint_trained_through_the_executor_is_held_once(pack, checkpoint):
    from infusion.cli.executor import Runner

    counted: list[dict[str, int]] = []

    def report(event, data):
        if event == "progress" and data.get("node") == "3" and not counted:
            counted.append(weight_copies(diffusion_model_in_use()))  # at the first training step

    h.release_models()
    Runner(report).run_or_raise(train_prompt(pack))
    h.release_models()
    assert counted, "the training step was never reported"
    assert copies_seen(counted[0]) == {1: len(counted[0])}, "weights held more than once during training"


def trained_copies(pack, model, name: str) -> dict[str, int]:
    """The copies of each of `model`'s diffusion-model weights at its first training step, through the node."""
    import comfy.utils
    from test_dit import photo_latents

    _, clip = h.tiny_dit("flux")
    counted: list[dict[str, int]] = []

    def on_step(value, total, preview, **_):
        if not counted:
            counted.append(weight_copies(model.model.diffusion_model))

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(on_step)
    try:
        train = {k: v for k, v in TRAIN.items() if k != "resolution"}
        h.run_node(h.train_node(pack), model, clip, latents=photo_latents(), **{**train, "output_name": name})
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert counted, "the training step was never reported"
    return counted[0]


def test_a_flux_model_loaded_in_the_executor_is_held_once(pack, tmp_path):
    from infusion_dev import tiny_dits
    with h.executor_mode():
        model = tiny_dits.flux_shaped(str(tmp_path), width=256, double=2, single=4)
    assert all(p.is_inference() for p in model.model.diffusion_model.parameters())
    counted = trained_copies(pack, model, "flux_once")
    assert copies_seen(counted) == {1: len(counted)}
    assert all(p.is_inference() for p in model.model.diffusion_model.parameters())  # as they came, after training


def test_fp8_weights_are_held_once(pack):
    """Load Diffusion Model's fp8_e4m3fn: the weights stay fp8 (ComfyUI casts each as it is used), one copy."""
    from test_fp8 import fp8_flux, weight_dtypes
    h.tiny_dit("flux")  # writes the tiny FLUX.1 file the loader reads
    model = fp8_flux("fp8_e4m3fn")
    assert weight_dtypes(model) == {torch.float8_e4m3fn}
    counted = trained_copies(pack, model, "fp8_once")
    fp8 = [name for name, p in model.model.diffusion_model.named_parameters() if p.dtype == torch.float8_e4m3fn]
    assert set(fp8) & set(counted) and copies_seen(counted) == {1: len(counted)}


def test_a_model_whose_weights_exceed_its_gpu_is_refused_before_the_first_step(pack, sd15, monkeypatch):
    """With the numbers and what helps; a smaller batch would not (training keeps every weight on the GPU)."""
    import comfy.model_management as mm
    model, clip = sd15
    weights = model.model_size()
    gpu = model.clone()
    monkeypatch.setattr(gpu, "load_device", torch.device("cuda"))
    monkeypatch.setattr(mm, "get_total_memory", lambda *a, **k: weights // 2 + mm.minimum_inference_memory())
    latents = {"samples": torch.zeros(2, 4, h.LATENT_SIZE, h.LATENT_SIZE)}
    with pytest.raises(RuntimeError, match=r"weights take 0\.\d GiB, more than the 0\.\d GiB training can use on this "
                                           r"GPU .*fp8_e4m3fn"):
        h.run_node(h.train_node(pack), gpu, clip, latents=latents, **{**TRAIN, "output_name": "too_big"})
