"""Train Infusion Concept: learn a concept's residual vectors from a few photos, in the graph.

Thin wrapper: the run lives in ../infusion/training (session.py drives it).
"""
from __future__ import annotations

from typing import Any

from comfy_api.latest import io, ui

from ..infusion.concept import VARIANTS
from ..infusion.images import to_image
from ..infusion.training.buckets import BUCKETS, CROPS
from ..infusion.training.encoding import ConceptData
from ..infusion.training.loop import TrainingSettings
from ..infusion.training.precision import CHOICES as PRECISION_CHOICES
from ..infusion.training.loss_plot import loss_curve, message_image
from ..infusion.training.previews import DEFAULT_PROMPTS, PreviewSettings, parse_prompts, preview_folder
from ..infusion.training.session import TrainingRequest, check_name, train_concept
from ..infusion.training.templates import AUTHOR_TEMPLATES, parse_templates
from .load import INFUSION
from .photos import CAPTIONS

DEFAULTS = TrainingSettings()  # the defaults live in one place: the training settings' own

_RETRAIN = ("ComfyUI reuses the previous result while every input is unchanged: to train again, change the "
            "seed or any setting, or raise steps with resume on.")


def base_model_name(prompt: dict | None, node_id: str | None) -> str:
    """The checkpoint (or UNet) file the MODEL input comes from, traced up the workflow graph
    through model-to-model nodes (LoRA loaders, patches, ...); "" when it cannot be told."""
    seen = set()
    node = (prompt or {}).get(str(node_id)) if node_id is not None else None
    while node is not None:
        inputs = node.get("inputs", {})
        for key in ("ckpt_name", "unet_name", "model_name"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        link = inputs.get("model")
        if not isinstance(link, list) or not link or str(link[0]) in seen:
            return ""
        seen.add(str(link[0]))
        node = prompt.get(str(link[0]))
    return ""


def _models_folder() -> str:
    import folder_paths
    return folder_paths.get_folder_paths("infusion")[0]


def _preview_folder(output_name: str) -> str:
    import folder_paths
    return preview_folder(folder_paths.get_output_directory(), check_name(output_name))


def _samplers() -> list[str]:
    import comfy.samplers
    return list(comfy.samplers.KSampler.SAMPLERS)


def _schedulers() -> list[str]:
    import comfy.samplers
    return list(comfy.samplers.KSampler.SCHEDULERS)


def _concept_inputs() -> list:
    """The model, its CLIP and VAE, the photos, and the word and file name the concept gets."""
    return [
        io.Model.Input("model", tooltip="The base model to train the concept for: SD1.x, SD2.x, SDXL, FLUX.1, "
                                        "FLUX.2, Chroma, Qwen-Image, Z-Image or Krea 2. "
                                        "It is not modified."),
        io.Clip.Input("clip", tooltip="The model's CLIP: encodes every caption once, before training."),
        io.Vae.Input("vae", optional=True,
                     tooltip="The model's VAE: encodes every photo once, before training (not needed with "
                             "latents)."),
        io.Image.Input("photos", optional=True,
                       tooltip="The concept's photos (3-10 is typical), any size and aspect, as one batch or a "
                               "list (Load Concept Photos, ComfyUI's Load Image-Text (from Folder) and image "
                               "dataset nodes): each trains at its own aspect (see crop). Give photos or "
                               "latents."),
        io.String.Input("word", default="dog",
                        tooltip="The concept's plain class word ('dog', 'teapot', 'woman'). Prompts that say "
                                "this word will draw the concept; no new token is learned."),
        io.String.Input("output_name", default="my_concept",
                        tooltip="File name in models/infusion: <name>.safetensors (the concept), "
                                "<name>_step<N>.safetensors (snapshots), <name>.resume (resume state). "
                                "An existing concept of this name is overwritten."),
    ]


def _training_inputs() -> list:
    """How the vectors train: steps, learning rate, batch, resolution, seed, captions, files, precision."""
    return [
        io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=100000,
                     tooltip="Optimizer steps in all (with resume: the total, counting the steps already "
                             "done). The authors train 400-500."),
        io.Float.Input("learning_rate", default=DEFAULTS.learning_rate, min=1e-6, max=10.0, step=0.0001,
                       tooltip="AdamW's learning rate at the start (weight decay 0.01), falling along a cosine to "
                               "0 at the last step: about what fraction of their own size the word's values "
                               "move by in each step, in every layer of every model. The default learns on "
                               "both models of the toy world (docs). No concept in the previews yet: raise "
                               "it, then the steps; the concept overdone: lower it."),
        io.Int.Input("batch_size", default=DEFAULTS.batch_size, min=1, max=64,
                     tooltip="Photos per model call. Lower it if memory runs out, and raise "
                             "gradient_accumulation to keep the effective batch."),
        io.Int.Input("gradient_accumulation", default=DEFAULTS.gradient_accumulation, min=1, max=256,
                     tooltip="Model calls per optimizer step: effective batch = batch_size x this. 1 "
                             "trains in a quarter of the authors' time (4 x 4 = 16), and the toy world "
                             "learns at it."),
        io.Int.Input("resolution", default=0, min=0, max=4096, step=64,
                     tooltip="Training size in pixels (a multiple of 64). 0 = the model's own: 512 for "
                             "SD1.x, 768 for SD2.x 768-v (512 for SD2 base), 1024 for SDXL and the DiTs (Flux, ...)."),
        io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                     tooltip="Seeds every random draw (photo order, captions, flips, timesteps, noise): the "
                             "same inputs and seed give the same concept (bit-identical on CPU). "
                             + _RETRAIN),
        io.String.Input("templates", default="\n".join(AUTHOR_TEMPLATES), multiline=True,
                        tooltip="Caption templates, one per line, {} where the class word goes. One is drawn "
                                "per model call. Default: the authors' 11 templates."),
        io.Boolean.Input("flip", default=DEFAULTS.flip,
                         tooltip="Mirror each photo left-right with probability 0.5 (the authors do). Turn "
                                 "off for asymmetric concepts (text, logos)."),
        io.Int.Input("save_every", default=100, min=0, max=100000,
                     tooltip="Every N steps write a snapshot <name>_step<N>.safetensors and the resume "
                             "state (atomic writes). 0 = only at the end (and on cancel)."),
        io.Boolean.Input("resume", default=False,
                         tooltip="Continue from <output_name>.resume up to 'steps' total. Needs the same "
                                 "photos, word, templates and settings; vectors, optimizer, step and random "
                                 "generator are restored, so the result equals one uninterrupted run. "
                                 "Cancel saves a resume state."),
        io.Combo.Input("variant", options=list(VARIANTS), default="value",
                       tooltip="value: the method (residual on the values at the word, attention maps "
                               "kept). key+value (UNet models): also a key residual, which changes the "
                               "attention maps (seen in the authors' code). image-queries (DiT models): only "
                               "the image tokens see the residual; the prompt's own tokens stay the base "
                               "model's."),
        io.Combo.Input("precision", options=list(PRECISION_CHOICES), default=DEFAULTS.precision,
                       tooltip="Autocast precision of the model during training; the vectors stay fp32. auto: "
                               "the model's own, as ComfyUI's Train LoRA chooses it (fp16 with loss scaling for "
                               "an fp16 model, bf16 for the others where the GPU has it, fp32 on the CPU). fp32 "
                               "if the loss turns non-finite. fp16 is refused on families ComfyUI never runs "
                               "in fp16 (Qwen-Image, Z-Image)."),
        io.Boolean.Input("gradient_checkpointing", default=True,
                         tooltip="Recompute activations during the backward pass: much less memory for "
                                 "about a third more time (the authors train with it)."),
    ]


def _preview_inputs() -> list:
    """How the previews are sampled along the run."""
    return [
        io.String.Input("sample_prompts", default="\n".join(DEFAULT_PROMPTS), multiline=True,
                        tooltip="Preview prompts, one per line, each with the class word or {} for it. "
                                "Sampled at step 0 (the base model) and every sample_every steps with the "
                                "concept as trained so far; saved to output/infusion/<name>/samples/."),
        io.Int.Input("sample_every", default=100, min=0, max=100000,
                     tooltip="Preview every N steps (and at the end); 0 = no previews. Previews never "
                             "change the training: the concept is the same with them on or off."),
        io.Int.Input("sample_steps", default=20, min=1, max=200, tooltip="Sampling steps of each preview."),
        io.Float.Input("sample_cfg", default=7.0, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance of the previews."),
        io.Combo.Input("sample_sampler", options=_samplers(), default="euler",
                       tooltip="Sampler of the previews (as in KSampler)."),
        io.Combo.Input("sample_scheduler", options=_schedulers(), default="normal",
                       tooltip="Scheduler of the previews (as in KSampler)."),
        io.Int.Input("sample_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                     tooltip="The previews' noise: one seed for every step, so the columns compare."),
        io.Int.Input("sample_size", default=0, min=0, max=4096, step=64,
                     tooltip="Preview width in pixels (and height, unless sample_height); 0 = the training "
                             "resolution."),
    ]


def _per_photo_inputs() -> list:
    """Optional per-photo captions and masks."""
    return [
        CAPTIONS.Input("captions", optional=True,
                       tooltip="Optional: each photo's own caption, from Load Concept Photos (dog1.txt beside "
                               "dog1.png). A caption must say the class word (or {} for it); name what else "
                               "is in the photo ('a dog on a red sofa') so the base model explains it and "
                               "less of it leaks into the concept. Photos without one use the templates."),
        io.Mask.Input("masks", optional=True,
                      tooltip="Optional soft foreground masks, one per photo, same size as the photos "
                              "(1 = the concept, 0 = background): the loss then ignores the background. "
                              "Load Image's mask is 1 where a photo is transparent: invert it first."),
    ]


def _newer_inputs() -> list:
    """Inputs added since the first release (saved workflows keep their widgets' order): how photos are
    fitted, the previews' height, captions as texts (ComfyUI's dataset nodes), and a video model's preview length."""
    return [
        io.Combo.Input("crop", options=list(CROPS), default=BUCKETS,
                       tooltip="buckets: each photo trains at about the resolution's area in the aspect nearest "
                               "its own (sizes in steps of 64, 1:4 to 4:1), scaled to cover it and cropped by "
                               "the least amount, so a standing dog keeps its head and paws. centre crop: the "
                               "resolution's square from the middle of each photo."),
        io.Int.Input("sample_height", default=0, min=0, max=4096, step=64,
                     tooltip="Preview height in pixels, for previews at another aspect than square (a portrait "
                             "concept: taller); 0 = as tall as wide."),
        io.String.Input("texts", optional=True, force_input=True,
                        tooltip="Optional: each photo's caption as text, in the photos' order (the texts of "
                                "ComfyUI's Load Image-Text (from Folder)); one text is used for every photo. Each "
                                "must say the class word (or {} for it); an empty text uses the templates."),
        io.Int.Input("sample_frames", default=1, min=1, max=257,
                     tooltip="Video models (Wan, LTX-Video, ...): frames of each preview clip, shown side by side "
                             "(Wan draws 1, 5, 9, ... frames: 4 a latent frame); 1 = a still. Image models draw "
                             "one picture."),
    ]


def _one(name: str, value: Any) -> Any:
    """A single input's value: this node takes its inputs as lists (is_input_list), for photos, masks,
    latents and texts that come as lists; every other input must be one value."""
    if not isinstance(value, list):
        return value
    if len(value) != 1:
        raise ValueError(f"{name} came as a list of {len(value)}: Train Infusion Concept trains one concept at a "
                         f"time, connect one {name}")
    return value[0]


def _outputs() -> list:
    return [
        INFUSION.Output(display_name="INFUSION", tooltip="The trained concept, ready for Apply Infusion to "
                                                         "Model (identical to the saved file)."),
        io.LossMap.Output(display_name="loss", tooltip="Mean loss of every optimizer step ({'loss': [...]})."),
        io.Image.Output(display_name="loss_graph", tooltip="The loss curve (raw and running mean)."),
        io.String.Output(display_name="path", tooltip="Where the concept was saved; 'not saved: <why>' when the "
                                                    "disk refused it (the concept is still returned)."),
        io.Image.Output(display_name="samples",
                        tooltip="The previews as a grid: one row per prompt, one column per step sampled "
                                "(step 0 = the base model). A note when previews are off."),
    ]


class TrainInfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrainInfusion",
            display_name="Train Infusion Concept",
            category="Infusion/train",
            description="Learn a concept (one residual vector per attention layer that reads text: KBs on SD1.5, "
                        "hundreds of KB on Flux) from 3-10 photos, "
                        "bound to its plain class word. Only the vectors train; the model stays frozen and unchanged. "
                        "Saved to models/infusion with a resume state. " + _RETRAIN,
            # The order is the widgets' order in saved workflows: new inputs go at the end.
            inputs=[*_concept_inputs(), *_training_inputs(),
                    io.Latent.Input("latents", optional=True,
                                    tooltip="Instead of photos: the concept as latents, as ComfyUI's own Train "
                                            "LoRA takes them (VAE Encode, or the list of Make Training Dataset "
                                            "or Resolution Bucket); each trained at its own size (resolution and "
                                            "crop are ignored), flips mirror the latents."),
                    *_preview_inputs(), *_per_photo_inputs(), *_newer_inputs()],
            outputs=_outputs(),
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            is_output_node=True,
            is_input_list=True,
        )

    @classmethod
    def execute(cls, model, clip, photos=None, masks=None, latents=None, texts=None, **inputs) -> io.NodeOutput:
        return cls._train(_one("model", model), _one("clip", clip), photos=photos, masks=masks, latents=latents,
                          texts=texts, **{name: _one(name, value) for name, value in inputs.items()})

    @classmethod
    def _train(cls, model, clip, word, output_name, steps, learning_rate, batch_size, gradient_accumulation,
               resolution, seed, templates, flip, save_every, resume, variant, precision, gradient_checkpointing,
               sample_prompts, sample_every, sample_steps, sample_cfg, sample_sampler, sample_scheduler, sample_seed,
               sample_size, crop=BUCKETS, sample_height=0, sample_frames=1, vae=None, photos=None, latents=None,
               captions=None, masks=None, texts=None) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        settings = TrainingSettings(steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                                    gradient_accumulation=gradient_accumulation, seed=seed, flip=flip,
                                    precision=precision, save_every=save_every)
        previews = PreviewSettings(prompts=parse_prompts(sample_prompts), every=sample_every, steps=sample_steps,
                                   cfg=sample_cfg, sampler=sample_sampler, scheduler=sample_scheduler,
                                   seed=sample_seed, size=sample_size, height=sample_height, frames=sample_frames)
        request = TrainingRequest(word=word, name=output_name, folder=_models_folder(), settings=settings,
                                  templates=parse_templates(templates), resolution=resolution, variant=variant,
                                  gradient_checkpointing=gradient_checkpointing, resume=resume,
                                  base_model_name=base_model_name(cls.hidden.prompt, cls.hidden.unique_id),
                                  previews=previews, preview_folder=_preview_folder(output_name))
        bar = comfy.utils.ProgressBar(steps, node_id=cls.hidden.unique_id)

        def on_step(step: int, total: int, losses: list[float]) -> None:
            bar.update_absolute(step, total, ("PNG", loss_curve(losses, total), 512))

        def on_preview(step: int, image) -> None:
            bar.update_absolute(step, steps, ("JPEG", image, 512))

        data = ConceptData(photos=photos, vae=vae, latents=latents, masks=masks, captions=captions, crop=crop,
                           texts=texts)
        result = train_concept(model, clip, data, request, on_step,
                               comfy.model_management.throw_exception_if_processing_interrupted, on_preview)
        graph = to_image(loss_curve(result.losses, steps))
        samples = result.previews if result.previews is not None else to_image(message_image(
            "previews off (sample_every is 0)"))
        return io.NodeOutput(result.concept, {"loss": result.losses}, graph, result.path, samples,
                             ui=ui.PreviewImage(graph, cls=cls))


NODES: list[type[io.ComfyNode]] = [TrainInfusion]
