"""Training step time / forward time on the same batch (goal: <= 2.3 without gradient checkpointing).

Only the residual vectors need gradients, so a step is one forward plus a backward that
computes activation gradients only (no weight gradients): about 2 forwards is the floor.
With gradient checkpointing the backward also recomputes the forward (about 3).
SD1.5-shaped random UNet, or a FLUX.1-shaped DiT (--model flux: 2 double and 4 single blocks of the
given width), in ComfyUI's classes on CPU; both timings through the same ComfyUI sampling setup and
batched model call; medians after warm-up. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/train_step_ratio.py [--model flux] [--width 64 --size 256 --batch 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: infusion_dev
from infusion_dev import comfy_harness as h  # noqa: E402


FLUX_DEPTH = (2, 4)  # double, single blocks of the FLUX.1-shaped model


def random_model(kind: str, width: int):
    """(MODEL, CLIP), the model loaded from a file as a user's checkpoint is (ComfyUI's Train LoRA reloads it):
    an SD1.5-shaped UNet of `width` channels, or a FLUX.1-shaped DiT of `width` (a multiple of 128)."""
    import comfy.supported_models
    if kind == "flux":
        from infusion_dev import tiny_dits
        return (tiny_dits.flux_shaped(os.path.join(h.models_dir(), "diffusion_models"), width, *FLUX_DEPTH),
                h.tiny_dit("flux")[1])
    config = {**h.sd15_unet_config(), "model_channels": width}
    return (h.model_from_file(f"sd15_{width}", lambda: comfy.supported_models.SD15(config).get_model({}), h.SEED),
            h.tiny_sd15()[1])


def describe(kind: str, width: int) -> str:
    if kind == "flux":
        return f"FLUX.1-shaped DiT, width {width}, {FLUX_DEPTH[0]} double + {FLUX_DEPTH[1]} single blocks"
    return f"SD1.5-shaped UNet, {width} channels"


def zero_concept(pack, model):
    layers, family = h.pack_submodule(pack, "infusion.patching").model_layers(model)
    space = h.pack_submodule(pack, "infusion.families").adapter_for(model).vector_space
    return h.pack_submodule(pack, "infusion.concept").InfusionConcept.zeros("dog", layers, family, vector_space=space)


def forward_times(pack, model, conds, latents, batch: int, repeats: int) -> list[float]:
    """Seconds per no-grad forward of the model with a zero residual applied, same batch."""
    import torch
    P = lambda name: h.pack_submodule(pack, name)  # noqa: E731
    cm, patching = P("infusion.training.comfy_model"), P("infusion.patching")
    patcher = model.clone()
    space = patching.training_space(model, "value")  # as training applies it (value space on a UNet)
    patching.install(patcher, patching.trainable_residual(model, zero_concept(pack, model), space))

    def run(model_wrap, options):
        den = cm.ComfyDenoiser(model_wrap, options, len(conds), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        x0 = latents.latents[:batch]
        sigma = den.sigma(torch.randint(1000, (batch,), generator=g))
        x = den.noised(x0, torch.randn(x0.shape, generator=g), sigma)
        times = []
        with torch.no_grad():
            for _ in range(repeats + 2):
                t = time.perf_counter()
                den.denoise(x, sigma, 0)
                times.append(time.perf_counter() - t)
        return times[2:]

    return cm.in_sampling(patcher, conds, (batch,) + tuple(latents.latents.shape[1:]), 0, run)


def step_times(pack, model, conds, latents, batch: int, repeats: int, checkpointing: bool) -> list[float]:
    """Seconds per training step (draws, forward, loss, backward, AdamW), accumulation 1."""
    P = lambda name: h.pack_submodule(pack, name)  # noqa: E731
    loop, cm = P("infusion.training.loop"), P("infusion.training.comfy_model")
    start = zero_concept(pack, model)
    stamps = []

    class Clock(loop.TrainingHooks):
        def on_step(self, step, total, losses):
            stamps.append(time.perf_counter())

    settings = loop.TrainingSettings(steps=repeats + 3, batch_size=batch, gradient_accumulation=1, flip=False,
                                     precision="fp32")
    cm.train_on_model(model, start, conds, latents, settings, Clock(), gradient_checkpointing_on=checkpointing)
    return [b - a for a, b in zip(stamps[2:], stamps[3:])]


def setup(kind: str, width: int, size: int, photos: int = 4):
    """(pack, model, caption conditionings, photo latents) for a random model of that kind and width."""
    import torch
    h.setup_comfy()
    pack = h.load_pack()
    P = lambda name: h.pack_submodule(pack, name)  # noqa: E731
    model, clip = random_model(kind, width)
    templates = P("infusion.training.templates")
    extras = P("infusion.families").adapter_for(model).training_conditioning(model.get_model_object("diffusion_model"))
    with h.executor_mode():
        conds = P("infusion.training.encoding").encode_captions(
            clip, "dog", [templates.fill(t, "dog") for t in templates.AUTHOR_TEMPLATES], extras=extras)
    channels = model.get_model_object("latent_format").latent_channels
    latents = P("infusion.training.loop").PhotoLatents(
        torch.randn(photos, channels, size // 8, size // 8, generator=torch.Generator().manual_seed(0)))
    return pack, model, conds, latents


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["sd15", "flux"], default="sd15", help="an SD1.5-shaped UNet or a "
                        "FLUX.1-shaped DiT")
    parser.add_argument("--width", "--channels", type=int, default=None,
                        help="UNet model_channels (SD1.5: 320; default 64) or DiT width (FLUX.1: 3072; default 256)")


def model_width(args: argparse.Namespace) -> int:
    return args.width or (256 if args.model == "flux" else 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    args.width = model_width(args)
    pack, model, conds, latents = setup(args.model, args.width, args.size)
    forward = statistics.median(forward_times(pack, model, conds, latents, args.batch, args.repeats))
    plain = statistics.median(step_times(pack, model, conds, latents, args.batch, args.repeats, False))
    checkpointed = statistics.median(step_times(pack, model, conds, latents, args.batch, args.repeats, True))
    print(f"{describe(args.model, args.width)}, {args.size} px, batch {args.batch}, CPU fp32")
    print(f"forward (no grad)                   {1000 * forward:8.1f} ms")
    print(f"training step                       {1000 * plain:8.1f} ms   ratio {plain / forward:.2f} (goal <= 2.3)")
    print(f"training step, gradient checkpoints {1000 * checkpointed:8.1f} ms   ratio {checkpointed / forward:.2f}")


if __name__ == "__main__":
    main()
