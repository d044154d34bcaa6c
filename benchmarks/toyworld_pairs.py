"""The pairs table of benchmarks/toyworld.py: two concepts in one picture, on the two-object world (the columns:
infusion_dev/toyworld/multi.py). Each concept is trained alone from its 5 photos, per method and training seed;
then both are applied together as a user combines them:
  Infusion                      two Apply Infusion nodes chained (as the multi_concept example does)
  Train LoRA x 2, stacked       both LoRAs loaded together at a common strength of 0.5, 0.75 and 1 (a row each)
  Train LoRA x 2, each hooked   the strongest thing a user does today: each LoRA on its own prompt ("a triangle on
  to its half                   <background>"), limited to its half of the picture by a mask drawn at its bounds
                                (ComfyUI's Create Hook LoRA and Cond Set Props, Conditioning Combine): a layout the
                                user draws, the triangle on the left; a concept alone gets its hooked prompt over the
                                whole picture
  Custom Diffusion x 2, summed  its authors' merge of two concepts: the fine-tuned deltas added
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

LORA_STRENGTHS = (0.5, 0.75, 1.0)


@dataclass
class PairSetting:
    seeds: list[int]
    per_prompt: int  # samples of each pair prompt (8 prompts) and of each alone prompt (4 a concept)
    lfd_samples: int
    others_per_prompt: int
    steps: int  # every method's training steps
    sample_seed: int = 2000


@dataclass
class Customized:
    """Both concepts as one method combines them; `condition(prompt, background)`: the conditioning the user builds
    for a prompt that says the words (None: the prompt as CLIP Text Encode gives it)."""
    name: str
    model: Any
    clip: Any
    condition: Callable[[str, str], list] | None = None


@dataclass
class Row:
    name: str
    runs: list[dict[str, float]] = field(default_factory=list)


def measure(custom: Customized, probe: Any, base: Any, base_features: torch.Tensor,
            setting: PairSetting) -> tuple[dict[str, float], Any]:
    """Every column but LFD for one customized model, and its pair samples; `base`: the base model's."""
    from infusion.metrics import feature_wasserstein
    from infusion_dev.toyworld import multi

    model, clip = custom.model, custom.clip
    samples = multi.draw_samples(model, clip, probe, multi.pair_prompts(), setting.per_prompt, setting.sample_seed,
                                 custom.condition)
    first, second = multi.CONCEPTS
    row = {"both": samples.rate(multi.both_right(first, second)),
           "leakage": samples.rate(multi.leaked(first, second)) - base.rate(multi.leaked(first, second)),
           "missing": samples.rate(multi.missing_or_fused), "context": samples.rate(multi.in_context),
           "w2": feature_wasserstein(multi.half_features(probe, samples.all_latents()), base_features).gaussian,
           "others": multi.other_accuracy(model, clip, probe, setting.others_per_prompt, setting.sample_seed)}
    for concept in multi.CONCEPTS:
        alone = multi.draw_samples(model, clip, probe, multi.alone_prompts(concept), setting.per_prompt,
                                   setting.sample_seed + 100, custom.condition)
        row[concept.word] = samples.rate(multi.concept_drawn(concept))
        row[f"gap {concept.word}"] = alone.rate(multi.alone_right(concept)) - row[concept.word]
    return row, samples


def infusion_pair(model: Any, clip: Any, seed: int, setting: PairSetting) -> list[Customized]:
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld import multi

    for concept in multi.CONCEPTS:
        trained = cz.train_infusion(model, clip, concept.photos(), seed=seed, word=concept.word,
                                    output_name=f"pairs_{concept.word}_{seed}", steps=setting.steps)
        model, clip = cz.apply_infusion(model, clip, trained)
    return [Customized("Infusion, defaults (two Apply Infusion nodes)", model, clip)]


def lora_pair(model: Any, clip: Any, seed: int, setting: PairSetting, rank: int, learning_rate: float,
              checkpointing: bool) -> list[Customized]:
    from infusion_dev import comfy_versions
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld import multi

    loras = [cz.train_lora(model, clip, c.photos(), [f"a {c.word}"] * 5, seed=seed, rank=rank, steps=setting.steps,
                           learning_rate=learning_rate, gradient_checkpointing=checkpointing)[1]
             for c in multi.CONCEPTS]
    rows = []
    for strength in LORA_STRENGTHS:
        patched = model
        for lora in loras:
            patched = comfy_versions.apply_lora(patched, lora, strength)
        rows.append(Customized(f"ComfyUI Train LoRA x 2, stacked at {strength:g}", patched, clip))
    return rows + [Customized("ComfyUI Train LoRA x 2, each hooked to its half (masks)", model, clip,
                              hooked_halves(clip, loras))]


def hooked_halves(clip: Any, loras: list[dict]) -> Callable[[str, str], list]:
    """The conditioning a user builds with ComfyUI's hook and mask nodes: for each concept the prompt says, "a <word>
    on <background>" with that concept's LoRA hooked to it (Create Hook LoRA, model strength 1) and, when both are
    said, masked to its half (Cond Set Props at "mask bounds": the model draws each prompt at its half's size, where
    "default" would take a half of a whole picture drawn for one object, often the empty half; the triangle left, the
    ring right), combined."""
    import comfy.hooks
    from comfy_extras.nodes_hooks import ConditioningSetProperties

    from infusion_dev.toyworld import multi, pairs, scenes
    from infusion_dev.toyworld.sampling import encode

    hooks = {c.word: comfy.hooks.create_hook_lora(lora, 1.0, 0.0) for c, lora in zip(multi.CONCEPTS, loras)}
    left = torch.zeros(1, scenes.SIZE, pairs.WIDTH)
    left[..., :scenes.SIZE] = 1.0
    masks = {multi.TRIANGLE.word: left, multi.RING.word: 1.0 - left}

    def condition(prompt: str, background: str) -> list:
        said = [c.word for c in multi.CONCEPTS if c.word in prompt.split()]
        combined = []
        for word in said:
            region = {"mask": masks[word]} if len(said) > 1 else {}
            combined += ConditioningSetProperties().set_properties(encode(clip, f"a {word} on {background}"), 1.0,
                                                                   "mask bounds", hooks=hooks[word], **region)[0]
        return combined
    return condition


def custom_diffusion_pair(model: Any, clip: Any, seed: int, setting: PairSetting,
                          learning_rate: float) -> list[Customized]:
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld import multi

    merged = cz.fresh_copy(model)
    targets = cz.custom_diffusion_weights(merged)
    base = {name: w.detach().clone() for name, (w, _) in targets.items()}
    for concept in multi.CONCEPTS:
        custom, _ = cz.train_custom_diffusion(model, clip, concept.photos(), f"a {concept.word}", setting.steps,
                                              learning_rate, seed=seed)
        with torch.no_grad():
            for name, (w, _) in cz.custom_diffusion_weights(custom).items():
                targets[name][0].add_(w.detach() - base[name])
    return [Customized("Custom Diffusion x 2, deltas summed", merged, clip)]


def pairs_table(model: Any, clip: Any, probe: Any, setting: PairSetting,
                methods: list[Callable[..., list[Customized]]]) -> tuple[str, list]:
    """Train and measure every method over the seeds: the markdown table (the base model's row first), and the
    grid's rows (each method's first seed: {background: samples of the first pair prompt})."""
    from infusion_dev.toyworld import customize as cz
    from infusion_dev.toyworld import multi

    base = multi.draw_samples(model, clip, probe, multi.pair_prompts(), setting.per_prompt, setting.sample_seed)
    base_features = multi.half_features(probe, base.all_latents())
    base_row, _ = measure(Customized("base model", model, clip), probe, base, base_features, setting)
    first_prompts = {bg: prompt for prompt, bg in multi.pair_prompts()[::2]}
    grid = [("base model", {bg: base.latents[p] for bg, p in first_prompts.items()})]
    no_word = [prompt for prompt, _, _ in multi.other_prompts()]
    rows: dict[str, Row] = {}
    for method in methods:
        for seed in setting.seeds:
            for custom in method(model, clip, seed, setting):
                name = custom.name
                run, samples = measure(custom, probe, base, base_features, setting)
                run["lfd"] = cz.latent_fisher_divergence(model, custom.model, custom.clip, samples=setting.lfd_samples,
                                                         prompts=no_word, reference=multi.other_scenes())
                if name not in rows:
                    grid.append((name, {bg: samples.latents[p] for bg, p in first_prompts.items()}))
                rows.setdefault(name, Row(name)).runs.append(run)
                print(f"pairs | {name}, seed {seed}: {run}", flush=True)
    return _markdown(base_row, list(rows.values()), setting, base.rate(multi.leaked(*multi.CONCEPTS))), grid


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3g}" if len(values) < 2 else f"{mean:.3g} ± {statistics.stdev(values):.2g}"


def _markdown(base_row: dict, rows: list[Row], setting: PairSetting, base_leakage: float) -> str:
    from infusion_dev.toyworld import multi
    first, second = (c.word for c in multi.CONCEPTS)
    lines = [f"**Two concepts in one picture**: {multi.TRIANGLE.name} (`{first}`) and {multi.RING.name} "
             f"(`{second}`), each trained alone; \"a {first} and a {second} on <background>\" ({len(setting.seeds)} "
             f"training seed(s), {8 * setting.per_prompt} samples a seed; mean ± sd over seeds; leakage above the "
             f"base model's {base_leakage:.3g})", "",
             f"| method | both right | {first} | {second} | leakage | missing or fused | gap {first} | gap {second} "
             "| context | others right | LFD (no word) | W2 to base |", "|" + " --- |" * 12]
    for name, runs in [("base model", [base_row | {"lfd": 0.0, "w2": 0.0}])] + [(r.name, r.runs) for r in rows]:
        col = lambda key: _spread([run[key] for run in runs])  # noqa: E731
        lines.append(f"| {name} | {col('both')} | {col(first)} | {col(second)} | {col('leakage')} | {col('missing')} "
                     f"| {col('gap ' + first)} | {col('gap ' + second)} | {col('context')} | {col('others')} "
                     f"| {col('lfd')} | {col('w2')} |")
    return "\n".join(lines)
