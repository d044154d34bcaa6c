"""The example workflows on a real ComfyUI.

Registry: every workflow against the live node registry (this pack plus ComfyUI's core and built-in
extra nodes): node types exist, links join matching types, widget values are valid, and the API
prompt it converts to passes ComfyUI's own validation.

End to end: each workflow converted to API format and executed by ComfyUI's own executor on a
tiny random checkpoint that ComfyUI detects as SD1.5 (the smoke check's steps, infusion_dev/smoke.py).
"""
import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import torch

from infusion_dev import comfy_harness as h

from infusion.cli import train
from infusion.cli.executor import Runner
from infusion.cli.node_inputs import node_definition, node_definitions, ordered_inputs
from infusion.format import load_concept
from infusion_dev import examples
from infusion_dev import smoke as smoke_mod
from infusion_dev.overrides import set_input, set_prompt
from infusion_dev.validate import check_workflow

EXAMPLES = examples.example_names()


def quiet(event, data):
    pass


@pytest.fixture(scope="module")
def registry(pack):
    """The live registry as a ComfyUI start fills it: core, built-in extra nodes (Preview Any ...), this pack."""
    import nodes
    if "PreviewAny" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_builtin_extra_nodes())
    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def named_models(registry):
    """The model files the examples name, created empty so the loaders' lists offer them, as in a user's
    ComfyUI that has the models."""
    import folder_paths
    made = []
    for name in EXAMPLES:
        for kind, file_name in h.model_files(examples.load(name)):
            folder = folder_paths.get_folder_paths(kind)[0]
            path = os.path.join(folder, file_name)
            if not os.path.exists(path):
                os.makedirs(folder, exist_ok=True)
                open(path, "wb").close()
                made.append(path)
        for folder in h.input_folders(examples.load(name)):
            path = os.path.join(folder_paths.get_input_directory(), folder)
            if not os.path.exists(path):
                os.makedirs(path)
                made.append(path)
    yield
    for path in made:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize("name", EXAMPLES)
def test_workflow_matches_the_live_node_registry(registry, named_models, name):
    if name not in examples.runnable(registry):  # it raises unless the example declares the nodes it needs
        assert examples.missing_nodes(name, registry) == list(examples.NEWER_COMFYUI_NODES[name])
        return
    workflow = examples.load(name)
    prompt, definitions = examples.as_prompt(workflow)
    assert check_workflow(workflow, definitions) == []
    assert Runner(quiet).validate(prompt)  # ComfyUI's own validation: it returns the outputs to run


def test_pack_nodes_have_tooltips_on_every_input(registry):
    kinds = {n["type"] for name in EXAMPLES for n in examples.load(name)["nodes"]}
    ours = [k for k in kinds if k in registry and "Infusion" in (node_definition(k) or {}).get("category", "")]
    assert len(ours) >= 5
    for kind in ours:
        missing = [name for name, spec in ordered_inputs(node_definition(kind))
                   if not (len(spec) > 1 and spec[1].get("tooltip"))]
        assert missing == [], f"{kind} inputs without a tooltip"


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def smoke(registry):
    """Tiny models and photos in the session's ComfyUI folders, removed afterwards with all it wrote."""
    import folder_paths
    folders = [folder_paths.get_folder_paths(kind)[0] for kind in ("checkpoints", "clip_vision", "infusion")]
    folders += [folder_paths.get_input_directory(), folder_paths.get_output_directory()]
    before = {folder: set(os.listdir(folder)) if os.path.isdir(folder) else set() for folder in folders}
    yield smoke_mod.Smoke.prepare(Runner(quiet))
    for folder, names in before.items():
        for name in set(os.listdir(folder)) - names:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.fixture(scope="module")
def trained(smoke):
    """Both concepts trained by the train_concept workflow: {word: (path, losses)}."""
    return {word: smoke.train(word) for word in smoke_mod.WORDS}


def test_train_concept_writes_a_concept_that_loads(trained):
    for word, (path, losses) in trained.items():
        concept = load_concept(path)
        assert concept.word == word and concept.family == "SD15" and len(concept.values) == 16
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_train_from_dataset_trains_from_comfyuis_dataset_nodes_or_needs_them(smoke, registry):
    """ComfyUI's Load Image-Text (from Folder) gives the photos as a list at their own sizes, and their captions
    as texts ("" for a photo without one); where this ComfyUI lacks it, the photo-folder route is the one."""
    if "train_from_dataset" not in examples.runnable(registry):
        assert "LoadImageTextDataSetFromFolder" not in registry and "train_concept" in examples.runnable(registry)
        return
    path, losses, training = smoke.train_from_dataset("dog")
    assert load_concept(path).family == "SD15" and len(losses) == 2
    assert training["captions"] is True and training["photos"] == 3 and training["crop"] == "buckets"


def _dataset_prompt(smoke, folder, route, texts=True):
    """The train_from_dataset example at 256 px on the photos in `folder` (of the input directory): its images
    into Train Infusion Concept, or the latents of Make Training Dataset ("dataset"), or of Resolution Bucket
    after it ("buckets"); with or without the texts of Load Image-Text. Returns the prompt and the trainer's
    path output (node, slot)."""
    prompt, definitions = smoke.prompt("train_from_dataset")
    nodes = {kind: smoke_mod.nodes_of(prompt, kind)[0]
             for kind in ("CheckpointLoaderSimple", "LoadImageTextDataSetFromFolder", "TrainInfusion")}
    checkpoint, load, train = nodes.values()
    set_input(prompt, definitions, load, "folder", folder)
    set_input(prompt, definitions, train, "resolution", 256)
    set_input(prompt, definitions, train, "steps", 1)
    set_input(prompt, definitions, train, "sample_every", 0)  # what is checked is what trains, not its previews
    set_input(prompt, definitions, train, "output_name", f"dataset_{route}")
    prompt["90"] = {"class_type": "MakeTrainingDataset", "inputs": {"images": [load, 0], "vae": [checkpoint, 2],
                                                                    "clip": [checkpoint, 1], "texts": [load, 1]}}
    prompt["91"] = {"class_type": "ResolutionBucket", "inputs": {"latents": ["90", 0], "conditioning": ["90", 1]}}
    inputs = prompt[train]["inputs"]
    if route != "images":
        del inputs["photos"]
        inputs["latents"] = ["90" if route == "dataset" else "91", 0]
    if not texts:
        del inputs["texts"]
    return prompt, (train, smoke_mod.output_slot(definitions, "TrainInfusion", "STRING"))


def test_the_latents_of_make_training_dataset_and_resolution_bucket_train(smoke, registry):
    if "ResolutionBucket" not in registry:  # 0.3.64: no dataset nodes, Load Concept Photos is the route
        assert "MakeTrainingDataset" not in registry and "train_from_dataset" not in examples.runnable(registry)
        return
    import glob
    import folder_paths
    # The dog's photos, one caption, and a fourth photo of photo_0's size (Resolution Bucket groups the two), in a
    # folder of their own (ComfyUI's executor keeps a loader's output while its inputs are unchanged).
    folder = os.path.join(folder_paths.get_input_directory(), "smoke_dataset")
    shutil.copytree(smoke.photos["dog"], folder)
    shutil.copy(os.path.join(folder, "photo_0.png"), os.path.join(folder, "photo_3.png"))
    with open(os.path.join(folder, "photo_0.txt"), "w", encoding="utf-8") as f:
        f.write("a {} on a gradient")
    try:
        trained = {}
        for route, texts in (("images", True), ("dataset", True), ("buckets", False)):
            prompt, output = _dataset_prompt(smoke, "smoke_dataset", route, texts)
            path = smoke.runner.run_or_raise(prompt).output(*output)
            trained[route] = load_concept(path).metadata["training"]
        with pytest.raises(Exception, match="Resolution Bucket.*texts"):
            smoke.runner.run_or_raise(_dataset_prompt(smoke, "smoke_dataset", "buckets", texts=True)[0])
    finally:
        shutil.rmtree(folder)
    # The photos are 96 x 96 (twice), 80 x 128 and 128 x 80 (Load Image-Text lists a folder in its own order).
    assert sorted(map(tuple, trained["images"]["sizes"])) == [(192, 320), (256, 256), (256, 256), (320, 192)]
    assert trained["images"]["captions"] is True and trained["dataset"]["captions"] is True
    # latents train at their own sizes (in latent pixels): the photos' own, as Make Training Dataset encodes them
    assert sorted(map(tuple, trained["dataset"]["sizes"])) == [(10, 16), (12, 12), (12, 12), (16, 10)]
    assert sorted(map(tuple, trained["buckets"]["sizes"])) == sorted(map(tuple, trained["dataset"]["sizes"]))
    assert trained["buckets"]["captions"] is False
    assert glob.glob(os.path.join(os.path.dirname(path), "dataset_*.safetensors"))


def test_generate_with_concept_draws_the_concept_on_its_own_prompt(smoke, trained):
    image = smoke.generate()
    assert image.shape == (1, smoke_mod.IMAGE_SIZE, smoke_mod.IMAGE_SIZE, 3)
    assert not torch.equal(image, smoke.generate(bypass_apply=True))  # the example's prompt says the word


def test_a_prompt_without_the_word_reproduces_the_base_image_exactly(smoke, trained):
    text = "a photo of a red car in the city"
    assert torch.equal(smoke.generate(text), smoke.generate(text, bypass_apply=True))
    # ...while the prompt with the word does change it (the concept is applied at all).
    with_word = "a photo of a dog in the city"
    assert not torch.equal(smoke.generate(with_word), smoke.generate(with_word, bypass_apply=True))


def test_multi_concept_applies_each_concept_on_its_own_word(smoke, trained):
    both = smoke.multi()  # the example's prompt says both words
    # Each concept changes the image: with both it is neither the base model's nor either concept's alone.
    for alone in (smoke.multi(bypass_apply=True), smoke.multi(applied=("dog",)), smoke.multi(applied=("teapot",))):
        assert not torch.equal(both, alone)
    # A prompt with one word is that concept's alone, bit for bit, and one with neither word the base model's.
    one_word = "a photo of a dog in the city"
    assert torch.equal(smoke.multi(one_word), smoke.multi(one_word, applied=("dog",)))
    no_word = "a photo of a red car in the city"
    assert torch.equal(smoke.multi(no_word), smoke.multi(no_word, bypass_apply=True))


def test_blend_concepts_draws_and_reports_the_blend(smoke, trained):
    image, report = smoke.blend()
    assert image.shape == (1, smoke_mod.IMAGE_SIZE, smoke_mod.IMAGE_SIZE, 3)
    assert "'smoke_dog+smoke_teapot' (word 'dog')" in report and "'weight': 0.5" in report


def test_measure_overfitting_measures_the_concept(smoke, trained):
    lfd, w2 = smoke.measure()
    assert lfd == 0.0  # Infusion leaves prompts without the word exactly as they were
    # The base model against itself is W2's zero, up to rounding (about 1e-13 here); the concept's images are
    # measurably further from the base model's (about 1e-5 after two training steps on the tiny model).
    _, w2_self = smoke.measure(bypass_apply=True)
    assert w2 > 1000 * w2_self


def test_train_command_prompt_uses_the_node_options(smoke, trained):
    """The train command's prompt, from the live definitions and its own option parser."""
    import folder_paths
    definitions = node_definitions([train.CHECKPOINT_NODE, train.PHOTOS_NODE, train.TRAIN_NODE, train.SAVE_NODE])
    parser = argparse.ArgumentParser()
    specs = train.add_node_options(parser, definitions[train.TRAIN_NODE])
    options = parser.parse_args(["--word", "teapot", "--output-name", "cli_teapot", "--no-gradient-checkpointing",
                                 "--sample-prompt", "a {} on a table", "--sample-prompt", "a red teapot",
                                 "--sample-every", "1"]
                                + [f"--{k.replace('_', '-')}={v}" for k, v in
                                   smoke_mod.TINY_SETTINGS["TrainInfusion"].items() if k != "gradient_checkpointing"])
    settings = train.node_settings(options, specs)
    assert settings["sample_prompts"] == "a {} on a table\na red teapot"
    job = train.job_for(smoke.photos["teapot"], settings)
    prompt = train.train_prompt(definitions, smoke_mod.CHECKPOINT, job)
    result = smoke.runner.run_or_raise(prompt)
    text = train.summary(result, definitions, folder_paths.get_output_directory(), prompt)
    path = os.path.join(folder_paths.get_folder_paths("infusion")[0], "cli_teapot.safetensors")
    assert f"concept:    {path}" in text and load_concept(path).word == "teapot"
    assert "loss graph: " in text and os.path.isfile(text.split("loss graph: ")[1].split("\n")[0].strip())
    previews = text.split("previews:   ")[1].strip()
    assert sorted(os.listdir(previews)) == [f"step{s:05d}_{p}.png" for s in range(3) for p in (1, 2)]


def test_train_command_in_a_fresh_process(comfy_path, smoke, tmp_path):
    """`python -m infusion train` as a user runs it: finds ComfyUI, loads it and the pack, trains from a photo
    folder on a checkpoint file and writes the concept (ComfyUI's folders in a temporary base directory)."""
    import folder_paths
    checkpoint = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], smoke_mod.CHECKPOINT)
    options = [f"--{k.replace('_', '-')}={v}" for k, v in smoke_mod.TINY_SETTINGS["TrainInfusion"].items()
               if k != "gradient_checkpointing"]
    env = {**os.environ, "COMFYUI_PATH": comfy_path}
    done = subprocess.run([sys.executable, "-m", "infusion", "train", "--checkpoint", checkpoint,
                           "--photos", smoke.photos["dog"], "--word", "dog", "--output-name", "fresh_dog",
                           "--no-gradient-checkpointing", *options, "--", "--base-directory", str(tmp_path)],
                          cwd=h.PACK_ROOT, env=env, capture_output=True, text=True, timeout=h.HANG)
    assert done.returncode == 0, done.stdout + done.stderr
    path = tmp_path / "models" / "infusion" / "fresh_dog.safetensors"
    assert f"concept:    {path}" in done.stdout and load_concept(str(path)).word == "dog"


# ------------------------------------------------------------------ the Flux and video examples, end to end

class _TinyLoader:
    """Test-only stand-ins for a DiT example's three loaders: a tiny model of the family (tests' tiny_dit), its CLIP
    (the family's text encoders at tiny widths) and a VAE of its latents. ComfyUI's own loaders detect only
    full-size files; everything downstream runs as a user's graph does."""
    CATEGORY = "tests"
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


def _tiny_loaders(family: str, vae: Any, clip_loader: str) -> dict[str, type]:
    model, clip = h.tiny_dit(family)
    made = {}
    for name, kind, value in (("UNETLoader", "MODEL", model), (clip_loader, "CLIP", clip), ("VAELoader", "VAE", vae)):
        made[name] = type(f"Tiny{family.title()}{kind.title()}", (_TinyLoader,),
                          {"RETURN_TYPES": (kind,), "load": lambda self, v=value: (v,)})
    return made


# The examples at smoke size: a clip of 5 frames (2 of Wan's latent frames) at 32 x 32 and one-frame previews (0.3.64
# builds Wan's VAE at its released width, whatever the weights: each 64 x 64 frame takes it a second), and 2 sampling
# steps (UniPC draws its one step from the noise alone).
SMOKE_INPUTS = {"EmptySD3LatentImage": {"width": smoke_mod.IMAGE_SIZE, "height": smoke_mod.IMAGE_SIZE},
                "EmptyHunyuanLatentVideo": {"width": 32, "height": 32, "length": 5},
                "TrainInfusion": {"sample_frames": 1}, "KSampler": {"steps": 2}}


def _example_prompt(example, smoke, loaders, bypass=(), text=None):
    prompt, definitions = smoke_mod.smoke_prompt(example, bypass)
    if text is not None:
        set_prompt(prompt, definitions, text)
    for node_id, node in prompt.items():
        if node["class_type"] in loaders:
            node["class_type"], node["inputs"] = loaders[node["class_type"]].__name__, {}
        elif node["class_type"] in SMOKE_INPUTS:
            node["inputs"].update(SMOKE_INPUTS[node["class_type"]])
        elif node["class_type"] == "LoadConceptPhotos":
            node["inputs"]["folder"] = smoke.photos["dog"]
    return prompt


def _run_example(example, smoke, loaders, monkeypatch):
    """The example's concept and decoded output, and a function drawing it with another prompt (and bypasses)."""
    import nodes
    for kind in loaders.values():
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, kind.__name__, kind)
    prompt = _example_prompt(example, smoke, loaders)
    result = smoke.runner.run_or_raise(prompt)
    train_id = smoke_mod.nodes_of(prompt, "TrainInfusion")[0]

    def drawn(text, bypass=()):
        p = _example_prompt(example, smoke, loaders, bypass, text)
        return smoke.runner.run_or_raise(p).output(smoke_mod.nodes_of(p, "VAEDecode")[0])
    return (load_concept(result.output(train_id, 3)), result.output(train_id, 4),
            result.output(smoke_mod.nodes_of(prompt, "VAEDecode")[0]), drawn)


def test_the_flux_example_trains_and_generates_and_leaves_other_prompts_exact(smoke, monkeypatch):
    from infusion_dev import tiny_dits
    concept, _, image, drawn = _run_example("flux_concept", smoke, _tiny_loaders("flux", tiny_dits.flux_vae(),
                                                                                 "DualCLIPLoader"), monkeypatch)
    assert concept.family == "Flux" and concept.vector_space == "value" and len(concept.values) == 4
    assert image.shape == (1, smoke_mod.IMAGE_SIZE, smoke_mod.IMAGE_SIZE, 3) and torch.isfinite(image).all()
    no_word = "a photo of a red car in the city"
    assert torch.equal(drawn(no_word), drawn(no_word, ("ApplyInfusion",)))
    with_word = "a photo of a dog in the city"
    assert not torch.equal(drawn(with_word), drawn(with_word, ("ApplyInfusion",)))


def test_the_video_example_trains_from_photos_and_draws_clips_that_keep_other_prompts_exact(smoke, monkeypatch):
    """video_concept on a tiny Wan 2.1 (with its VAE): the concept trains from the photos and the example draws a clip
    of 5 frames; a prompt without the word is Wan's, bit for bit, in every frame (its previews' clips:
    test_dit.py)."""
    from infusion_dev import tiny_dits
    with h.executor_mode():
        vae = tiny_dits.wan_vae()
    concept, previews, frames, drawn = _run_example("video_concept", smoke, _tiny_loaders("wan21", vae, "CLIPLoader"),
                                                    monkeypatch)
    assert concept.family == "WAN21_T2V" and len(concept.values) == 2
    size = smoke_mod.IMAGE_SIZE
    assert previews.shape[1:] == (2 * size, 2 * size, 3)  # 2 prompts; the base model and the end
    assert frames.shape == (5, 32, 32, 3) and torch.isfinite(frames).all()
    no_word = "a red car driving through the city"
    assert torch.equal(drawn(no_word), drawn(no_word, ("ApplyInfusion",)))
    with_word = "a dog running through the city"
    assert not torch.equal(drawn(with_word), drawn(with_word, ("ApplyInfusion",)))