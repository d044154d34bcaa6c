"""One training run as the node sees it: photos and settings in; a concept, its files and its
loss history out.

Files, in the chosen folder (models/infusion):
  <name>.safetensors          the concept: at the end, or the last good step when cancelled or
                              when the loss turns non-finite
  <name>_step<N>.safetensors  a snapshot every `save_every` steps (pick an earlier one if the
                              concept starts to overfit)
  <name>.resume               the resume state (vectors, AdamW, step, generator, losses)
Every file is written atomically. Metadata holds no time stamp or path: the same inputs and
seed give a bit-identical concept file.
"""
from __future__ import annotations

import functools
import logging

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import compat
from ..concept import InfusionConcept, normalize_word
from ..families import adapter_for
from ..format import SaveError, remove_temporaries, save_concept
from ..patching import check_variant, model_layers, training_space
from ..value_space import TRAINED_IN, ValueSpace
from ..word_positions import context_key, word_token_ids
from .buckets import Placement
from .comfy_model import check_weights_fit, train_on_model
from .encoding import ConceptData, encode_captions, photo_caption_indices
from .loop import NonFiniteLossError, PhotoBuckets, TrainingHooks, TrainingSettings, is_out_of_memory
from .precision import model_precision
from .previews import Previewer, PreviewSettings
from .state import RESUME_SUFFIX, TrainingState, load_state, save_state
from .templates import AUTHOR_TEMPLATES, fill
from .vectors import FILE_DTYPE, VALUE_SCALES, trained_concept

# What the model predicts, by ComfyUI's model type: the loss is the MSE of that prediction.
PREDICTIONS = {"EPS": "eps", "V_PREDICTION": "v", "V_PREDICTION_DDPM": "v", "FLUX": "flow velocity",
               "FLOW": "flow velocity"}
STATUS = {"final": "complete", "checkpoint": "checkpoint", "interrupted": "interrupted",
          "out-of-memory": "paused: out of memory",
          "non-finite": "stopped: non-finite loss"}


@dataclass
class TrainingRequest:
    word: str
    name: str
    folder: str
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    templates: Sequence[str] = AUTHOR_TEMPLATES
    resolution: int = 0  # 0: the model family's native size
    variant: str = "value"
    gradient_checkpointing: bool = True
    resume: bool = False
    base_model_name: str = ""
    previews: PreviewSettings = PreviewSettings(every=0)
    preview_folder: str = ""


@dataclass
class TrainingResult:
    concept: InfusionConcept
    losses: list[float]
    path: str  # where the concept was saved, or "not saved: <why>"
    state: TrainingState
    previews: torch.Tensor | None = None  # IMAGE grid: a row per prompt, a column per step sampled


def concept_path(folder: str, name: str, step: int | None = None) -> str:
    return os.path.join(folder, f"{name}.safetensors" if step is None else f"{name}_step{step:05d}.safetensors")


def resume_path(folder: str, name: str) -> str:
    return os.path.join(folder, name + RESUME_SUFFIX)


_SNAPSHOT = re.compile(r"_step\d{5,}$")


def check_name(name: str) -> str:
    name = name.strip()
    if not name or name != os.path.basename(name) or name.startswith("."):
        raise ValueError(f"output name '{name}' must be a plain file name (no folders), e.g. 'my_dog'")
    name = name[:-len(".safetensors")] if name.endswith(".safetensors") else name
    if _SNAPSHOT.search(name):
        raise ValueError(f"output name '{name}' ends like the snapshots of a run named "
                         f"'{_SNAPSHOT.sub('', name)}' (<name>_step<N>), whose files it would overwrite: "
                         "choose a name without '_step' and a number at its end")
    return name


def owned_files(name: str) -> Callable[[str], bool]:
    """Whether a file name is one of <name>'s: the concept, its snapshots, its resume state."""
    snapshot = re.compile(rf"{re.escape(name)}_step\d{{5,}}\.safetensors")
    return lambda file: file in (f"{name}.safetensors", name + RESUME_SUFFIX) or bool(snapshot.fullmatch(file))


class NameInUse(RuntimeError):
    """Another training is writing files under the same name in the same folder."""


@contextmanager
def name_lock(folder: str, name: str) -> Iterator[None]:
    """Held while a run writes <name>'s files: a second run on the same name and folder (another ComfyUI on
    the same models folder, a runner batch naming a row twice) is refused instead of interleaving its
    concept, snapshots and resume state with the first's. The lock is the operating system's, so a run that
    crashed holds nothing."""
    from filelock import FileLock, Timeout

    os.makedirs(folder, exist_ok=True)
    lock = FileLock(os.path.join(folder, f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise NameInUse(f"another training is writing '{name}' in {folder} right now: wait for it to finish, "
                        "or give this one another output_name") from None
    try:
        removed = remove_temporaries(folder, owned_files(name))
        if removed:
            logging.info("Infusion: removed %d temporary file(s) that an earlier run of '%s' left when it was "
                         "stopped while saving", len(removed), name)
        yield
    finally:
        lock.release()


class OutOfMemoryPause(RuntimeError):
    """Training ran out of memory; the last completed step was kept, to resume with less memory."""


def out_of_memory_advice(request: TrainingRequest, kept: str, device_type: str, fp8_weights: bool) -> str:
    """What to lower, in the order that costs the least (time first, then what the run learns from): the
    effective batch is kept, so resume stays valid."""
    s = request.settings
    tips = []
    if not request.gradient_checkpointing:
        tips.append("gradient_checkpointing on (about a third more time)")
    if s.batch_size > 1:
        smaller = s.batch_size // 2
        tips.append(f"batch_size {smaller} with gradient_accumulation {s.effective_batch // smaller} (the same "
                    f"effective batch of {s.effective_batch})" if s.effective_batch % smaller == 0 else
                    f"batch_size {smaller}")
    if s.precision == "fp32" and device_type != "cpu":
        tips.append("precision auto (the model's own half precision)")
    tips.append("a lower resolution")
    if not fp8_weights and device_type != "cpu":
        tips.append("the model's weights in fp8 (Load Diffusion Model's weight_dtype fp8_e4m3fn: half of bf16's "
                    "memory)")
    return (f"training ran out of memory; {kept}. Lower what it needs and run again with resume on: "
            f"{'; or '.join(tips)}")


class _FileHooks(TrainingHooks):
    """Files for the whole run, which may come as several loop calls (one per preview interval)."""

    def __init__(self, request: TrainingRequest, name: str, start: InfusionConcept, space: ValueSpace,
                 describe: Callable[[TrainingState, str], dict],
                 on_step: Callable[[int, int, list[float]], None] | None, check_cancel: Callable[[], None] | None):
        self.folder, self.name, self.start, self.space, self.describe = request.folder, name, start, space, describe
        self.total, self.save_every = request.settings.steps, request.settings.save_every
        self._on_step, self._check_cancel = on_step, check_cancel
        self.last_saved: tuple[str, int] | None = None
        self.save_error = ""  # the last save that failed

    def check_cancel(self) -> None:
        if self._check_cancel is not None:
            self._check_cancel()

    def on_step(self, step: int, total: int, losses: list[float]) -> None:
        if self._on_step is not None:
            self._on_step(step, self.total, losses)

    def save(self, state: TrainingState, reason: str) -> None:
        if reason == "final" and state.step < self.total:
            # The end of one preview interval, not of the run: only the snapshot an uninterrupted run writes.
            if not (self.save_every and state.step % self.save_every == 0):
                return
            reason = "checkpoint"
        path = concept_path(self.folder, self.name, state.step if reason == "checkpoint" else None)
        concept = trained_concept(self.start, state, self.describe(state, reason), self.space)
        try:
            save_concept(concept, path, dtype=FILE_DTYPE)
            save_state(state, resume_path(self.folder, self.name))
        except SaveError as e:
            # Training goes on (a snapshot) or ends with the concept in memory (the last step), and whatever
            # stopped the run (cancel, out of memory) is still what the user is told about.
            logging.warning("Infusion: %s", e)
            self.save_error = str(e)
            return
        self.last_saved = (path, state.step)

    def kept(self, what: str) -> str:
        unsaved = f" ({self.save_error})" if self.save_error else ""
        if self.last_saved is None:
            return f"no step was saved{unsaved}"
        return f"{what} (step {self.last_saved[1]}) is kept in {self.last_saved[0]} and its .resume file{unsaved}"


def train_concept(model: Any, clip: Any, data: ConceptData, request: TrainingRequest,
                  on_step: Callable[[int, int, list[float]], None] | None = None,
                  check_cancel: Callable[[], None] | None = None,
                  on_preview: Callable[[int, Any], None] | None = None) -> TrainingResult:
    """Encode the photos (or take the latents) and captions once, train, save; returns the concept as saved.
    With previews, the run stops at each preview step, samples, and goes on from its state in memory
    (bit for bit the run it would have been); `on_preview` receives the step and its newest sample (PIL).
    The name is locked for the run (name_lock). Training and previews run on one model with ComfyUI's classic
    weight loading, released afterwards (compat.classic_for_run)."""
    with name_lock(request.folder, check_name(request.name)), compat.classic_for_run(model) as classic:
        return _train(classic, clip, data, request, on_step, check_cancel, on_preview)


def _train(model: Any, clip: Any, data: ConceptData, request: TrainingRequest,
           on_step: Callable[[int, int, list[float]], None] | None,
           check_cancel: Callable[[], None] | None, on_preview: Callable[[int, Any], None] | None) -> TrainingResult:
    word = normalize_word(request.word)
    name = check_name(request.name)
    adapter = adapter_for(model)
    layers, family = model_layers(model)
    check_variant(adapter, request.variant, family)
    # Chosen (or refused) before anything is encoded; what the run's files record.
    settings = replace(request.settings, precision=model_precision(model, request.settings.precision, family))
    request = replace(request, settings=settings)
    check_weights_fit(model)
    # Latents come at their own size; photos are fitted to the resolution.
    resolution = (request.resolution or adapter.native_resolution(model)) if data.photos is not None else None
    start = InfusionConcept.zeros(word, layers, family, variant=request.variant, vector_space=adapter.vector_space,
                                  name=name, token_ids=word_token_ids(clip.tokenizer, word,
                                                                      context_key(clip.tokenize(word))))
    captions = [fill(t, word) for t in request.templates]
    space = training_space(model, request.variant)
    placements = data.placements(resolution)
    notes = [f"photo {i + 1} ({p.original[1]} x {p.original[0]}) trains at {p.size[1]} x {p.size[0]}: {p.note}"
             for i, p in enumerate(placements) if p.note]
    for note in notes:
        logging.warning("Infusion: %s", note)
    run = _run_record(request, data, word, family, resolution, placements)
    describe = functools.partial(_file_metadata, run, request, data, model, notes)

    resume = load_state(resume_path(request.folder, name)) if request.resume else None
    latents = data.encode(model, placements, settings.flip)
    own, sources = [], []
    if data.captions is not None:
        own, sources, indices = photo_caption_indices(data.captions, word, len(captions))
        latents.set_captions(indices)
    conditionings = encode_captions(clip, word, captions + own, [""] * len(captions) + sources,
                                    adapter.training_conditioning(model.get_model_object("diffusion_model")))
    conditionings = _with_photo_geometry(conditionings, latents, placements, adapter, model)
    hooks = _FileHooks(request, name, start, space, describe, on_step, check_cancel)
    previewer = _previewer(model, clip, data, word, request,
                           resolution or 8 * latents.buckets[0].latents.shape[-1], check_cancel)

    def preview(step: int, state: TrainingState | None) -> None:
        concept = None if state is None else trained_concept(start, state, {}, space)
        try:
            images = previewer.sample(step, concept)
        except BaseException:
            if state is not None and hooks.last_saved != (concept_path(request.folder, name), state.step):
                hooks.save(state, "interrupted")  # cancelled while sampling: keep the last step
            raise
        if on_preview is not None:
            on_preview(step, images[-1])

    state = resume
    try:
        if previewer is not None and resume is None:
            previewer.clear()
            preview(0, None)
        for end in request.previews.due(resume.step if resume else 0, settings.steps) or [settings.steps]:
            part = replace(settings, steps=end, total_steps=settings.steps)  # the schedule spans the whole run
            state = train_on_model(model, start, conditionings, latents, part, hooks, run, state,
                                   request.gradient_checkpointing, templates=len(captions), space=space)
            if previewer is not None:
                preview(end, state)
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}; {hooks.kept('the last good state')}. Lower the learning rate, or train "
                                 "with fp32 or bf16 precision") from None
    except BaseException as e:
        if not is_out_of_memory(e):
            raise
        out_of_memory = True  # raised below, once the failed step's frames (and their tensors) are gone
    else:
        out_of_memory = False
    if out_of_memory:
        _pause_for_memory(request, hooks, model)
    path = concept_path(request.folder, name)
    saved = hooks.last_saved == (path, state.step)  # else the last save failed: the concept is in memory only
    concept = replace(trained_concept(start, state, describe(state, "final"), space), path=path if saved else "")
    return TrainingResult(concept, list(state.losses), path if saved else f"not saved: {hooks.save_error}", state,
                          previewer.grid() if previewer else None)


def _with_photo_geometry(conditionings: list[list], latents: PhotoBuckets, placements: list[Placement],
                         adapter: Any, model: Any) -> list[list]:
    """Where the family conditions on a photo's geometry (SDXL's size and crop), a copy of the conditionings
    for each distinct geometry among the photos, each photo pointed at its copy (latents carry none)."""
    extras = [adapter.photo_conditioning(model, p.original, p.crop, p.size) if p.original else {} for p in placements]
    geometries = list(dict.fromkeys(tuple(sorted(e.items())) for e in extras))
    if geometries == [()]:
        return conditionings
    latents.set_offsets(torch.tensor([geometries.index(tuple(sorted(e.items()))) * len(conditionings)
                                      for e in extras]))
    return [[[t, {**options, **dict(geometry)}] for t, options in c] for geometry in geometries for c in conditionings]


def _run_record(request: TrainingRequest, data: ConceptData, word: str, family: str,
                resolution: int | None, placements: list) -> dict:
    """What the run is made of, stored in every file it writes; a resume state must match it."""
    return {
        "word": word, "variant": request.variant, "family": family, "resolution": resolution,
        "crop": data.crop if data.photos is not None else None,
        "sizes": [list(p.size) for p in placements],  # each photo's bucket
        "templates": list(request.templates), "photos": data.count, "masked": data.masks is not None,
        "photos_sha256": data.fingerprint(), "captions": data.captions is not None, "base_model": request.base_model_name,
        "trained_in": TRAINED_IN,  # resume states of other parametrizations are refused by name
    }


def _file_metadata(run: dict, request: TrainingRequest, data: ConceptData, model: Any, notes: list[str],
                   state: TrainingState, reason: str) -> dict:
    """A concept file's metadata: how it was trained, how far, on what, and what the user should know of its
    photos (`notes`: upscaled, or cropped beyond 4:1)."""
    settings = request.settings
    model_type = getattr(model.model.model_type, "name", "EPS")
    prediction = PREDICTIONS.get(model_type, model_type.lower())
    training = {**run, VALUE_SCALES: state.run.get(VALUE_SCALES), **settings.trajectory(), "optimizer": "AdamW",
                "steps": settings.steps,
                "steps_done": state.step, "final_loss": state.losses[-1] if state.losses else None,
                "batch_size": settings.batch_size, "gradient_accumulation": settings.gradient_accumulation,
                "gradient_checkpointing": request.gradient_checkpointing, "status": STATUS[reason],
                "loss": f"{prediction}-prediction MSE" + (", mask-weighted" if data.masks is not None else ""),
                "photo_notes": notes}
    provenance = {"base_model": request.base_model_name, "model_class": type(model.model).__name__,
                  "prediction": prediction, "trainer": "ComfyUI-Infusion Train Infusion Concept"}
    return {"training": training, "provenance": provenance}


def _pause_for_memory(request: TrainingRequest, hooks: _FileHooks, model: Any) -> None:
    """Out of memory: hand the memory back and say what to lower (the last step is on disk already)."""
    import gc

    import comfy.model_management
    gc.collect()
    comfy.model_management.soft_empty_cache()
    fp8 = (model.model_dtype() or torch.float32).itemsize == 1
    raise OutOfMemoryPause(out_of_memory_advice(request, hooks.kept("the last completed step"),
                                                model.load_device.type, fp8))


def _previewer(model: Any, clip: Any, data: ConceptData, word: str, request: TrainingRequest, size: int,
               check_cancel: Callable[[], None] | None) -> Previewer | None:
    if not request.previews.every:
        return None
    if data.vae is None:
        raise ValueError("sample previews are decoded with the VAE: connect vae, or set sample_every to 0")
    return Previewer(model, clip, data.vae, word, request.previews, request.preview_folder, size, check_cancel)
