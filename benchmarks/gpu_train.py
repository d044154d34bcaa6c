"""Infusion training on a GPU: fp16 steps on random-weight full-size UNets built with ComfyUI's
own classes. SD1.5 at 512 px and SDXL at 1024 px, batch 1: step time, forward time and peak
VRAM, with and without gradient checkpointing (goals with checkpointing: SD1.5 <= 6 GiB,
SDXL <= 12 GiB).

Self-contained: needs only ComfyUI, torch and this pack (the repository it sits in); no
checkpoint files, no CLIP or VAE (captions and photos are random tensors of the real shapes).
    python benchmarks/gpu_train.py --comfyui /path/to/ComfyUI            # on a GPU machine
    python benchmarks/gpu_train.py --comfyui /path/to/ComfyUI --smoke    # tiny, on CPU: checks it runs
Prints one line per measurement and, when $OUT is set, writes $OUT/gpu_train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SD15 = {"context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "num_heads": 8, "num_head_channels": -1}
SDXL = {"context_dim": 2048, "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "num_heads": -1, "num_head_channels": 64}
COMMON = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
          "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
          "use_temporal_resblock": False}


def setup_comfy(root: str, cpu: bool) -> None:
    sys.path.append(PACK_ROOT)
    from infusion.cli import runtime
    runtime.configure(["--cpu"] if cpu else [], comfy_root=root)


def random_unet(family: str, channels: int, head_channels: int, dtype, device):
    """A ModelPatcher around a random-weight UNet of the real layout (weights N(0, 0.02), norms 1, biases 0)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch
    config_cls = comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL
    config = config_cls({**COMMON, **(SD15 if family == "sd15" else SDXL), "model_channels": channels})
    config.unet_config.update({**(SD15 if family == "sd15" else SDXL), "model_channels": channels, "dtype": dtype})
    if family == "sdxl":
        config.unet_config["num_head_channels"] = head_channels
    model = config.get_model({}, device=device)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.ndim >= 2:
                    p.normal_(0.0, 0.02)
                else:
                    p.fill_(1.0 if name == "weight" else 0.0)  # 1-d weights belong to norms
    return comfy.model_patcher.ModelPatcher(model, device, comfy.model_management.unet_offload_device())


def random_captions(family: str, count: int = 11) -> list:
    """CONDITIONING per caption with the real shapes, the class word at token 2."""
    import torch
    from infusion.tokens import CONDITIONING_KEY, WordPositions
    width = 768 if family == "sd15" else 2048
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        extras = {CONDITIONING_KEY: WordPositions(77, {"dog": (2,)})}
        if family == "sdxl":
            extras["pooled_output"] = torch.randn(1, 1280, generator=g)
        out.append([[torch.randn(1, 77, width, generator=g), extras]])
    return out


def measure(family: str, size: int, channels: int, head_channels: int, steps: int, checkpointing: bool,
            precision: str, device) -> dict:
    import torch
    from infusion.concept import InfusionConcept
    from infusion.patching import install_position_carrier, model_layers
    from infusion.residual import InfusionResidual
    from infusion.training.comfy_model import ComfyDenoiser, in_sampling, train_on_model
    from infusion.training.loop import PRECISIONS, PhotoLatents, TrainingHooks, TrainingSettings

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = random_unet(family, channels, head_channels, dtype, device)
    layers, fam = model_layers(model)
    start = InfusionConcept.zeros("dog", layers, fam)
    captions = random_captions(family)
    latents = PhotoLatents(torch.randn(4, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1)))
    cuda = device.type == "cuda"
    stamps = []

    class Clock(TrainingHooks):
        def on_step(self, step, total, losses):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    settings = TrainingSettings(steps=steps + 2, batch_size=1, gradient_accumulation=1, flip=False, precision=precision)
    state = train_on_model(model, start, captions, latents, settings, Clock(), gradient_checkpointing_on=checkpointing)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    step = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))

    patcher = model.clone()
    patcher.set_model_attn2_patch(InfusionResidual(start, trainable=True))
    install_position_carrier(patcher)

    def forwards(model_wrap, options):
        den = ComfyDenoiser(model_wrap, options, len(captions), device)
        x0 = latents.latents[:1].to(device)
        sigma = den.sigma(torch.tensor([500], device=device))
        x = den.noised(x0, torch.randn_like(x0), sigma)
        autocast = PRECISIONS[precision]
        times = []
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            for _ in range(steps + 2):
                t = time.perf_counter()
                den.denoise(x, sigma, 0)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        return statistics.median(times[2:])

    forward = in_sampling(patcher, captions, (1,) + tuple(latents.latents.shape[1:]), 0, forwards)
    del model, patcher
    return {"family": family, "size": size, "gradient_checkpointing": checkpointing, "precision": precision,
            "step_ms": 1000 * step, "forward_ms": 1000 * forward, "step_over_forward": step / forward,
            "peak_vram_gib": peak, "final_loss": state.losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""), help="ComfyUI root")
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU, to check the script runs")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.comfyui, "comfy", "model_management.py")):
        sys.exit("give the ComfyUI root with --comfyui or COMFYUI_PATH")
    import torch
    cpu = args.smoke or not torch.cuda.is_available()
    setup_comfy(args.comfyui, cpu)
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    if args.smoke:  # each code path once: both checkpointing modes on the first family, the others with it on
        plan = [(f, 64, 32, 8, 2, c, "fp32") for f in args.families
                for c in ((True, False) if f == args.families[0] else (True,))]
    else:
        plan = [(f, 512 if f == "sd15" else 1024, 320, 64, args.steps, c, "fp16")
                for f in args.families for c in (True, False)]
    results = []
    for family, size, channels, heads, steps, checkpointing, precision in plan:
        r = measure(family, size, channels, heads, steps, checkpointing, precision, device)
        results.append(r)
        print(f"{family} {size}px batch 1 {precision} checkpointing={'on ' if checkpointing else 'off'}: "
              f"step {r['step_ms']:.1f} ms, forward {r['forward_ms']:.1f} ms (ratio {r['step_over_forward']:.2f}), "
              f"peak VRAM {r['peak_vram_gib']:.2f} GiB, loss {r['final_loss']:.4g}", flush=True)
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_train.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
