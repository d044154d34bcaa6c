"""Customizing the toy world's base model, and measuring what it drew afterwards.

A concept is what a user's dog is to Stable Diffusion, shown in a few photos that all share one
background (stripes), to be bound to its class word ("triangle"). Two are measured:
- KNOWN: a green triangle. The base model can draw it, but "a triangle" gives triangles of any colour, as
  "a dog" gives any dog: the case Infusion is made for (SD can draw the user's dog, not on call).
- NEW: a purple triangle with a black dot: a colour and a mark the base model never saw, so nothing in
  it can draw them.
Each method runs through its ComfyUI node: Train Infusion Concept, and ComfyUI's own Train LoRA. Every
figure comes from the probe reading samples drawn by ComfyUI's KSampler.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from infusion import compat

from .. import comfy_versions
from . import scenes
from .probe import Probe, Reading, read
from .sampling import sample

WORD = "triangle"
PHOTO_BACKGROUND = "stripes"
OTHER_SHAPES = tuple(s for s in scenes.SHAPES if s != WORD)
# The authors' settings (the node's defaults were these before the toy world measured them, README).
AUTHORS = dict(learning_rate=0.01, steps=500, gradient_accumulation=4)


@dataclass(frozen=True)
class Concept:
    name: str
    colour: str
    mark: bool

    def photos(self, count: int = 5, seed: int = 0) -> torch.Tensor:
        """The user's photos, as raw latents [count, 4, 16, 16]: the concept, all on one background."""
        rng = random.Random(seed)
        chosen = [scenes.random_scene(rng, shapes=(WORD,), colours=(self.colour,), backgrounds=(PHOTO_BACKGROUND,),
                                      mark=self.mark) for _ in range(count)]
        return scenes.to_latent(torch.stack([scenes.render(s) for s in chosen]))

    def seen_in(self, r: Reading) -> bool:
        return r.colour == self.colour and r.mark == self.mark and r.shape == WORD


KNOWN = Concept("a green triangle", "green", False)
NEW = Concept("a purple triangle with a black dot", "purple", True)


def background_captions(count: int = 5) -> Any:
    """Per-photo captions that name what the photos share besides the concept (as dog1.txt would)."""
    from infusion.training.captions import PhotoCaptions
    return PhotoCaptions(tuple((f"photo{i + 1}.txt", f"a {{}} on {PHOTO_BACKGROUND}") for i in range(count)))


def context_prompt(background: str) -> str:
    return f"a {WORD} on {background}"


@dataclass
class ContextSamples:
    """Samples of "a <word> on <background>" for every background."""

    latents: dict[str, torch.Tensor]
    readings: dict[str, list[Reading]]

    def concept_rate(self, concept: Concept) -> float:
        found = [concept.seen_in(r) for rs in self.readings.values() for r in rs]
        return sum(found) / len(found)

    def context_rate(self) -> float:
        found = [r.background == bg for bg, rs in self.readings.items() for r in rs]
        return sum(found) / len(found)

    def colours(self) -> str:
        """The colours the probe read, most frequent first ("red 36, blue 24")."""
        counts = Counter(r.colour for rs in self.readings.values() for r in rs)
        return ", ".join(f"{colour} {n}" for colour, n in counts.most_common())

    def all_latents(self) -> torch.Tensor:
        return torch.cat([self.latents[bg] for bg in scenes.BACKGROUNDS])


def context_samples(model: Any, clip: Any, probe: Probe, per_background: int, seed: int) -> ContextSamples:
    latents = {bg: sample(model, clip, context_prompt(bg), per_background, seed + i)
               for i, bg in enumerate(scenes.BACKGROUNDS)}
    return ContextSamples(latents, {bg: read(probe, x) for bg, x in latents.items()})


def other_prompts() -> list[tuple[str, tuple[str, str, str]]]:
    """Prompts without the class word, one per (colour, other shape, background) in a fixed sample."""
    rng = random.Random(11)
    combos = [(c, s, b) for c in scenes.COLOURS for s in OTHER_SHAPES for b in scenes.BACKGROUNDS]
    return [(f"a {c} {s} on {b}", (c, s, b)) for c, s, b in rng.sample(combos, 8)]


def other_accuracy(model: Any, clip: Any, probe: Probe, per_prompt: int, seed: int) -> float:
    """How often the probe reads all three asked attributes in samples of prompts without the word."""
    hits = total = 0
    for i, (prompt, (colour, shape, background)) in enumerate(other_prompts()):
        for r in read(probe, sample(model, clip, prompt, per_prompt, seed + i)):
            hits += (r.colour, r.shape, r.background) == (colour, shape, background)
            total += 1
    return hits / total


def probe_features(probe: Probe, latents: torch.Tensor) -> torch.Tensor:
    """The probe's penultimate features: the space the Wasserstein metric is taken in here."""
    with torch.no_grad():
        return probe.features(scenes.to_world(latents.float()))


def infusion_node_inputs(**overrides: Any) -> dict[str, Any]:
    """Train Infusion Concept's inputs at the node's own defaults, with what a CPU and this world need changed
    (fp32, no checkpointing: the model is small; no previews: there is no VAE)."""
    import nodes
    defaults = comfy_versions.widget_defaults(nodes.NODE_CLASS_MAPPINGS["TrainInfusion"])
    return {**defaults, "word": WORD, "output_name": "toyworld_concept", "precision": "fp32",
            "gradient_checkpointing": False, "sample_every": 0, **overrides}


def train_infusion_outputs(model: Any, clip: Any, photos: torch.Tensor, **inputs: Any) -> tuple:
    """Every output of the Train Infusion Concept node, trained on the photos' latents."""
    import nodes
    node = comfy_versions.node_class(nodes.NODE_CLASS_MAPPINGS["TrainInfusion"], "toyworld")
    with torch.inference_mode():
        return node.execute(model, clip, latents={"samples": photos}, **infusion_node_inputs(**inputs)).result


def train_infusion(model: Any, clip: Any, photos: torch.Tensor, **inputs: Any) -> Any:
    """The concept, trained by the Train Infusion Concept node on the photos' latents."""
    return train_infusion_outputs(model, clip, photos, **inputs)[0]


def apply_infusion(model: Any, clip: Any, concept: Any, strength: float = 1.0) -> tuple[Any, Any]:
    import nodes
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"].execute(model, clip, concept, strength).result


def lora_node_inputs(**overrides: Any) -> dict[str, Any]:
    defaults = dict(batch_size=4, steps=500, grad_accumulation_steps=1, learning_rate=0.0005, rank=8,
                    optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32",
                    algorithm="LoRA", gradient_checkpointing=False, existing_lora="[None]")
    return {**defaults, **overrides}


def train_lora(model: Any, clip: Any, photos: torch.Tensor, captions: Sequence[str], **inputs: Any) -> Any:
    """ComfyUI's Train LoRA on the photos (one caption per photo, as that node takes them); the patched MODEL."""
    from .sampling import encode
    positive = [c for text in captions for c in encode(clip, text)]
    with torch.inference_mode():
        lora = comfy_versions.train_lora(model, {"samples": photos}, positive, **lora_node_inputs(**inputs))
    return comfy_versions.apply_lora(model, lora, 1.0), lora


def latent_fisher_divergence(base: Any, custom: Any, clip: Any, samples: int = 8, timesteps: int = 10,
                             seed: int = 0, prompts: Sequence[str] | None = None,
                             reference: torch.Tensor | None = None) -> float:
    """The pack's Infusion Latent Fisher Divergence node on prompts without the class word (`prompts`, by default
    the one-object world's), at `reference` latents (by default 16 one-object scenes of the other shapes)."""
    import nodes
    from .sampling import encode
    texts = prompts if prompts is not None else [prompt for prompt, _ in other_prompts()]
    conditioning = [c for prompt in texts for c in encode(clip, prompt)]
    if reference is None:
        rng = random.Random(seed)
        reference = scenes.to_latent(torch.stack([scenes.render(scenes.random_scene(rng, shapes=OTHER_SHAPES))
                                                  for _ in range(16)]))
    with torch.inference_mode():
        out = nodes.NODE_CLASS_MAPPINGS["InfusionLatentFisherDivergence"].execute(
            base, custom, conditioning, {"samples": reference}, timesteps, samples, seed, "epsilon")
    return float(out.result[0])


def is_dit(model: Any) -> bool:
    """Whether a toy-world MODEL is the DiT (toyworld/dit.py) rather than the UNet."""
    return hasattr(model.model.diffusion_model, "double_blocks")


def fresh_copy(model: Any) -> Any:
    """A new MODEL over the same weights, loaded again from its file (as ComfyUI's Train LoRA copies a model)."""
    load, args = model.cached_patcher_init
    return load(*args)


def custom_diffusion_weights(model: Any) -> dict[str, tuple[torch.nn.Parameter, slice | None]]:
    """What Custom Diffusion (Kumari et al. 2023, the paper's main rival) fine-tunes: the projections from
    the text to the keys and values of every attention layer that reads it. UNet: each cross-attention's
    to_k and to_v. Flux: each double block's text-stream qkv, its key and value rows (`slice`); single blocks
    project text and image tokens with one shared weight, which is left alone."""
    from infusion.layers import cross_attention_modules
    diffusion_model = model.model.diffusion_model
    if is_dit(model):
        width = diffusion_model.hidden_size
        return {f"double.{i}.txt_attn.qkv": (b.txt_attn.qkv.weight, slice(width, 3 * width))
                for i, b in enumerate(diffusion_model.double_blocks)}
    return {f"{layer.key}.{name}": (getattr(attn2, name).weight, None)
            for layer, attn2 in cross_attention_modules(diffusion_model).items() for name in ("to_k", "to_v")}


def train_custom_diffusion(model: Any, clip: Any, photos: torch.Tensor, caption: str, steps: int,
                           learning_rate: float, batch_size: int = 4, seed: int = 0) -> tuple[Any, int]:
    """Custom Diffusion on a fresh copy of the toy world's `model` (benchmark code, not a node): AdamW (no
    weight decay) on the text-to-key/value weights only, the MSE of ComfyUI's own prediction, every photo
    captioned `caption` (as Train LoRA's photos are), no prior preservation. Returns the customized MODEL and the number of
    trained weights. The pack's training loop does the steps: it trains whatever parameters it is given."""
    from infusion.families import adapter_for
    from infusion.training.comfy_model import ComfyDenoiser, autograd_weights, in_sampling
    from infusion.training.encoding import prepare_latents
    from infusion.training.loop import TrainingSettings, train
    from .sampling import encode

    custom = fresh_copy(model)
    settings = TrainingSettings(steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                                gradient_accumulation=1, seed=seed, flip=False, weight_decay=0.0, precision="fp32",
                                schedule="constant")  # the rival as measured: a constant rate

    def run(model_wrap: Any, options: dict) -> int:
        blocks = adapter_for(custom).training_blocks(model_wrap.inner_model.diffusion_model, False, [])
        with torch.inference_mode(False), autograd_weights(model_wrap.inner_model), blocks:
            trained = custom_diffusion_weights(custom)
            hooks = []
            for weight, rows in trained.values():
                weight.requires_grad_(True)
                if rows is not None:  # only the key and value rows learn (AdamW without decay leaves the rest)
                    mask = torch.zeros_like(weight)
                    mask[rows] = 1
                    hooks.append(weight.register_hook(lambda grad, mask=mask: grad * mask))
            try:
                denoiser = ComfyDenoiser(model_wrap, options, 1, custom.load_device)
                train({name: w for name, (w, _) in trained.items()}, denoiser,
                      prepare_latents(custom, photos, None, False), 1, settings)
            finally:
                for weight, _ in trained.values():
                    weight.requires_grad_(False)
                for hook in hooks:
                    hook.remove()
            return sum(w[rows].numel() if rows is not None else w.numel() for w, rows in trained.values())

    with torch.inference_mode(False), compat.training_mode():
        count = in_sampling(custom, [encode(clip, caption)], (batch_size,) + tuple(photos.shape[1:]), seed, run)
    return custom, count
