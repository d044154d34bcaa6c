"""The smoke check: every example workflow, end to end, on tiny random models, through ComfyUI's
own executor. About a minute on a CPU; it checks an install, not image quality.

A tiny SD1.5-shaped checkpoint (detected by ComfyUI as SD1.5), a tiny CLIP vision model and a few
synthetic photos are written into ComfyUI's folders (the tests point them at a temporary
base directory); each workflow runs at 64 px with a step or two:
  train_concept twice (dog, teapot): the concept file is written, loads, and the loss is finite;
  generate_with_concept: an image of the right shape; a prompt without the word gives the base
    model's image bit for bit (the same workflow with Apply Infusion bypassed);
  multi_concept: an image with both concepts applied;
  measure_overfitting: both metrics finite, the Latent Fisher divergence exactly 0 (Infusion does
    not touch prompts without the word);
  Save Infusion (in no example): a trained concept saved again loads as the same concept.
The tests run the same steps (tests/comfy/test_workflows.py), and all of them on the pack's archive alone
(tests/comfy/test_archive.py).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from infusion.cli.executor import Runner
from infusion.format import load_concept

from . import tiny_models
from .examples import as_prompt, bypassed, load, runnable
from .overrides import set_input, set_prompt

IMAGE_SIZE = 64
CHECKPOINT = "infusion_smoke_sd15.safetensors"
CLIP_VISION = "infusion_smoke_clip_vision.safetensors"
WORDS = ("dog", "teapot")
APPLY_NODE = "ApplyInfusion"
# Every node of a type gets these settings: small images, 1 sampling step, 2 training steps with one
# caption template (the full-size CLIP text encoder is the slow part on a CPU), fp32, no snapshots.
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "EmptyLatentImage": {"width": IMAGE_SIZE, "height": IMAGE_SIZE},
    "KSampler": {"steps": 1},
    "LoadConceptPhotos": {"size": IMAGE_SIZE},
    "TrainInfusion": {"steps": 2, "batch_size": 2, "gradient_accumulation": 1, "resolution": IMAGE_SIZE,
                      "templates": "a photo of a {}", "precision": "fp32", "save_every": 0,
                      "gradient_checkpointing": False, "sample_steps": 2, "sample_size": IMAGE_SIZE},
    "InfusionLatentFisherDivergence": {"timesteps": 2, "samples": 2},
}


class SmokeFailed(AssertionError):
    """A smoke check that did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailed(message)


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def concept_name(word: str) -> str:
    return f"smoke_{word}"


def nodes_of(prompt: Mapping[str, Mapping[str, Any]], class_type: str) -> list[str]:
    """Ids of the prompt's nodes of one type, in id order."""
    return sorted((i for i, n in prompt.items() if n["class_type"] == class_type), key=lambda i: int(i))


def output_slot(definitions: Mapping[str, Mapping[str, Any]], class_type: str, kind: str) -> int:
    """The first output of a node type that has type `kind`."""
    return list(definitions[class_type]["output"]).index(kind)


def smoke_prompt(name: str, bypass: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(API prompt, definitions): an example workflow at smoke size, on the tiny models' file names."""
    workflow = bypassed(load(name), bypass)
    prompt, definitions = as_prompt(workflow)
    for node_id, node in prompt.items():
        for key, value in TINY_SETTINGS.get(node["class_type"], {}).items():
            set_input(prompt, definitions, node_id, key, value)
        for key, value in (("ckpt_name", CHECKPOINT), ("clip_name", CLIP_VISION)):
            if key in node["inputs"]:
                node["inputs"][key] = value
    return prompt, definitions


@dataclass
class Smoke:
    runner: Runner
    photos: dict[str, str]  # word -> folder of photos
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def prepare(cls, runner: Runner) -> "Smoke":
        """Write the tiny models and photos into ComfyUI's (current) model and input folders."""
        import folder_paths

        tiny_models.write_tiny_sd15_checkpoint(os.path.join(folder_paths.get_folder_paths("checkpoints")[0], CHECKPOINT),
                                               every_layer=True)
        tiny_models.write_tiny_clip_vision(os.path.join(folder_paths.get_folder_paths("clip_vision")[0], CLIP_VISION))
        photos = {}
        for i, word in enumerate(WORDS):
            folder = os.path.join(folder_paths.get_input_directory(), f"smoke_{word}")
            photos[word] = tiny_models.write_concept_photos(folder, seed=tiny_models.SEED + 10 + i)
        return cls(runner, photos)

    def prompt(self, name: str, bypass: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
        return smoke_prompt(name, bypass)

    def _concepts(self, prompt: dict[str, Any], definitions: Mapping[str, Any], words: tuple[str, ...]) -> None:
        for node_id, word in zip(nodes_of(prompt, "LoadInfusion"), words):
            set_input(prompt, definitions, node_id, "concept_name", concept_name(word) + ".safetensors")

    def _decoded(self, prompt: dict[str, Any]) -> torch.Tensor:
        result = self.runner.run_or_raise(prompt)
        return result.output(nodes_of(prompt, "VAEDecode")[0])

    def train(self, word: str) -> tuple[str, list[float]]:
        """train_concept for `word`; returns the concept file and the loss per step."""
        prompt, definitions = self.prompt("train_concept")
        train_id = nodes_of(prompt, "TrainInfusion")[0]
        set_input(prompt, definitions, train_id, "word", word)
        set_input(prompt, definitions, train_id, "output_name", concept_name(word))
        set_input(prompt, definitions, nodes_of(prompt, "LoadConceptPhotos")[0], "folder", self.photos[word])
        result = self.runner.run_or_raise(prompt)
        path = result.output(train_id, output_slot(definitions, "TrainInfusion", "STRING"))
        losses = result.output(train_id, output_slot(definitions, "TrainInfusion", "LOSS_MAP"))["loss"]
        check(os.path.isfile(path), f"the concept file {path} was not written")
        concept = load_concept(path)
        check(concept.word == word, f"the concept file says word '{concept.word}', not '{word}'")
        check(len(losses) > 0 and all(finite(v) for v in losses), f"the training loss is not finite: {losses}")
        return path, losses

    def train_from_dataset(self, word: str) -> tuple[str, list[float], dict]:
        """train_from_dataset for `word` (ComfyUI's Load Image-Text (from Folder) on the word's photos, whose
        first photo has a caption); returns the concept file, the loss per step and its training metadata."""
        prompt, definitions = self.prompt("train_from_dataset")
        train_id = nodes_of(prompt, "TrainInfusion")[0]
        folder = self.photos[word]
        with open(os.path.join(folder, "photo_0.txt"), "w", encoding="utf-8") as f:
            f.write("a {} on a gradient")
        try:
            set_input(prompt, definitions, train_id, "word", word)
            set_input(prompt, definitions, train_id, "output_name", concept_name(word) + "_dataset")
            set_input(prompt, definitions, nodes_of(prompt, "LoadImageTextDataSetFromFolder")[0], "folder",
                      os.path.basename(folder))
            result = self.runner.run_or_raise(prompt)
        finally:
            os.remove(os.path.join(folder, "photo_0.txt"))
        path = result.output(train_id, output_slot(definitions, "TrainInfusion", "STRING"))
        losses = result.output(train_id, output_slot(definitions, "TrainInfusion", "LOSS_MAP"))["loss"]
        concept = load_concept(path)
        training = concept.metadata["training"]
        check(concept.word == word and training["captions"] is True,
              f"{path}: word '{concept.word}', captions {training['captions']}")
        check(len(losses) > 0 and all(finite(v) for v in losses), f"the training loss is not finite: {losses}")
        return path, losses, training

    def generate(self, text: str | None = None, bypass_apply: bool = False) -> torch.Tensor:
        """generate_with_concept (optionally with another prompt, or with Apply Infusion bypassed)."""
        prompt, definitions = self.prompt("generate_with_concept", (APPLY_NODE,) if bypass_apply else ())
        self._concepts(prompt, definitions, WORDS[:1])
        if text is not None:
            set_prompt(prompt, definitions, text)
        image = self._decoded(prompt)
        check(tuple(image.shape) == (1, IMAGE_SIZE, IMAGE_SIZE, 3), f"image shape {tuple(image.shape)}")
        check(bool(torch.isfinite(image).all()), "the image has non-finite pixels")
        return image

    def multi(self, text: str | None = None, applied: tuple[str, ...] = WORDS,
              bypass_apply: bool = False) -> torch.Tensor:
        """multi_concept (optionally with another prompt): the concepts of `applied` at the example's strength, the
        other one's Apply Infusion at strength 0, or both Apply Infusion nodes bypassed (the base model)."""
        prompt, definitions = self.prompt("multi_concept", (APPLY_NODE,) if bypass_apply else ())
        self._concepts(prompt, definitions, WORDS)
        if text is not None:
            set_prompt(prompt, definitions, text)
        for load_id, word in zip(nodes_of(prompt, "LoadInfusion"), WORDS):
            if word not in applied:
                for apply_id in nodes_of(prompt, APPLY_NODE):
                    if prompt[apply_id]["inputs"]["infusion"] == [load_id, 0]:
                        set_input(prompt, definitions, apply_id, "strength", 0.0)
        image = self._decoded(prompt)
        check(tuple(image.shape) == (1, IMAGE_SIZE, IMAGE_SIZE, 3), f"image shape {tuple(image.shape)}")
        return image

    def blend(self) -> tuple[torch.Tensor, str]:
        """blend_concepts with the two trained concepts; returns the image and the blend's report."""
        prompt, definitions = self.prompt("blend_concepts")
        self._concepts(prompt, definitions, WORDS)
        result = self.runner.run_or_raise(prompt)
        image = result.output(nodes_of(prompt, "VAEDecode")[0])
        text = result.output(nodes_of(prompt, "InfusionConceptInfo")[0])
        check(tuple(image.shape) == (1, IMAGE_SIZE, IMAGE_SIZE, 3), f"image shape {tuple(image.shape)}")
        check("lineage" in text and "|W_v u|" in text, f"the blend's report lacks its lineage or norms:\n{text}")
        return image, text

    def measure(self, bypass_apply: bool = False) -> tuple[float, float]:
        """measure_overfitting (with Apply Infusion bypassed: the base model against itself); returns (Latent Fisher
        divergence, Wasserstein-2)."""
        prompt, definitions = self.prompt("measure_overfitting", (APPLY_NODE,) if bypass_apply else ())
        self._concepts(prompt, definitions, WORDS[:1])
        with tiny_models.tiny_clip_vision_loader():
            result = self.runner.run_or_raise(prompt)
        lfd = result.output(nodes_of(prompt, "InfusionLatentFisherDivergence")[0])
        w2 = result.output(nodes_of(prompt, "InfusionWasserstein")[0])
        check(finite(lfd) and finite(w2), f"metrics not finite: LFD {lfd}, W2 {w2}")
        return lfd, w2

    def save(self) -> str:
        """Save Infusion on a trained concept (no example uses it): the file it writes loads as the same concept."""
        source = f"{concept_name(WORDS[0])}.safetensors"
        prompt = {"1": {"class_type": "LoadInfusion", "inputs": {"concept_name": source}},
                  "2": {"class_type": "SaveInfusion", "inputs": {"infusion": ["1", 0], "output_name": "smoke_saved",
                                                                 "precision": "fp32"}}}
        path = self.runner.run_or_raise(prompt).output("2", 1)
        saved, original = load_concept(path), load_concept(os.path.join(os.path.dirname(path), source))
        check(saved.word == original.word and all(torch.equal(saved.values[k], original.values[k].float())
                                                  for k in original.values), f"{path} differs from {source}")
        return f"{os.path.basename(path)} written, the same concept as {source}"

    def run_all(self, say: Callable[[str], None] = print) -> None:
        """Every check in order; raises SmokeFailed at the first that fails."""
        def step(label: str, fn: Callable[[], str]) -> None:
            start = time.perf_counter()
            detail = fn()
            self.seconds[label] = time.perf_counter() - start
            say(f"ok   {label} ({self.seconds[label]:.1f} s): {detail}")

        def train(word: str) -> str:
            path, losses = self.train(word)
            return f"{os.path.basename(path)} written and loads, loss {losses[0]:.4g} -> {losses[-1]:.4g}"
        for word in WORDS:
            step(f"train_concept ({word})", lambda w=word: train(w))
        import nodes
        if "train_from_dataset" in runnable(nodes.NODE_CLASS_MAPPINGS):
            step("train_from_dataset", lambda: f"{os.path.basename(self.train_from_dataset(WORDS[0])[0])} written "
                                               "from ComfyUI's dataset nodes")
        else:
            say("--   train_from_dataset: this ComfyUI has no dataset nodes (Load Image-Text (from Folder))")
        step("generate_with_concept", lambda: f"image {tuple(self.generate().shape)}")

        def same_as_base() -> str:
            text = "a photo of a red car in the city"
            with_concept, base = self.generate(text), self.generate(text, bypass_apply=True)
            check(torch.equal(with_concept, base), "a prompt without the word changed the image: max difference "
                                                   f"{(with_concept - base).abs().max().item():.3g}")
            return "a prompt without the word gives the base model's image exactly"
        step("prompt without the word", same_as_base)
        step("multi_concept", lambda: f"image {tuple(self.multi().shape)}")
        step("blend_concepts", lambda: f"image {tuple(self.blend()[0].shape)}, report of the blend")

        def metrics() -> str:
            lfd, w2 = self.measure()
            check(lfd == 0.0, f"Latent Fisher divergence on prompts without the word is {lfd}, not 0")
            return f"Latent Fisher divergence {lfd:g} (exactly 0, as it must be), Wasserstein-2 {w2:.4g}"
        step("measure_overfitting", metrics)
        step("Save Infusion", self.save)
