"""Training the toy world's probe and base model, deterministic and resumable.

    python -m infusion_dev.toyworld.train probe            # ~2 min: the probe, into toyworld/weights
    python -m infusion_dev.toyworld.train base --work DIR  # the base model; stop at will, run again to resume
    python -m infusion_dev.toyworld.train check            # the base model's knowledge on held-out prompts
    ... base --model dit, check --model dit            # the same for the toy Flux (toyworld/dit.py)

ComfyUI is found as the runner finds it (COMFYUI_PATH, or the ComfyUI that holds the pack). Every
step draws its scenes, captions, timesteps and noise from generators seeded by the step number, so
a run resumed from any checkpoint ends bit for bit where an uninterrupted run ends (same machine,
torch and thread count).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any

import torch

from . import pairs, scenes
from . import probe as probe_mod
from .model import BASE_WEIGHTS, WEIGHTS_DIR
from .sampling import HELD_OUT, knowledge

PROBE_WEIGHTS = os.path.join(WEIGHTS_DIR, "probe.safetensors")
EMPTY_PROMPT = 0.1  # share of captions left empty, so classifier-free guidance has an unconditional model


def _save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    from infusion.format import write_safetensors
    write_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata or {})


def load_probe(path: str = PROBE_WEIGHTS, heads: dict[str, tuple] = probe_mod.HEADS) -> probe_mod.Probe:
    import safetensors.torch
    probe = probe_mod.Probe(heads=heads)
    probe.load_state_dict(safetensors.torch.load_file(path))
    return probe.eval()


def train_probe(steps: int = 3000, batch: int = 128, seed: int = 0,
                heads: dict[str, tuple] = probe_mod.HEADS) -> probe_mod.Probe:
    torch.manual_seed(seed)
    probe = probe_mod.Probe(heads=heads)
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for step in range(steps):
        rng, g = random.Random(seed * 10**7 + step), torch.Generator().manual_seed(seed * 10**7 + step)
        world, labels = probe_mod.random_batch(rng, batch, heads)
        logits = probe(probe_mod.damaged(world, g) if step % 4 else world)
        loss = sum(torch.nn.functional.cross_entropy(logits[k], labels[k]) for k in heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"probe step {step}: loss {float(loss.detach()):.4f}", flush=True)
    return probe.eval()


# ----------------------------------------------------------------------------- the base model

def base_scene(rng: random.Random) -> scenes.Scene:
    while True:
        scene = scenes.random_scene(rng)
        if (scene.colour, scene.shape, scene.background) not in HELD_OUT:
            return scene


class Captions:
    """Caption -> (text rows, pooled vector), computed once each (the world has about a thousand captions)."""

    def __init__(self, clip: Any):
        self.clip = clip
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for text in texts:
            if text not in self.cache:
                with torch.no_grad():
                    cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True)
                    self.cache[text] = cond.float(), pooled.float()
        return (torch.cat([self.cache[t][0] for t in texts]), torch.cat([self.cache[t][1] for t in texts]))


def lr_at(step: int, total: int, peak: float = 1e-3, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))


def world_model(name: str) -> Any:
    """The module of the toy world's UNet ("unet": model.py) or Flux ("dit": dit.py)."""
    from . import dit, model
    return {"unet": model, "dit": dit}[name]


WORLDS = {"one": (base_scene, scenes.render), "pairs": (pairs.random_pair_scene, pairs.render)}


def train_base(work: str, steps: int, batch: int = 48, log_every: int = 50, save_every: int = 250,
               kind: str = "unet", world: str = "one") -> str:
    from infusion import compat
    from infusion.families import adapter_for

    tw = world_model(kind)
    os.makedirs(work, exist_ok=True)
    state_path = os.path.join(work, "state.pt")
    torch.use_deterministic_algorithms(True)
    patcher, clip = (pairs.build_model(kind), pairs.build_clip()) if world == "pairs" else (tw.build_model(),
                                                                                             tw.build_clip())
    unet = patcher.model.diffusion_model
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    start, elapsed, losses = 0, 0.0, []
    if os.path.isfile(state_path):
        state = torch.load(state_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema, start, elapsed, losses = state["ema"], state["step"], state["elapsed"], state["losses"]
        opt.load_state_dict(state["optimizer"])
        print(f"resuming at step {start} ({elapsed / 60:.1f} min so far)", flush=True)
    captions = Captions(clip)
    unet.train()
    unet.requires_grad_(True)
    began = time.monotonic() - elapsed
    # Fast kernels without a backward off; Flux's blocks add to their inputs in place (made safe here).
    with compat.training_mode(), adapter_for(patcher).training_blocks(unet, False, []):
        _train_steps(patcher, captions, opt, ema, losses, start, steps, batch, log_every, save_every, began,
                     state_path, pooled=kind == "dit", world=WORLDS[world])
    weights = pairs.WEIGHTS[kind] if world == "pairs" else tw.DIT_WEIGHTS if kind == "dit" else BASE_WEIGHTS
    # fp16: a few MB in git, and what every test and benchmark loads (the fp32 EMA stays in the work folder).
    _save({k: v.half() for k, v in ema.items()}, weights, {"steps": str(steps), "batch": str(batch),
                          "minutes": f"{(time.monotonic() - began) / 60:.1f}",
                          "final_loss": f"{sum(losses[-200:]) / max(len(losses[-200:]), 1):.4f}"})
    return weights


def _train_steps(patcher: Any, captions: Captions, opt: Any, ema: dict, losses: list, start: int, steps: int,
                 batch: int, log_every: int, save_every: int, began: float, state_path: str,
                 pooled: bool, world: tuple) -> None:
    """The base model's training steps; `pooled`: the model also reads the prompt's pooled vector (Flux's y);
    `world`: how a scene is drawn at random, and how it is rendered."""
    draw, render = world
    unet = patcher.model.diffusion_model
    sampling = patcher.model.model_sampling
    for step in range(start, steps):
        rng, g = random.Random(7 * 10**7 + step), torch.Generator().manual_seed(7 * 10**7 + step)
        chosen = [draw(rng) for _ in range(batch)]
        texts = [s.caption(rng) if rng.random() >= EMPTY_PROMPT else "" for s in chosen]
        x0 = torch.stack([render(s) for s in chosen])  # world units: the model's own latent space
        sigma = sampling.sigmas[torch.randint(0, len(sampling.sigmas), (batch,), generator=g)]
        x_t = sampling.noise_scaling(sigma, torch.randn(x0.shape, generator=g), x0)
        context, vector = captions(texts)
        extra = {"y": vector} if pooled else {}
        denoised = patcher.model.apply_model(x_t, sigma, c_crossattn=context, **extra)
        # The model's own objective (v for the UNet, velocity for the flow DiT) as an MSE, read through ComfyUI's
        # parametrisation: denoised = a x + b * output
        one = torch.ones_like(sigma).view(-1, 1, 1, 1)
        b = sampling.calculate_denoised(sigma, one, torch.zeros_like(one))
        loss = ((denoised - x0) / b).square().mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"step {done}/{steps}: loss {recent:.4f}, {(time.monotonic() - began) / 60:.1f} min", flush=True)
        if done % save_every == 0 or done == steps:
            tmp = state_path + ".tmp"
            torch.save({"unet": unet.state_dict(), "ema": ema, "optimizer": opt.state_dict(), "step": done,
                        "elapsed": time.monotonic() - began, "losses": losses}, tmp)
            os.replace(tmp, state_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["probe", "base", "check"])
    parser.add_argument("--model", choices=["unet", "dit"], default="unet",
                        help="the toy world's UNet or its Flux-class DiT")
    parser.add_argument("--world", choices=list(WORLDS), default="one",
                        help="the one-object world, or the two-object world (pairs.py)")
    parser.add_argument("--work", default=None, help="where the base model's resumable state lives "
                        "(default benchmarks/out/toyworld_train[_pairs][_dit])")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paired = args.world == "pairs"
    if args.what == "probe":
        probe = train_probe(heads=probe_mod.HALF_HEADS if paired else probe_mod.HEADS)
        fresh = probe_mod.accuracy(probe, random.Random(99), 4000)
        damaged = probe_mod.accuracy(probe, random.Random(98), 4000, torch.Generator().manual_seed(98))
        print(f"fresh scenes: {json.dumps(fresh)}\ndamaged scenes: {json.dumps(damaged)}")
        _save(probe.state_dict(), pairs.PROBE_WEIGHTS if paired else PROBE_WEIGHTS)
        return
    from ..comfy_harness import start_comfy
    start_comfy(["--use-pytorch-cross-attention"])
    if args.what == "base":
        suffix = ("_pairs" if paired else "") + ("_dit" if args.model == "dit" else "")
        work = args.work or os.path.join("benchmarks", "out", f"toyworld_train{suffix}")
        print(f"wrote {train_base(work, args.steps, kind=args.model, world=args.world)}")
    if paired:
        model, clip = pairs.load(args.model)
        known = pairs.knowledge(model, clip, load_probe(pairs.PROBE_WEIGHTS, probe_mod.HALF_HEADS))
    else:
        model, clip = world_model(args.model).load()
        known = knowledge(model, clip, load_probe())
    print(f"held-out prompts, probe reads: {json.dumps(known)}")


if __name__ == "__main__":
    sys.exit(main())
