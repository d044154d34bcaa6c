"""What sample previews add to training time at the node's default settings (goal: <= 10 %).

Defaults: 500 steps of batch 4 (no accumulation), previews at step 0 and every 100 steps (6 rounds) of
3 prompts, 20 sampling steps, CFG. Two short runs through Train Infusion Concept on the same SD1.5-shaped
random UNet (ComfyUI's classes) and tiny VAE, on CPU: N steps without previews, and N steps with a
round every N/2 steps (3 rounds). Their difference gives the cost of a round (sampling, decoding, saving,
and restarting the loop from memory), the first the cost of a step; the ratio at the defaults follows:
(500 step + 6 round) / (500 step). Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/preview_cost.py [--channels 64 --size 256 --steps 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_ratio import random_model  # noqa: E402

from infusion_dev import comfy_harness as h  # noqa: E402  (train_step_ratio put the repository on the path)

DEFAULT_STEPS, DEFAULT_ROUNDS = 500, 500 // 100 + 1


def timed_run(pack, model, clip, vae, photos, steps: int, every: int, size: int) -> float:
    node = h.train_node(pack, "bench")
    started = time.perf_counter()
    h.run_node(node, model, clip, vae=vae, photos=photos, output_name=f"preview_cost_{every}", steps=steps,
               resolution=size, precision="fp32", sample_every=every, save_every=0)
    return time.perf_counter() - started


def main() -> None:
    import torch
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64, help="UNet model_channels (SD1.5: 320)")
    parser.add_argument("--size", type=int, default=256, help="training and preview size in pixels")
    parser.add_argument("--steps", type=int, default=6, help="steps of each timed run (even)")
    args = parser.parse_args()
    h.setup_comfy()
    pack = h.load_pack()
    (model, clip), vae = random_model("sd15", args.channels), h.tiny_vae()
    photos = torch.rand(4, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    timed_run(pack, model, clip, vae, photos, 1, 0, args.size)  # warm-up
    plain = timed_run(pack, model, clip, vae, photos, args.steps, 0, args.size)
    shown = timed_run(pack, model, clip, vae, photos, args.steps, args.steps // 2, args.size)
    step, round_ = plain / args.steps, (shown - plain) / 3
    ratio = (DEFAULT_STEPS * step + DEFAULT_ROUNDS * round_) / (DEFAULT_STEPS * step)
    print(f"SD1.5-shaped UNet, {args.channels} channels, {args.size} px, the node's default batch, CPU fp32")
    print(f"  training step {step:.2f} s, preview round (3 prompts x 20 steps) {round_:.2f} s")
    print(f"  training time with previews / without, at the defaults (500 steps, 6 rounds): ratio {ratio:.3f} "
          "(goal <= 1.10)")


if __name__ == "__main__":
    main()
