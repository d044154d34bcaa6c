"""What the training precision does to what is learnt, on the toy world (infusion_dev/toyworld): the known concept
trained through Train Infusion Concept at its defaults in fp32, bf16 and fp16 autocast (the CPU runs all three),
each drawn by ComfyUI's KSampler and read by the probe: the concept's rate in "a triangle on <background>" for
every background, against fp32's (goal: within 0.05), and the training time against fp32's. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/precision_toyworld.py [--model dit] [--per-background 8]
        [--precisions fp32 bf16 fp16] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infusion_dev import comfy_harness as h  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("unet", "dit"), default="unet")
    parser.add_argument("--per-background", type=int, default=8, help="samples of each background's prompt")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the node's default)")
    args = parser.parse_args()
    h.setup_comfy()
    h.load_pack()
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld.train import load_probe
    if args.model == "dit":
        from infusion_dev.toyworld import dit as world
    else:
        from infusion_dev.toyworld import model as world
    model, clip = world.load()
    probe = load_probe()
    steps = {"steps": args.steps} if args.steps else {}
    rates: dict[str, list[float]] = {}
    times: dict[str, float] = {}
    for precision in args.precisions:
        for seed in args.seeds:
            started = time.perf_counter()
            concept = cz.train_infusion(model, clip, cz.KNOWN.photos(), precision=precision, seed=seed, **steps)
            times[precision] = times.get(precision, 0.0) + time.perf_counter() - started
            applied, word_clip = cz.apply_infusion(model, clip, concept)
            drawn = cz.context_samples(applied, word_clip, probe, per_background=args.per_background, seed=300)
            rates.setdefault(precision, []).append(drawn.concept_rate(cz.KNOWN))
            print(f"  {precision} seed {seed}: concept drawn {rates[precision][-1]:.3f}", flush=True)
    reference = sum(rates["fp32"]) / len(rates["fp32"]) if "fp32" in rates else None
    print(f"toy world {args.model}, the known concept at the node's defaults, {4 * args.per_background} samples a seed")
    for precision, found in rates.items():
        mean = sum(found) / len(found)
        against = f", {mean - reference:+.3f} against fp32 (goal within 0.05)" if reference is not None else ""
        ratio = f", time ratio {times[precision] / times['fp32']:.2f}" if "fp32" in times else ""
        print(f"  {precision}: drawn {mean:.3f}{against}{ratio}")


if __name__ == "__main__":
    main()
