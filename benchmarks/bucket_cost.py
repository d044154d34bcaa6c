"""Training time per step with aspect-ratio buckets / with centre crop, at the same pixel count (goal: <= 1.05).

Four photos' latents: with buckets a portrait (1:4), a landscape (4:1) and two squares, each of the resolution's
area exactly (each size a bucket of buckets.py); with centre crop four squares of that area. The
model sees as many pixels a step either way, so the ratio is what buckets cost besides: the bucket draw, a
batch's photos repeated from a small bucket, another latent shape per model call. Medians after warm-up,
alternating the two runs. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bucket_cost.py [--model flux] [--width 64 --size 256]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: infusion_dev
from train_step_ratio import add_model_options, describe, model_width, setup, step_times  # noqa: E402

from infusion_dev import comfy_harness as h  # noqa: E402  (train_step_ratio put the repository on the path)


def bucketed(pack, square):
    """The photos of `square` ([4, C, s, s] latents) reshaped to a 1:4 portrait, a 4:1 landscape and two
    squares, all of the same area, as buckets."""
    loop = h.pack_submodule(pack, "infusion.training.loop")
    c, s = square.latents.shape[1:3]
    tall, wide = square.latents[0].reshape(c, 2 * s, s // 2), square.latents[1].reshape(c, s // 2, 2 * s)
    return loop.PhotoBuckets([loop.PhotoLatents(tall[None]), loop.PhotoLatents(wide[None]),
                              loop.PhotoLatents(square.latents[2:])], [[0], [1], [2, 3]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--size", type=int, default=256, help="training resolution in pixels (a multiple of 128)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating")
    args = parser.parse_args()
    if args.size % 128:
        parser.error("--size must be a multiple of 128 (a 4:1 bucket of its area is then in steps of 64)")
    args.width = model_width(args)
    pack, model, conds, square = setup(args.model, args.width, args.size)
    buckets = bucketed(pack, square)
    crop, bucket = [], []
    for _ in range(args.rounds):
        crop += step_times(pack, model, conds, square, args.batch, args.repeats, False)
        bucket += step_times(pack, model, conds, buckets, args.batch, args.repeats, False)
    crop_step, bucket_step = statistics.median(crop), statistics.median(bucket)
    print(f"{describe(args.model, args.width)}, {args.size} px, batch {args.batch}, CPU fp32, "
          f"{len(crop)} steps each")
    print(f"centre crop (4 squares)                    {1000 * crop_step:8.1f} ms a step")
    print(f"buckets (1:4, 4:1 and 2 squares, same area) {1000 * bucket_step:8.1f} ms a step   "
          f"ratio {bucket_step / crop_step:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
