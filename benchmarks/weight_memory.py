"""How much memory training adds to a loaded model, on the path a user takes: a checkpoint loaded by Load
Checkpoint and trained by Train Infusion Concept inside ComfyUI's executor (CPU, where the device's memory is
the process's). Training used to hold every weight twice (ComfyUI's inference weights and their trainable
clones); now one copy of each (counted at a training step, as tests/comfy/test_weight_copies.py asserts).

Prints the UNet's weights, the copies of them live at a training step, and the rise of the process's peak
resident memory during a second sampling run and during training, each over what it held before (Linux VmHWM;
the allocator may keep freed memory, so the copies are the check and the memory the figure). Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/weight_memory.py [--small]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infusion_dev import comfy_harness as h  # noqa: E402

CHECKPOINT = "weight_memory_sd15.safetensors"


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def peak_rise(run) -> float:
    """MiB the peak resident size rose above the resident size before `run()` (VmHWM reset first)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_mib("VmRSS")
    run()
    return status_mib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="the smallest SD1.5 checkpoint (one cross-attention layer) instead of all 16")
    args = parser.parse_args()
    h.setup_comfy()
    pack = h.load_pack()
    from infusion.cli.executor import Runner
    from infusion_dev import tiny_models
    from infusion_dev.comfy_versions import widget_defaults
    from infusion_dev.weight_copies import diffusion_model_in_use, weight_copies

    tiny_models.write_tiny_sd15_checkpoint(os.path.join(h.models_dir(), "checkpoints", CHECKPOINT),
                                           every_layer=not args.small)
    defaults = widget_defaults(h.pack_submodule(pack, "nodes.train").TrainInfusion)
    load = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}
    latent = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    encode = {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a dog", "clip": ["1", 1]}}

    def sampling(seed: int) -> dict:
        return {"1": load, "2": latent, "3": encode, "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["2", 0], "seed": seed,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}}

    training = {"1": load, "2": latent, "5": {"class_type": "TrainInfusion", "inputs": {
        **defaults, "model": ["1", 0], "clip": ["1", 1], "latents": ["2", 0], "word": "dog",
        "output_name": "weight_memory", "steps": 2, "batch_size": 2, "resolution": 64, "precision": "fp32",
        "templates": "a photo of a {}", "save_every": 0, "sample_every": 0, "gradient_checkpointing": True}}}
    copies: list[dict[str, int]] = []

    def report(event, data):
        if event == "progress" and data.get("node") == "5" and not copies:
            copies.append(weight_copies(diffusion_model_in_use()))

    runner = Runner(report)
    runner.run_or_raise(sampling(0))  # the checkpoint loaded and sampled once, as before a user trains
    unet = diffusion_model_in_use()
    weights = sum(p.numel() * p.element_size() for p in unet.parameters()) / 2 ** 20
    sampling_rise = peak_rise(lambda: runner.run_or_raise(sampling(1)))
    training_rise = peak_rise(lambda: runner.run_or_raise(training))
    held = sorted(set(copies[0].values())) if copies else []
    print(f"SD1.5-layout checkpoint through ComfyUI's executor, CPU: UNet weights {weights:.0f} MiB")
    print(f"  copies of each weight at a training step: {held} (of {len(copies[0]) if copies else 0} weights)")
    print(f"  peak resident memory rise: sampling again {sampling_rise:+.0f} MiB, training {training_rise:+.0f} MiB")
    print(f"  training's rise / the UNet's weights: ratio {training_rise / weights:.2f} (two copies: above 1)")


if __name__ == "__main__":
    main()
