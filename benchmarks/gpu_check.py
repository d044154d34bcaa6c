"""A user's first training run on an NVIDIA GPU, measured: random-weight diffusion models at full size in
ComfyUI's real configs (SD1.5, SDXL, FLUX.1 dev), with their weights in bf16 and in fp8 (as Load Diffusion Model's
weight_dtype fp8_e4m3fn loads them), each trained by Train Infusion Concept inside ComfyUI's executor as a user's
graph runs it, previews on, at the node's defaults (batch 4 at the family's own resolution, precision auto).

Per case: the weights, the peak VRAM above them, seconds a step, a preview round, the default run's 500 steps and
6 preview rounds extrapolated from both, which attention kernel ComfyUI picked and the precision training chose,
and whether the same seed gave the same vectors twice (one run with previews, one without: previews never change
what trains). Text encoders and VAEs are small stand-ins with the families' real tokenizers and widths (the
diffusion model is what training holds); no downloads, no files but the concepts.
    python benchmarks/gpu_check.py --comfyui /path/to/ComfyUI [--cases sd15-bf16 flux-fp8] [--steps 4]
    python benchmarks/gpu_check.py --comfyui /path/to/ComfyUI --smoke     # tiny models on the CPU (CI)
    python benchmarks/gpu_check.py ... --resolution 256 --batch 1 --sample-steps 1   # full size, smaller runs
    python benchmarks/gpu_check.py ... -- --use-sage-attention             # ComfyUI flags after --
Prints a line per case and writes $OUT/gpu_check.json when OUT is set.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_ROOT)

UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False, "model_channels": 320}
SD15 = {**UNET, "context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "num_heads": 8, "num_head_channels": -1}
SDXL = {**UNET, "context_dim": 2048, "use_linear_in_transformer": True, "adm_in_channels": 2816,
        "num_classes": "sequential", "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "num_heads": -1, "num_head_channels": 64}
FLUX_DEV = {"width": 3072, "double": 19, "single": 38, "text_width": 4096}
# --smoke: the same code paths at toy sizes.
TINY_UNET = {"model_channels": 32, "num_head_channels": 8}
TINY_FLUX = {"width": 128, "double": 1, "single": 1, "text_width": 64}
FAMILIES = ("sd15", "sdxl", "flux")
WEIGHTS = ("bf16", "fp8")
DEFAULT_STEPS, DEFAULT_ROUNDS = 500, 6  # the node's defaults: 500 steps, previews at 0 and every 100


def unet_model(family: str, smoke: bool):
    import comfy.supported_models
    config = dict(SD15 if family == "sd15" else SDXL, **(TINY_UNET if smoke else {}))
    return (comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL)(config)


def flux_model(smoke: bool):
    import comfy.supported_models

    from infusion_dev.tiny_dits import flux_config
    shape = TINY_FLUX if smoke else FLUX_DEV
    config = flux_config(True, width=shape["width"], double=shape["double"], single=shape["single"])
    config["context_in_dim"] = shape["text_width"]
    return comfy.supported_models.Flux(config)


def build(family: str, weights: str, smoke: bool):
    """(MODEL, CLIP, VAE) as the loaders give them: the diffusion model's weights random, N(0, 0.02) for matrices,
    in `weights` (fp8: float8_e4m3fn, cast to the compute dtype ComfyUI picks, as Load Diffusion Model does)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    from infusion_dev import comfy_harness as h
    from infusion_dev import tiny_dits
    config = flux_model(smoke) if family == "flux" else unet_model(family, smoke)
    device = mm.get_torch_device()
    dtype = torch.float8_e4m3fn if weights == "fp8" else torch.bfloat16
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, device, config.supported_inference_dtypes))
    generator = torch.Generator(device).manual_seed(0)
    with torch.inference_mode():  # as a loader inside the executor
        model = config.get_model({}, device=device)
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator, device=device).mul_(0.02))
            else:
                p.fill_(1.0 if name.endswith("weight") or name.endswith("scale") else 0.0)
        model.diffusion_model.to(mm.unet_offload_device())
    patcher = comfy.model_patcher.ModelPatcher(model, device, mm.unet_offload_device())
    if family == "flux":
        with h.executor_mode():
            clip = tiny_dits.clip("flux", t5_width=(TINY_FLUX if smoke else FLUX_DEV)["text_width"])
        return patcher, clip, tiny_dits.flux_vae()
    clip = (h.tiny_sd15() if family == "sd15" else h.tiny_sdxl())[1]
    return patcher, clip, h.tiny_vae()


class ModelNode:
    """Hands the executor the case's models, as Load Checkpoint / Load Diffusion Model would."""
    CASE: tuple = ()
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "LATENT")
    FUNCTION = "load"
    CATEGORY = "benchmarks"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"case": ("STRING", {"default": ""})}}

    def load(self, case):
        return ModelNode.CASE


def train_prompt(pack, case: str, steps: int, every: int, settings: dict, seed: int) -> dict:
    """Train Infusion Concept at its defaults but for `settings`, on the case's models."""
    from infusion_dev import comfy_harness as h
    from infusion_dev.comfy_versions import widget_defaults
    defaults = widget_defaults(h.pack_submodule(pack, "nodes.train").TrainInfusion)
    inputs = {**defaults, **settings, "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "latents": ["1", 3],
              "word": "dog", "output_name": f"gpu_check_{case}", "steps": steps, "sample_every": every,
              "save_every": 0, "seed": seed}
    if case.startswith("flux"):
        inputs["sample_cfg"] = 1.0  # guidance-distilled: the previews as a user samples FLUX.1 dev
    return {"1": {"class_type": "InfusionGPUCheckModel", "inputs": {"case": case}},
            "2": {"class_type": "TrainInfusion", "inputs": inputs}}


def resident_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 2 ** 20


def timed_run(runner, prompt: dict, weight_gib: float) -> tuple[float, list[float], float]:
    """(seconds, each training step's seconds, peak GiB above the weights) of one prompt run. On a GPU the peak
    allocated less the weights; on the CPU (Linux), where the weights are resident before the run, the rise of
    the peak resident size during it (the allocator may keep freed memory: an upper bound)."""
    import torch
    cuda = torch.cuda.is_available()
    stamps: dict[int, float] = {}

    def report(event, data):
        if event == "progress" and data.get("node") == "2":
            if cuda:
                torch.cuda.synchronize()
            stamps.setdefault(int(data["value"]), time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak resident size starts again from the current one
    resident = 0.0 if cuda else resident_gib("VmRSS")
    runner.server.report = report
    started = time.perf_counter()
    runner.run_or_raise(prompt)
    took = time.perf_counter() - started
    steps = [stamps[v] - stamps[v - 1] for v in sorted(stamps) if v - 1 in stamps and v - 1 > 0]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 - weight_gib if cuda else resident_gib("VmHWM") - resident
    return took, steps, peak


def trained(case: str):
    """The case's concept file as the last run saved it."""
    import folder_paths

    from infusion.format import load_concept
    return load_concept(os.path.join(folder_paths.get_folder_paths("infusion")[0], f"gpu_check_{case}.safetensors"))


def digest(concept) -> str:
    """The trained vectors' bytes (the metadata holds no time or path either, but the vectors are the concept)."""
    values = hashlib.sha256()
    for layer in sorted(concept.values):
        values.update(concept.values[layer].numpy().tobytes())
    return values.hexdigest()


def measure(pack, runner, family: str, weights: str, steps: int, smoke: bool, settings: dict) -> dict:
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import torch
    case = f"{family}-{weights}"
    model, clip, vae = build(family, weights, smoke)
    size = settings.get("resolution") or (512 if family == "sd15" else 1024)
    channels = 16 if family == "flux" else 4
    latents = {"samples": torch.randn(4, channels, size // 8, size // 8, generator=torch.Generator().manual_seed(1))}
    ModelNode.CASE = (model, clip, vae, latents)
    weight_gib = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()) / 2 ** 30
    plain, step_times, peak = timed_run(runner, train_prompt(pack, case, steps, 0, settings, 0), weight_gib)
    first = trained(case)
    shown, _, peak_shown = timed_run(runner, train_prompt(pack, case, steps, steps // 2, settings, 0), weight_gib)
    step = statistics.median(step_times)
    preview_round = max(shown - plain, 0.0) / 3  # rounds at 0, steps / 2 and steps
    ModelNode.CASE = ()
    del model
    mm.unload_all_models()
    mm.soft_empty_cache()
    return {"case": case, "size": size, "weights_gib": weight_gib, "peak_over_weights_gib": max(peak, peak_shown),
            "step_s": step, "preview_round_s": preview_round,
            "default_run_min": (DEFAULT_STEPS * step + DEFAULT_ROUNDS * preview_round) / 60,
            "precision": first.metadata["training"]["precision"],
            "attention": attention.optimized_attention.__name__,
            "same_seed_same_concept": digest(first) == digest(trained(case))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""), help="ComfyUI root")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks that the script runs")
    parser.add_argument("--steps", type=int, default=4, help="training steps of each timed run (even)")
    parser.add_argument("--resolution", type=int, default=0, help="training size in pixels (0: the family's own)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: the node's default)")
    parser.add_argument("--sample-steps", type=int, default=0, help="sampling steps of a preview (0: the node's)")
    parser.add_argument("--cases", nargs="+", default=[f"{f}-{w}" for f in FAMILIES for w in WEIGHTS],
                        choices=[f"{f}-{w}" for f in FAMILIES for w in WEIGHTS])
    args, comfy_args = parser.parse_known_args()
    comfy_args = [a for a in comfy_args if a != "--"]
    if not os.path.isfile(os.path.join(args.comfyui, "comfy", "model_management.py")):
        sys.exit("give the ComfyUI root with --comfyui or COMFYUI_PATH")
    os.environ["COMFYUI_PATH"] = args.comfyui
    from infusion_dev import comfy_harness as h
    h.setup_comfy(args.comfyui, ["--cpu", *comfy_args] if args.smoke else comfy_args)
    pack = h.load_pack()
    import nodes
    import torch
    nodes.NODE_CLASS_MAPPINGS["InfusionGPUCheckModel"] = ModelNode
    from infusion.cli.executor import Runner
    runner = Runner(lambda *_: None)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}, torch {torch.__version__}, ComfyUI flags {comfy_args or 'none'}", flush=True)
    settings = {"resolution": 64, "sample_steps": 1, "batch_size": 2, "templates": "a photo of a {}"} if args.smoke \
        else {}
    for name, value in (("resolution", args.resolution), ("batch_size", args.batch), ("sample_steps", args.sample_steps)):
        if value:
            settings[name] = value
    results = []
    for case in args.cases:
        family, weights = case.split("-")
        r = measure(pack, runner, family, weights, args.steps, args.smoke, settings)
        results.append(r)
        print(f"{case} at {r['size']} px, {settings or 'the defaults'}: weights {r['weights_gib']:.2f} GiB, peak +{r['peak_over_weights_gib']:.2f} GiB above them, "
              f"step {r['step_s']:.2f} s, preview round {r['preview_round_s']:.1f} s, default run (500 steps, 6 "
              f"rounds) {r['default_run_min']:.1f} min, precision {r['precision']}, attention {r['attention']}, "
              f"same seed twice: {'identical' if r['same_seed_same_concept'] else 'different'} vectors", flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as f:
            json.dump({"device": device, "flags": comfy_args, "settings": settings, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
