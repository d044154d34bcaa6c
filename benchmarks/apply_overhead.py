"""Sampling time with 1 and 3 applied Infusion concepts vs the unpatched model (goal: ratio <= 1.03).

SD1.5-shaped random UNet at reduced width on CPU, same seeds; runs are interleaved in a shuffled order and
their CPU times compared (median and min); then the time spent inside the patches themselves is measured
directly, since run-to-run noise on a shared CPU is a few percent. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/apply_overhead.py [--channels 64] [--repeats 15]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "comfy"))
import comfy_harness as h  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64, help="UNet model_channels (SD1.5: 320)")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    h.setup_comfy()
    import comfy.supported_models
    import nodes
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pack = h.load_pack()
    config = {**h.sd15_unet_config(), "model_channels": args.channels}
    unet = comfy.supported_models.SD15(config).get_model({})
    h.init_weights(unet)
    model = h._patcher(unet)
    _, clip = h.tiny_sd15()

    concept_mod = h.pack_submodule(pack, "infusion.concept")
    patching = h.pack_submodule(pack, "infusion.patching")
    layers, family = patching.model_layers(model)
    apply = nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"]

    variants = {"unpatched": (model, clip)}
    m, c = model, clip
    for i, word in enumerate(("dog", "barn", "hat")):
        concept = concept_mod.InfusionConcept.zeros(word, layers, family)
        for layer in concept.values:
            concept.values[layer] = torch.randn(concept.values[layer].shape) * 0.1
        m, c = apply.execute(m, c, concept, 1.0).result
        if i == 0:
            variants["1 concept"] = (m, c)
    variants["3 concepts"] = (m, c)

    prompt, negative = "a dog wearing a hat near a barn", "blurry"
    latent = h.empty_latent(1, args.size)
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
    print(f"SD1.5-shaped UNet, model_channels {args.channels}, {args.size}px, {args.steps} steps, CPU time, "
          f"{args.repeats} runs each")
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
    patches = [p for p in model.model_options["transformer_options"]["patches"]["attn2_patch"]
               if type(p).__name__ == "InfusionResidual"]
    spent = [0.0]

    def timed(forward):
        def run(*args):
            t0 = time.perf_counter()
            out = forward(*args)
            spent[0] += time.perf_counter() - t0
            return out
        return run

    for p in patches:
        p.forward = timed(p.forward)
    try:
        t0 = time.perf_counter()
        h.sample(model, *conds, latent, steps=steps, seed=0)
        total = time.perf_counter() - t0
    finally:
        for p in patches:
            del p.forward
    return spent[0] / total


if __name__ == "__main__":
    main()
