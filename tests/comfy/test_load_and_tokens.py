"""Load Infusion, the models/infusion folder, and class-word positions with ComfyUI's tokenizers."""
import copy
import os

import pytest
import torch

from infusion_dev import comfy_harness as h


def node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]


@pytest.fixture
def infusion_dir(pack):
    """models/infusion, with whatever a test writes there removed afterwards."""
    import folder_paths
    folder = os.path.join(folder_paths.models_dir, "infusion")
    os.makedirs(folder, exist_ok=True)
    before = set(os.listdir(folder))
    yield folder
    for name in set(os.listdir(folder)) - before:
        os.remove(os.path.join(folder, name))


def save(pack, model, path, word="dog"):
    concept_mod = h.pack_submodule(pack, "infusion.concept")
    fmt = h.pack_submodule(pack, "infusion.format")
    layers, family = h.pack_submodule(pack, "infusion.patching").model_layers(model)
    c = concept_mod.InfusionConcept.zeros(word, layers, family)
    for layer in c.values:
        c.values[layer] = torch.randn(c.values[layer].shape)
    fmt.save_concept(c, str(path))
    return c


def test_models_infusion_folder_is_registered_and_loadable(pack, sd15, infusion_dir):
    import folder_paths
    folder = infusion_dir
    assert folder in folder_paths.get_folder_paths("infusion")
    saved = save(pack, sd15[0], os.path.join(folder, "rex.safetensors"))
    open(os.path.join(folder, "notes.txt"), "w").write("not a concept")
    assert "rex.safetensors" in folder_paths.get_filename_list("infusion")
    assert "notes.txt" not in folder_paths.get_filename_list("infusion")
    loaded = node("LoadInfusion").execute("rex.safetensors").result[0]
    assert loaded.word == "dog" and loaded.family == "custom"
    for layer, v in saved.values.items():
        assert torch.equal(loaded.values[layer], v.half().float())


def test_extra_model_paths_folder_is_listed(pack, sd15, tmp_path):
    import folder_paths
    folder_paths.add_model_folder_path("infusion", str(tmp_path))  # what extra_model_paths.yaml does
    try:
        save(pack, sd15[0], tmp_path / "elsewhere.safetensors", word="teapot")
        assert "elsewhere.safetensors" in folder_paths.get_filename_list("infusion")
        assert node("LoadInfusion").execute("elsewhere.safetensors").result[0].word == "teapot"
    finally:
        folder_paths.folder_names_and_paths["infusion"][0].remove(str(tmp_path))


def test_loader_refuses_a_lora_with_a_clear_message(pack, infusion_dir):
    from safetensors.torch import save_file
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, os.path.join(infusion_dir, "a_lora.safetensors"))
    with pytest.raises(ValueError, match="looks like a LoRA"):
        node("LoadInfusion").execute("a_lora.safetensors")


def test_node_schema_has_tooltips_everywhere(pack):
    for name in ("LoadInfusion", "ApplyInfusion"):
        schema = node(name).define_schema()
        assert schema.inputs and all(i.tooltip for i in schema.inputs), name


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
@pytest.mark.parametrize("text, word, expected", [
    ("a photo of a dog", "dog", (5,)),
    ("A Dog, running with another dog.", "dog", (2, 7)),
    ("a (dog:1.3) next to a hotdog stand", "dog", (2,)),
    ("two dogs", "dog", ()),
    ("my Teddy Bear on a bed", "teddy bear", (2, 3)),
])
def test_word_positions_with_comfy_tokenizers(pack, request, family, text, word, expected):
    _, clip = request.getfixturevalue(family)
    prompt = h.pack_submodule(pack, "infusion.word_positions")
    positions = prompt.word_positions(clip.tokenizer, clip.tokenize(text), [word])
    assert positions.length == 77
    assert positions.words.get(word, ()) == expected


def test_multi_token_word_and_long_prompt(pack, sd15):
    _, clip = sd15
    prompt = h.pack_submodule(pack, "infusion.word_positions")
    ids = prompt.word_token_ids(clip.tokenizer, "axolotl")
    assert len(ids) > 1  # a word of several BPE tokens: every piece gets the residual
    text = " ".join(["scenery"] * 80) + " and an axolotl"
    positions = prompt.word_positions(clip.tokenizer, clip.tokenize(text), ["axolotl"])
    assert positions.length == 154
    found = positions.words["axolotl"]
    assert len(found) == len(ids) and list(found) == list(range(found[0], found[0] + len(ids))) and found[0] > 77


def test_a_link_out_of_the_model_folders_is_refused(pack, sd15, infusion_dir, tmp_path):
    outside = tmp_path / "outside.safetensors"
    save(pack, sd15[0], outside)
    os.symlink(outside, os.path.join(infusion_dir, "linked_out.safetensors"))
    with pytest.raises(ValueError, match="linked_out.safetensors is a link to .*outside the Infusion model folders"):
        node("LoadInfusion").execute("linked_out.safetensors")
    # A link that stays inside the folders is an ordinary file to the user.
    save(pack, sd15[0], os.path.join(infusion_dir, "inside.safetensors"))
    os.symlink(os.path.join(infusion_dir, "inside.safetensors"), os.path.join(infusion_dir, "alias.safetensors"))
    assert node("LoadInfusion").execute("alias.safetensors").result[0].word == "dog"


def test_a_concept_file_replaced_on_disk_is_read_again_on_the_next_queue(pack, sd15, infusion_dir):
    """ComfyUI's executor caches Load Infusion's output while its inputs are unchanged: a file trained again
    under the same name, or replaced by hand (same size, even its time stamp kept, as `cp -p` does), is read
    again on the next queue, never served stale from the cache."""
    from infusion.cli.executor import Runner

    model, _ = sd15
    path = os.path.join(infusion_dir, "swapped.safetensors")
    prompt = {"1": {"class_type": "LoadInfusion", "inputs": {"concept_name": "swapped.safetensors"}},
              "2": {"class_type": "InfusionConceptInfo", "inputs": {"infusion": ["1", 0]}}}
    runner = Runner(lambda event, data: None)
    first = save(pack, model, path)
    stamp = os.stat(path).st_mtime_ns
    loaded = runner.run_or_raise(copy.deepcopy(prompt)).output("1")  # a fresh prompt per queue, as the UI sends
    assert all(torch.equal(loaded.values[l], first.values[l].half().float()) for l in first.values)
    second = save(pack, model, path)
    os.utime(path, ns=(stamp, stamp))
    again = runner.run_or_raise(copy.deepcopy(prompt)).output("1")
    assert all(torch.equal(again.values[l], second.values[l].half().float()) for l in second.values)
