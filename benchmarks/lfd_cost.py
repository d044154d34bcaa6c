"""Cost of the Latent Fisher divergence node, in unpatched UNet forwards.

Prints, for an Infusion-applied and a LoRA-patched customized model,

  ratio = (node time / number of (prompt, timestep) cells) / (one unpatched forward)

where every cell evaluates the same batch of `samples` draws, and the unpatched forward
is timed inside the same run: the mean of the base model's own UNet calls on those very
batches, so both figures see the same machine state. Both models must be evaluated once
per cell, so 2.0 is the floor; the goal is <= 2.2. The ratio is split into the base
forward (1), the customized forward and everything else (sampling setup, draws,
transfers, ComfyUI's LoRA weight patching once per run: base and customized models share
one set of weights). Tiny SD1.5-shaped model from the test harness, on CPU with one torch
thread, in process CPU time (both keep other processes' load on a shared machine from
skewing the ratio); medians over --repeats.

  COMFYUI_PATH=/path/to/ComfyUI python benchmarks/lfd_cost.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(PACK_ROOT)  # the repository: infusion_dev

from infusion_dev import comfy_harness as h  # noqa: E402  (tiny models, pack loading)

PROMPTS = ["a photo of a cat on the beach", "a red car in the city", "a bowl of fruit", "a mountain lake"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent-size", type=int, default=16, help="latent side (pixels / 8)")
    p.add_argument("--samples", type=int, default=4, help="draws per (prompt, timestep) = UNet batch")
    p.add_argument("--prompts", type=int, default=2, choices=range(1, len(PROMPTS) + 1))
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    return p.parse_args()


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def customized_models(pack, model, clip):
    """(name, customized MODEL, CLIP to encode with) for each kind of customization."""
    import comfy.lora
    import comfy.sd
    import nodes
    import torch

    concept_mod = h.pack_submodule(pack, "infusion.concept")
    patching = h.pack_submodule(pack, "infusion.patching")
    layers, family = patching.model_layers(model)
    concept = concept_mod.InfusionConcept.zeros("dog", layers, family)
    g = torch.Generator().manual_seed(0)
    for layer in concept.values:
        concept.values[layer] = torch.randn(concept.values[layer].shape, generator=g)
    applied, word_clip = h.run_node(nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"], model, clip, concept, 1.0).result

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    lora = {}
    for key, target in sorted(key_map.items()):
        if key.startswith("lora_unet_") and key.endswith(("attn2_to_k", "attn2_to_v")) and target in weights:
            out_dim, in_dim = weights[target].shape
            lora[f"{key}.lora_up.weight"] = torch.randn((out_dim, 4), generator=g) * 0.1
            lora[f"{key}.lora_down.weight"] = torch.randn((4, in_dim), generator=g) * 0.1
    with h.executor_mode():
        lora_model = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0]
    return [("Infusion", applied, word_clip), ("LoRA", lora_model, clip)]


def timing_clone(model, seconds: list[float]):
    """A clone whose every UNet call appends its CPU time to `seconds`."""
    clone = model.clone()

    def wrapper(apply_model, args):
        start = time.process_time()
        out = apply_model(args["input"], args["timestep"], **args["c"])
        seconds.append(time.process_time() - start)
        return out
    clone.set_model_unet_function_wrapper(wrapper)
    return clone


def main() -> None:
    args = parse_args()
    h.setup_comfy()
    import torch

    torch.set_num_threads(1)
    pack = h.load_pack()
    metrics = h.pack_submodule(pack, "nodes.metrics")
    model, clip = h.tiny_sd15()
    size = args.latent_size
    latent = {"samples": torch.randn((args.samples, 4, size, size), generator=torch.Generator().manual_seed(0))}
    cells = args.prompts * args.timesteps
    base_calls: list[float] = []
    custom_calls: list[float] = []
    base = timing_clone(model, base_calls)

    print(f"tiny SD1.5 on CPU (1 thread), latent {size}x{size}, batch {args.samples}, "
          f"{args.prompts} prompts x {args.timesteps} timesteps, median of {args.repeats}")
    for name, custom, text_clip in customized_models(pack, model, clip):
        cond = [entry for p in PROMPTS[:args.prompts] for entry in h.encode(text_clip, p)]
        custom = timing_clone(custom, custom_calls)

        def run() -> None:
            h.run_node(metrics.InfusionLatentFisherDivergence, base, custom, cond, latent,
                       args.timesteps, args.samples, 0, "epsilon")

        run()  # warm-up
        ratios, parts = [], []
        for _ in range(args.repeats):
            base_calls.clear()
            custom_calls.clear()
            total = timed(run)
            forward = sum(base_calls) / len(base_calls)  # one unpatched forward, this run
            other = total - sum(base_calls) - sum(custom_calls)
            ratios.append(total / cells / forward)
            parts.append((sum(custom_calls) / cells / forward, other / cells / forward))
        ratio = statistics.median(ratios)
        custom_part, other_part = (statistics.median(p[i] for p in parts) for i in (0, 1))
        print(f"{name:>9}: ratio {ratio:.2f} (goal <= 2.2) = base 1 + customized {custom_part:.2f} "
              f"+ everything else {other_part:.2f} unpatched forwards per (prompt, timestep)")


if __name__ == "__main__":
    main()
