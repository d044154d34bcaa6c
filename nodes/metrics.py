"""Infusion Metrics nodes: Latent Fisher divergence and Wasserstein-2.

Thin wrappers: the estimators and their evaluation on ComfyUI models live in
../infusion/metrics.
"""
from __future__ import annotations

import comfy.model_management
import comfy.utils
from comfy_api.latest import io, ui

from ..infusion.metrics import DEFAULT_SIGMA_FLOOR
from ..infusion.metrics.comfy_eval import image_wasserstein, latent_fisher_divergence_between

_CACHE_NOTE = " ComfyUI caches the result: the same inputs do not re-run the node."


class _Progress:
    """Advances the node's progress bar and honours Cancel between model calls."""

    def __init__(self, total: int) -> None:
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self) -> None:
        self.bar.update(1)
        comfy.model_management.throw_exception_if_processing_interrupted()


class InfusionLatentFisherDivergence(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfusionLatentFisherDivergence",
            display_name="Infusion Metrics: Latent Fisher Divergence",
            category="Infusion/metrics",
            description="Concept-agnostic overfitting: how far a customized model's noise prediction moves "
                        "from the base model's on prompts that do NOT name the concept, averaged over "
                        "timesteps and noised reference latents (same draws for both models). 0 = untouched. "
                        "Works for any customization: Infusion, LoRA, fine-tunes." + _CACHE_NOTE,
            is_output_node=True,
            inputs=[
                io.Model.Input("base_model", tooltip="The base model (SD1.x, SD2.x, SDXL, Flux, Qwen-Image, ...)."),
                io.Model.Input("custom_model", tooltip="The customized model: Infusion-applied, LoRA-patched, "
                                                       "fine-tuned... of the same family as the base model."),
                io.Conditioning.Input("conditioning",
                                      tooltip="Prompts that do not name the concept. Each conditioning entry is "
                                              "one prompt, evaluated on its own: join several CLIP Text Encode "
                                              "outputs with Conditioning (Combine)."),
                io.Latent.Input("reference_latent",
                                tooltip="Clean latents to noise, e.g. the base model's samples for these "
                                        "prompts. Their size sets the resolution evaluated."),
                io.Int.Input("timesteps", default=10, min=1, max=1000,
                             tooltip="Number of timestep strata to average over; each latent/noise draw gets "
                                     "one random timestep in every stratum. The report breaks the result "
                                     "down per stratum."),
                io.Int.Input("samples", default=4, min=2, max=4096,
                             tooltip="Latent/noise draws per (prompt, timestep). Reference latents are used "
                                     "in turn, each equally often. Cost: 2 model evaluations per draw, per "
                                     "prompt and timestep."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=False,
                             tooltip="Seed of every random draw (latent choice, timesteps, noise); keep it "
                                     "fixed to compare several customized models on the same draws."),
                io.Combo.Input("weighting", options=["epsilon", "fisher"], default="epsilon",
                               tooltip="epsilon: |eps_custom - eps_base|^2 (plain epsilon space). fisher: the "
                                       "same divided by sigma^2, the score-space Fisher divergence; sigma is "
                                       f"clamped at {DEFAULT_SIGMA_FLOOR:g} so near-clean timesteps cannot "
                                       "dominate."),
                io.Int.Input("batch_size", default=0, min=0, max=4096, optional=True,
                             tooltip="Most draws per model call (lower it if memory runs out). 0 = all "
                                     "samples of a (prompt, timestep) in one call."),
            ],
            outputs=[
                io.Float.Output("lfd", display_name="lfd", tooltip="The Latent Fisher divergence per latent element."),
                io.Float.Output("std_error", display_name="std_error", tooltip="Its standard error over the latent/noise draws."),
                io.String.Output("report", display_name="report", tooltip="Readable summary with the per-timestep breakdown."),
            ],
        )

    @classmethod
    def execute(cls, base_model, custom_model, conditioning, reference_latent, timesteps, samples, seed,
                weighting, batch_size=0) -> io.NodeOutput:
        result = latent_fisher_divergence_between(
            base_model, custom_model, conditioning, reference_latent, n_timesteps=timesteps, n_samples=samples,
            seed=seed, weighting=weighting, batch_size=batch_size or None, progress=_Progress)
        report = result.report()
        return io.NodeOutput(result.value, result.stderr, report, ui=ui.PreviewText(report))


class InfusionWasserstein(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfusionWasserstein",
            display_name="Infusion Metrics: Wasserstein-2",
            category="Infusion/metrics",
            description="Concept-specific overfitting: Wasserstein-2 distance, in CLIP vision feature space, "
                        "between the customized model's images of the concept and the base model's images "
                        "of its class in the same varied contexts. Lower = the concept keeps the variety of "
                        "its class. Reports the Gaussian-fit W2 and, for sets of equal size, the exact "
                        "empirical W2." + _CACHE_NOTE,
            is_output_node=True,
            inputs=[
                io.Image.Input("custom_images",
                               tooltip="The customized model's images of the concept in varied contexts "
                                       "(\"a dog on the moon\", \"a watercolor of a dog\", ...). At least 2."),
                io.Image.Input("base_images",
                               tooltip="The base model's images of the class in the same contexts. At least 2; "
                                       "as many as custom_images for the empirical W2."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model that embeds the images "
                                                           "(Load CLIP Vision)."),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Scale every embedding to unit length first (cosine geometry, as "
                                         "CLIP similarity uses)."),
            ],
            outputs=[
                io.Float.Output("w2", display_name="w2", tooltip="Wasserstein-2 between Gaussian fits of the two feature sets."),
                io.String.Output("report", display_name="report", tooltip="Readable summary, with the empirical W2."),
            ],
        )

    @classmethod
    def execute(cls, custom_images, base_images, clip_vision, normalize) -> io.NodeOutput:
        result = image_wasserstein(custom_images, base_images, clip_vision, normalize, progress=_Progress)
        report = result.report()
        return io.NodeOutput(result.gaussian, report, ui=ui.PreviewText(report))


NODES: list[type[io.ComfyNode]] = [InfusionLatentFisherDivergence, InfusionWasserstein]
