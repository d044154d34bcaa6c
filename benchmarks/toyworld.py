"""The customization benchmark on the toy world: Infusion against ComfyUI's own Train LoRA (each through its
node) and Custom Diffusion (the paper's main rival: the text-to-key/value weights fine-tuned), on a base model
that truly knows its world (infusion_dev/toyworld).

Each concept: 5 photos, all on stripes, bound to the word "triangle". Per method and training seed:
  concept rate   samples of "a triangle on <background>" (every background) in which the probe sees the concept
  context rate   in the same samples, how often the probe sees the background asked for (collapse onto the
                 photos' stripes is the paper's concept-specific overfitting)
  LFD            the pack's Latent Fisher divergence node, prompts without the word (concept-agnostic overfitting)
  W2             Wasserstein-2 (Gaussian) between the concept's samples and the base model's samples of "a triangle
                 on <background>", in the probe's feature space, through the pack's metric core
  others         probe accuracy (colour, shape and background all right) on prompts without the word
  params, file, time   trained numbers, file size, training time as a ratio to the table's first method
Tables (--tables): "known", a concept the base model can draw but not on call (a green triangle); "new", one
it cannot draw at all (a purple triangle with a black dot); "collapse", the green triangle from 2 photos at 3x
every method's steps, where overfitting onto the photos' background can show; "curve", concept rate against
training steps (one seed, half the samples).
Two base models of the same world: the UNet (`--model unet`, the default) and the Flux-class DiT
(`--model dit`, toyworld/dit.py), where Infusion's image-queries variant is measured too.
Writes results.md and the pictures (grid_<table>.png, curve.png, previews.png) to benchmarks/out/toyworld[_dit]
(or --out; --docs: the pictures also to docs/, as toyworld[_dit]_<picture>.png).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/toyworld.py [--model dit] [--quick | --smoke] [--tables ...]
        [--seeds N] [--docs] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)  # the repository: infusion_dev
OUT = os.path.join(ROOT, "benchmarks", "out", "toyworld")
PREVIEW_GRIDS: dict[str, torch.Tensor] = {}
# ComfyUI's Train LoRA, at the settings that suit this world (chosen by its concept rate on "a green triangle").
LORA_RANK, LORA_LR = 4, 0.003
# Custom Diffusion (benchmark code: customize.train_custom_diffusion), chosen alike.
CD_LR = 1e-3
TABLES = ("known", "new", "collapse", "curve", "steps", "rescale")
# Asked for by name (--tables pairs): the two-object world's base models, trained apart from the one-object ones.
EXTRA_TABLES = ("pairs",)
RIVAL_STEPS = 500  # both rivals' steps, as Infusion's defaults
# The collapse case: fewer photos (2, all on stripes) and three times every method's steps.
COLLAPSE_PHOTOS, COLLAPSE_STEPS = 2, 3
# The curves: concept rate after these steps (Infusion: snapshots of one run; LoRA and Custom Diffusion: a run each).
CURVE_STEPS = (25, 50, 100, 200, 300, 500, 750, 1000)
# Infusion alone, every seed, a run per point: up to four times the default (500).
STEPS_CURVE = (25, 50, 100, 250, 500, 1000, 2000)
# --rescale: the base model's attention layers rescaled (values x a, output projection / a), as rows of a table.
RESCALES = {"none": "the model as trained", "layers": "values x a per layer, a in [0.1, 10]",
            "0.1": "values x 0.1 in every layer", "10": "values x 10 in every layer"}


@dataclass
class Method:
    name: str
    train: Callable[[Any, Any, torch.Tensor, int], tuple[Any, Any, int, int]]  # -> model, clip, params, file bytes
    rows: list[dict[str, float]] = field(default_factory=list)


def infusion_method(name: str, previews: bool = False, **inputs: Any) -> Method:
    """Train Infusion Concept; with `previews`, the first seed's run also draws its preview grid."""
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld.model import LatentView
    from infusion_dev.toyworld.sampling import SAMPLER

    def train(model, clip, photos, seed):
        shown = {}
        if previews and seed == 0:
            shown = dict(vae=LatentView(), sample_every=max(1, inputs.get("steps", 500) // 5),
                         sample_steps=SAMPLER["steps"],
                         sample_cfg=4.0, sample_size=8 * 16, sample_prompts="\n".join(
                             cz.context_prompt(bg).replace(cz.WORD, "{}") for bg in ("white", "black", "checks")))
        output = cz.train_infusion_outputs(model, clip, photos, seed=seed, output_name=f"toyworld_{seed}",
                                           **inputs, **shown)
        concept = output[0]
        if shown:
            PREVIEW_GRIDS[name] = output[4]
        path = os.path.join(_models_folder(), f"toyworld_{seed}.safetensors")
        applied, word_clip = cz.apply_infusion(model, clip, concept)
        return applied, word_clip, sum(v.numel() for v in concept.values.values()), os.path.getsize(path)
    return Method(name, train)


def custom_diffusion_method(name: str, out: str, steps: int, learning_rate: float) -> Method:
    from infusion_dev.toyworld import customize as cz
    from safetensors.torch import save_file

    def train(model, clip, photos, seed):
        custom, count = cz.train_custom_diffusion(model, clip, photos, f"a {cz.WORD}", steps, learning_rate, seed=seed)
        path = os.path.join(out, f"custom_diffusion_{seed}.safetensors")
        weights = {name: (w[rows] if rows is not None else w).detach().half().contiguous()
                   for name, (w, rows) in cz.custom_diffusion_weights(custom).items()}
        save_file(weights, path)  # fp16, as Custom Diffusion saves its weights
        return custom, clip, count, os.path.getsize(path)
    return Method(name, train)


def rivals(out: str, steps: int, dit: bool) -> list[Method]:
    """Custom Diffusion and ComfyUI's Train LoRA at their settings, `steps` steps each."""
    # ComfyUI's Train LoRA cannot backpropagate through Flux's in-place blocks without its checkpointing.
    return [custom_diffusion_method("Custom Diffusion", out, steps, CD_LR),
            lora_method(f"ComfyUI Train LoRA, rank {LORA_RANK}", out, rank=LORA_RANK, steps=steps,
                        learning_rate=LORA_LR, gradient_checkpointing=dit)]


def lora_method(name: str, out: str, **inputs: Any) -> Method:
    from infusion_dev.toyworld import customize as cz
    from safetensors.torch import save_file

    def train(model, clip, photos, seed):
        captions = [f"a {cz.WORD}"] * len(photos)
        patched, lora = cz.train_lora(model, clip, photos, captions, seed=seed, **inputs)
        path = os.path.join(out, f"lora_{seed}.safetensors")
        save_file({k: v.detach().contiguous() for k, v in lora.items()}, path)
        return patched, clip, sum(v.numel() for v in lora.values()), os.path.getsize(path)
    return Method(name, train)


def pairs_table(kind: str, run: str, steps: int) -> tuple[str, list]:
    """Two concepts in one picture (toyworld_pairs.py), on the two-object world's `kind` base model."""
    from functools import partial

    import toyworld_pairs as tp
    from infusion_dev.toyworld import pairs, probe
    from infusion_dev.toyworld.train import load_probe

    setting = {"smoke": tp.PairSetting([0], 1, 2, 1, steps), "quick": tp.PairSetting([0], 4, 4, 2, steps),
               "full": tp.PairSetting([0, 1, 2], 12, 8, 8, steps)}[run]
    model, clip = pairs.load(kind)
    methods = [tp.infusion_pair, partial(tp.lora_pair, rank=LORA_RANK, learning_rate=LORA_LR, checkpointing=kind == "dit"),
               partial(tp.custom_diffusion_pair, learning_rate=CD_LR)]
    return tp.pairs_table(model, clip, load_probe(pairs.PROBE_WEIGHTS, probe.HALF_HEADS), setting, methods)


def _models_folder() -> str:
    import folder_paths
    return folder_paths.get_folder_paths("infusion")[0]


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3g}" if len(values) < 2 else f"{mean:.3g} ± {statistics.stdev(values):.2g}"


@dataclass
class Setting:
    """One run of the benchmark: its sizes, and what every method is measured against."""

    seeds: list[int]
    per_background: int
    lfd_samples: int
    others_per_prompt: int
    sample_seed: int = 1000


@dataclass
class Baseline:
    """The base model's samples, the same for every concept (its prompts do not depend on the concept)."""

    samples: Any
    others: float
    features: torch.Tensor


def baseline(model: Any, clip: Any, probe: Any, setting: Setting) -> Baseline:
    from infusion_dev.toyworld import customize as cz
    samples = cz.context_samples(model, clip, probe, setting.per_background, setting.sample_seed)
    return Baseline(samples, cz.other_accuracy(model, clip, probe, setting.others_per_prompt, setting.sample_seed),
                    cz.probe_features(probe, samples.all_latents()))


def measure(concept: Any, methods: list[Method], model: Any, clip: Any, probe: Any, setting: Setting,
            reference: Baseline, photos: torch.Tensor, title: str) -> tuple:
    """Train every method on the photos for every seed; returns (table, grid rows)."""
    from infusion.metrics import feature_wasserstein
    from infusion_dev.toyworld import customize as cz

    base = reference.samples
    grid_rows = [("base model", base.latents)]
    colours = [f"base model: {base.colours()}"]
    for method in methods:
        for seed in setting.seeds:
            started = time.perf_counter()
            custom, custom_clip, params, size = method.train(model, clip, photos, seed)
            seconds = time.perf_counter() - started
            samples = cz.context_samples(custom, custom_clip, probe, setting.per_background, setting.sample_seed)
            w2 = feature_wasserstein(cz.probe_features(probe, samples.all_latents()), reference.features).gaussian
            method.rows.append({
                "concept": samples.concept_rate(concept), "context": samples.context_rate(),
                "lfd": cz.latent_fisher_divergence(model, custom, custom_clip, samples=setting.lfd_samples), "w2": w2,
                "others": cz.other_accuracy(custom, custom_clip, probe, setting.others_per_prompt, setting.sample_seed),
                "params": params, "bytes": size, "seconds": seconds})
            if seed == setting.seeds[0]:
                grid_rows.append((method.name, samples.latents))
                colours.append(f"{method.name}: {samples.colours()}")
            print(f"{concept.name} | {method.name}, seed {seed}: {method.rows[-1]}", flush=True)
    return table(concept, methods, setting, reference, title, colours), grid_rows


def table(concept: Any, methods: list[Method], setting: Setting, reference: Baseline, title: str,
          colours: list[str] | None = None) -> str:
    """The markdown table of the methods' rows, the base model first (and the colours the probe saw)."""
    base = reference.samples
    first_time = statistics.fmean(r["seconds"] for r in methods[0].rows)
    lines = [f"**{title}** ({len(setting.seeds)} training seed(s), {setting.per_background * 4} samples per "
             f"seed for the rates; mean ± sd over seeds; training time relative to {methods[0].name})", "",
             "| method | concept rate | context rate | LFD (no word) | W2 to base | others right | trained numbers "
             "| file | training time |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| base model | {base.concept_rate(concept):.3g} | {base.context_rate():.3g} | 0 | 0 | "
             f"{reference.others:.3g} | - | - | - |"]
    for m in methods:
        col = lambda key: [r[key] for r in m.rows]  # noqa: E731
        lines.append(f"| {m.name} | {spread(col('concept'))} | {spread(col('context'))} | {spread(col('lfd'))} | "
                     f"{spread(col('w2'))} | {spread(col('others'))} | {int(m.rows[0]['params']):,} | "
                     f"{m.rows[0]['bytes'] / 1024:.1f} KB | {statistics.fmean(col('seconds')) / first_time:.2f}x |")
    if colours:
        lines += ["", "Colours the probe saw in the samples of the first seed: " + "; ".join(colours) + "."]
    return "\n".join(lines)


CURVE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def curve_png(curves: dict[str, list[tuple[int, float]]], path: str, title: str) -> None:
    """Concept rate (y, 0-1) against training steps (x), a line per method, its legend at the bottom right."""
    from PIL import Image, ImageDraw

    width, height, left, top, right, bottom = 640, 360, 48, 28, 620, 320
    last = max(step for points in curves.values() for step, _ in points)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    at = lambda step, rate: (left + (right - left) * step / last, bottom - (bottom - top) * rate)  # noqa: E731
    draw.text((left, 8), title, fill="black")
    for rate in (0, 0.25, 0.5, 0.75, 1.0):
        y = at(0, rate)[1]
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{rate:.2f}", fill="black")
    for step in sorted({step for points in curves.values() for step, _ in points}):
        draw.text((at(step, 0)[0] - 8, bottom + 6), str(step), fill="black")
    for i, (name, points) in enumerate(curves.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        xy = [at(step, rate) for step, rate in points]
        draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((right - 250, bottom - 20 - 14 * (len(curves) - i)), name, fill=colour)
    canvas.save(path)


def infusion_curve(concept: Any, model: Any, clip: Any, probe: Any, per_background: int, seed: int,
                   sample_seed: int, points: list[int]) -> list[tuple[int, float, float]]:
    """(steps, concept rate, context rate) of Infusion at the defaults after each of `points` steps: snapshots of
    one run of points[-1] steps, each read back through Load Infusion as a user picks one."""
    import math

    import nodes
    from infusion_dev.toyworld import customize as cz

    name = f"curve_{seed}"
    cz.train_infusion(model, clip, concept.photos(), seed=seed, steps=points[-1], save_every=math.gcd(*points),
                      output_name=name)
    found = []
    for step in points:
        file = f"{name}.safetensors" if step == points[-1] else f"{name}_step{step:05d}.safetensors"
        with torch.inference_mode():
            snapshot = nodes.NODE_CLASS_MAPPINGS["LoadInfusion"].execute(file).result[0]
        samples = cz.context_samples(*cz.apply_infusion(model, clip, snapshot), probe, per_background, sample_seed)
        found.append((step, samples.concept_rate(concept), samples.context_rate()))
    return found


def atomic_json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def steps_table(concept: Any, model: Any, clip: Any, probe: Any, setting: Setting, scale: float, out: str) -> str:
    """Concept rate against steps for Infusion at the defaults, up to four times the default, every seed: a run
    per point (the learning rate's cosine spans each run's own steps, so a snapshot of a longer run is not the
    concept a run of that length makes). Draws steps.png (every seed and the mean)."""
    from infusion_dev.toyworld import customize as cz

    points = sorted({max(1, round(n * scale)) for n in STEPS_CURVE})
    per_background = max(1, setting.per_background // 2)
    # Each point is recorded as it is measured, so that a stopped run resumes where it was (hours on a CPU);
    # delete steps_points.json (or give another --out) to measure changed code again.
    record = os.path.join(out, "steps_points.json")
    measured = json.load(open(record)) if os.path.exists(record) else {}
    runs = {}
    for seed in setting.seeds:
        runs[seed] = []
        for steps in points:
            key = f"{seed},{steps},{per_background}"
            if key not in measured:
                concept_now = cz.train_infusion(model, clip, concept.photos(), seed=seed, steps=steps,
                                                output_name=f"steps_{seed}_{steps}")
                samples = cz.context_samples(*cz.apply_infusion(model, clip, concept_now), probe, per_background,
                                             setting.sample_seed)
                measured[key] = [samples.concept_rate(concept), samples.context_rate()]
                atomic_json(record, measured)
            runs[seed].append((steps, *measured[key]))
            print(f"steps | seed {seed}: {runs[seed][-1]}", flush=True)
    mean = [statistics.fmean(run[i][1] for run in runs.values()) for i in range(len(points))]
    curve_png({f"seed {s}": [(n, c) for n, c, _ in run] for s, run in runs.items()} |
              {"mean": list(zip(points, mean))}, os.path.join(out, "steps.png"),
              f"{concept.name}: Infusion's concept rate against its training steps ({per_background * 4} samples "
              "a point, a run per point)")
    default = max(1, round(500 * scale))
    later = [m for n, m in zip(points, mean) if n >= default]
    lines = [f"**Concept rate against training steps, Infusion at the defaults**, {concept.name} "
             f"({len(runs)} seed(s), a run per point, {per_background * 4} samples a point; concept rate / "
             "context rate)", "",
             "| seed | " + " | ".join(str(p) for p in points) + " |", "| --- |" + " --- |" * len(points)]
    for seed, run in runs.items():
        lines.append(f"| {seed} | " + " | ".join(f"{c:.2f} / {x:.2f}" for _, c, x in run) + " |")
    lines += ["| mean concept rate | " + " | ".join(f"{m:.3f}" for m in mean) + " |", "",
              f"From the default ({default} steps) to four times it: lowest mean {min(later):.3f}, peak "
              f"{max(mean):.3f} (the goal: within 0.05 of the peak)."]
    return "\n".join(lines)


def rescale_table(model: Any, clip: Any, probe: Any, setting: Setting, reference: Baseline, kinds: list[str],
                  steps: int) -> str:
    """Infusion at the defaults on the base model with its attention layers rescaled (values times a, the
    projection of the attention output divided by a: the same model to float rounding), beside the model as it
    is: the trained concept should not depend on a checkpoint's value scale."""
    from infusion_dev.toyworld import customize as cz

    methods = []
    for kind in ["none"] + kinds:
        method = infusion_method(f"Infusion, defaults, {RESCALES[kind]}", steps=steps)
        with rescaled(model, kind):
            measure(cz.KNOWN, [method], model, clip, probe, setting, reference, cz.KNOWN.photos(), "")
        methods.append(method)
    return table(cz.KNOWN, methods, setting, reference,
                 f"{cz.KNOWN.name}, on rescaled copies of the base model (LFD: against that copy)")


@contextmanager
def rescaled(model: Any, kind: str) -> Iterator[None]:
    """The model's attention layers rescaled in place by RESCALES[kind], restored bit for bit afterwards."""
    from infusion_dev import comfy_harness as h

    if kind == "none":
        yield
        return
    if kind == "layers":
        g = torch.Generator().manual_seed(11)
        factor = lambda: float(10 ** (torch.rand((), generator=g) * 2 - 1))  # noqa: E731
    else:
        factor = lambda: float(kind)  # noqa: E731
    with h.rescaled_values(model, factor):
        yield


def curves(concept: Any, model: Any, clip: Any, probe: Any, per_background: int, seed: int, sample_seed: int,
           scale: float, out: str) -> str:
    """Concept and context rate against steps: Infusion's defaults (snapshots of one run), Train LoRA and Custom
    Diffusion (one run per point, up to their table's steps). Returns the markdown lines; draws curve.png."""
    from infusion_dev.toyworld import customize as cz

    photos = concept.photos()
    points = sorted({max(1, round(n * scale)) for n in CURVE_STEPS})

    def rate(custom, custom_clip):
        samples = cz.context_samples(custom, custom_clip, probe, per_background, sample_seed)
        return samples.concept_rate(concept), samples.context_rate()

    found = {"Infusion, defaults": infusion_curve(concept, model, clip, probe, per_background, seed, sample_seed,
                                                  points)}
    short = [p for p in points if p <= max(1, round(RIVAL_STEPS * scale))]
    for i in (1, 0):  # Train LoRA, then Custom Diffusion: a run per point
        by_steps = {n: rivals(out, n, cz.is_dit(model))[i] for n in short}
        label = by_steps[short[0]].name
        found[label] = [(n, *rate(*method.train(model, clip, photos, seed)[:2])) for n, method in by_steps.items()]
        print(f"curve | {label}: {found[label]}", flush=True)
    curve_png({k: [(n, c) for n, c, _ in v] for k, v in found.items()}, os.path.join(out, "curve.png"),
              f"{concept.name}: concept rate against training steps (seed {seed}, {per_background * 4} samples a point)")
    lines = [f"**Concept rate against training steps**, {concept.name} (training seed {seed}, {per_background * 4} "
             "samples a point; concept rate / context rate)", "",
             "| method | " + " | ".join(str(p) for p in points) + " |", "| --- |" + " --- |" * len(points)]
    for label, values in found.items():
        by_step = {n: f"{c:.2f} / {x:.2f}" for n, c, x in values}
        lines.append(f"| {label} | " + " | ".join(by_step.get(p, "-") for p in points) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one seed, fewer steps and samples (about 5 minutes)")
    size.add_argument("--smoke", action="store_true", help="a few steps and samples: checks that it runs, measures "
                      "nothing (about a minute)")
    parser.add_argument("--model", choices=["unet", "dit"], default="unet", help="the toy world's UNet or its DiT")
    parser.add_argument("--out", default=None, help="where results.md and the pictures go")
    parser.add_argument("--docs", action="store_true", help="also copy the pictures to docs/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tables", type=lambda v: v.split(","), default=list(TABLES),
                        help=f"which of {','.join(TABLES + EXTRA_TABLES)} (comma-separated; default all but "
                             f"{','.join(EXTRA_TABLES)})")
    parser.add_argument("--rescale", type=lambda v: v.split(","), default=["layers", "0.1", "10"],
                        help="the rescaled copies of the rescale table: layers (a per layer in [0.1, 10]), 0.1, 10; "
                             "none: only the model as trained")
    parser.add_argument("--seeds", type=int, default=0, help="training seeds per table (default: 3, --quick 1)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first training seed (e.g. --first-seed 1 --seeds 2: seeds 1 and 2)")
    parser.add_argument("--weight-dtype", default="default",
                        choices=["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],
                        help="the DiT's weights as Load Diffusion Model loads them with this weight_dtype")
    parser.add_argument("--method", action="append", dest="methods", default=None,
                        help="only the methods whose names start with this (e.g. 'Infusion, defaults'); "
                             "repeatable; default every method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tag = "_dit" if args.model == "dit" else ""
    out = args.out or OUT + tag
    os.makedirs(out, exist_ok=True)
    from infusion_dev.comfy_harness import start_comfy
    # ComfyUI's folders (models/infusion, where the trained concepts go) inside `out`, not in the user's ComfyUI.
    start_comfy(["--use-pytorch-cross-attention", "--base-directory", os.path.join(out, "comfyui")])
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld.pictures import grid_png
    from infusion_dev.toyworld.train import load_probe, world_model

    run = "smoke" if args.smoke else "quick" if args.quick else "full"
    setting = {"smoke": Setting([0], 1, 2, 1), "quick": Setting([0], 8, 4, 2),
               "full": Setting([0, 1, 2], 24, 8, 8)}[run]
    if args.smoke:  # it only has to run: every sampler (benchmark and previews) takes 2 steps instead of 20
        from infusion_dev.toyworld import sampling
        sampling.SAMPLER["steps"] = 2
    if args.seeds:
        setting.seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    scale = {"smoke": 0.01, "quick": 0.25, "full": 1.0}[run]
    steps = lambda n: max(1, round(n * scale))  # noqa: E731
    dit = args.model == "dit"

    def methods(factor: int = 1, previews: bool = False, known: bool = False) -> list[Method]:
        """Infusion at the node's defaults (and, for the known concept, the authors' settings on the UNet and
        the image-queries variant on the DiT), Custom Diffusion and Train LoRA, every one at `factor` x its steps."""
        n = lambda base: steps(base * factor)  # noqa: E731
        rows = [infusion_method("Infusion, defaults", previews=previews, steps=n(500))]
        if known and dit:
            rows.append(infusion_method("Infusion, defaults, image queries only", steps=n(500),
                                        variant="image-queries"))
        if known and not dit:
            rows.append(infusion_method("Infusion, the authors' settings (lr 0.01, 500 x 4 x 4)",
                                        **{**cz.AUTHORS, "steps": n(cz.AUTHORS["steps"])}))
        return rows + rivals(out, n(RIVAL_STEPS), dit)

    runs = {  # table: (concept, photos, title, methods)
        "known": (cz.KNOWN, cz.KNOWN.photos(), cz.KNOWN.name, lambda: methods(previews=True, known=True)),
        "new": (cz.NEW, cz.NEW.photos(), cz.NEW.name, methods),
        "collapse": (cz.KNOWN, cz.KNOWN.photos(COLLAPSE_PHOTOS),
                     f"{cz.KNOWN.name}, the collapse case: {COLLAPSE_PHOTOS} photos, {COLLAPSE_STEPS} x every method's "
                     "steps", lambda: methods(COLLAPSE_STEPS)),
    }
    if args.weight_dtype != "default" and args.model != "dit":
        parser.error("--weight-dtype is for the DiT (--model dit)")
    model, clip = world_model(args.model).load(**({} if args.weight_dtype == "default" else
                                                   {"weight_dtype": args.weight_dtype}))
    probe = load_probe()
    tables = []
    unknown = set(args.tables) - set(TABLES + EXTRA_TABLES)
    if unknown:
        parser.error(f"unknown tables {', '.join(sorted(unknown))} (known: {', '.join(TABLES + EXTRA_TABLES)})")
    reference = baseline(model, clip, probe, setting) if set(args.tables) - {"curve", "steps", "pairs"} else None
    for key in args.tables:
        if key == "curve":
            tables.append(curves(cz.KNOWN, model, clip, probe, max(1, setting.per_background // 2), setting.seeds[0],
                                 setting.sample_seed, scale, out))
        elif key == "steps":
            tables.append(steps_table(cz.KNOWN, model, clip, probe, setting, scale, out))
        elif key == "pairs":
            text, grid = pairs_table(args.model, run, steps(500))
            tables.append(text)
            grid_png(grid, os.path.join(out, "grid_pairs.png"), heading=lambda bg: f"a triangle and a ring on {bg}")
        elif key == "rescale":
            kinds = [kind for kind in args.rescale if kind not in ("", "none")]
            tables.append(rescale_table(model, clip, probe, setting, reference, kinds, steps(500)))
        else:
            concept, photos, title, rows = runs[key]
            chosen = [m for m in rows() if not args.methods or m.name.startswith(tuple(args.methods))]
            text, grid = measure(concept, chosen, model, clip, probe, setting, reference, photos, title)
            tables.append(text)
            grid_png(grid, os.path.join(out, f"grid_{key}.png"))
    minutes = (time.perf_counter() - started) / 60
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"Toy world, {args.model}{'' if args.weight_dtype == 'default' else ', weights ' + args.weight_dtype} "
                f"({run} run, {minutes:.0f} minutes)\n\n" + "\n\n".join(tables) + "\n")
    from PIL import Image
    for grid in PREVIEW_GRIDS.values():
        Image.fromarray((grid[0].numpy() * 255).round().astype("uint8")).save(os.path.join(out, "previews.png"))
    if args.docs:
        os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
        pictures = [key if key in ("curve", "steps") else f"grid_{key}" for key in args.tables if key != "rescale"]
        for picture in pictures + (["previews"] if PREVIEW_GRIDS else []):
            shutil.copyfile(os.path.join(out, f"{picture}.png"),
                            os.path.join(ROOT, "docs", f"toyworld{tag}_{picture}.png"))
    print("\n\n".join(tables))
    print(f"wrote {os.path.join(out, 'results.md')} and the pictures beside it")


if __name__ == "__main__":
    main()
