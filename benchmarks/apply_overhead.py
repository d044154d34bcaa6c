"""Sampling time with 1 and 3 applied Infusion concepts vs the unpatched model (goal: ratio <= 1.03).

SD1.5-shaped random UNet at reduced width, or a FLUX.1-shaped DiT (--model flux; goal 1.01), on CPU, same
seeds; runs are interleaved in a shuffled order and their CPU times compared (median and min); then the
time spent inside the patches themselves (for a DiT: in the attention override, around the attention it
calls) is measured directly, since run-to-run noise on a shared CPU is a few percent. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/apply_overhead.py [--model flux] [--width 64] [--repeats 15]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: infusion_dev
from infusion_dev import comfy_harness as h  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_ratio import add_model_options, describe, model_width, random_model, zero_concept  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    args.width = model_width(args)
    h.setup_comfy()
    import nodes
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pack = h.load_pack()
    model, clip = random_model(args.model, args.width)
    apply = nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"]

    variants = {"unpatched": (model, clip)}
    m, c = model, clip
    for i, word in enumerate(("dog", "barn", "hat")):
        concept = zero_concept(pack, model)
        concept.word = word
        for layer in concept.values:
            concept.values[layer] = torch.randn(concept.values[layer].shape) * 0.1
        m, c = apply.execute(m, c, concept, 1.0).result
        if i == 0:
            variants["1 concept"] = (m, c)
    variants["3 concepts"] = (m, c)

    prompt, negative = "a dog wearing a hat near a barn", "blurry"
    latent = h.dit_latent(model, 1, args.size) if args.model == "flux" else h.empty_latent(1, args.size)
    conds = {k: (h.encode(c, prompt), h.encode(c, negative)) for k, (_, c) in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = random.Random(0)
    for r in range(args.repeats + 1):
        names = list(variants)
        order.shuffle(names)  # no variant always runs right after another
        for k in names:
            m = variants[k][0]
            t0 = time.process_time()  # CPU time: other processes on the machine do not count
            h.sample(m, *conds[k], latent, steps=args.steps, seed=r)
            if r:  # the first round warms up
                times[k].append(time.process_time() - t0)
    print(f"{describe(args.model, args.width)}, {args.size}px, {args.steps} steps, CPU time, {args.repeats} runs each")
    base_median, base_min = statistics.median(times["unpatched"]), min(times["unpatched"])
    for k, ts in times.items():
        print(f"{k:>10}: median {statistics.median(ts) * 1000:8.1f} ms  ratio {statistics.median(ts) / base_median:.3f}"
              f"   min {min(ts) * 1000:8.1f} ms  ratio {min(ts) / base_min:.3f}")
    # Run-to-run noise on a shared CPU is a few percent; the time spent inside the patches is
    # the overhead itself, measured directly.
    for k in ("1 concept", "3 concepts"):
        share = patch_time_share(variants[k][0], conds[k], latent, args.steps)
        print(f"{k:>10}: time inside the Infusion patches {share * 100:.2f}% of sampling")


def patch_time_share(model, conds, latent, steps: int) -> float:
    """The share of sampling time spent in the Infusion patches (a DiT's override: minus the attention it calls)."""
    options = model.model_options["transformer_options"]
    patches = [p for p in options.get("patches", {}).get("attn2_patch", []) if type(p).__name__ == "InfusionResidual"]
    spent = [0.0]

    def timed(forward, inner=None):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            if inner is None:
                out = forward(*args, **kwargs)
            else:  # an attention override: time it without the attention function it calls
                def attention(*a, **k):
                    t1 = time.perf_counter()
                    result = args[0](*a, **k)
                    spent[0] -= time.perf_counter() - t1
                    return result
                out = forward(attention, *args[1:], **kwargs)
            spent[0] += time.perf_counter() - t0
            return out
        return run

    override = options.get("optimized_attention_override")
    m = model.clone()
    if patches:
        for p in patches:
            p.forward = timed(p.forward)
    else:
        m.model_options["transformer_options"]["optimized_attention_override"] = timed(override, inner=True)
    try:
        t0 = time.perf_counter()
        h.sample(m, *conds, latent, steps=steps, seed=0)
        total = time.perf_counter() - t0
    finally:
        for p in patches:
            del p.forward
    return spent[0] / total


if __name__ == "__main__":
    main()
