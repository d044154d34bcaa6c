"""The headless runner's ComfyUI-free parts (its train command's options and batch files, finding ComfyUI),
and the development tools' checks of the shipped example workflows (workflow checks, settings on a prompt)."""
import os
import subprocess
import sys

import pytest

from infusion.cli import locate, train
from infusion_dev import examples, overrides, validate

from core_helpers import HANG

# Node definitions in ComfyUI's /object_info format (V1 combos as lists, V3 as "COMBO" + options).
DEFS = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "output": ["MODEL", "CLIP"], "output_name": ["MODEL", "CLIP"], "display_name": "Loader"},
    "Encode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
               "input_order": {"required": ["text", "clip"]}, "output": ["CONDITIONING"], "display_name": "Encode"},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "min": 0, "max": 99}],
                                       "steps": ["INT", {"default": 20, "min": 1, "max": 100}],
                                       "positive": ["CONDITIONING", {}],
                                       "mode": ["COMBO", {"options": ["x", "y"], "control_after_generate": True}]},
                          "optional": {"strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}],
                                       "fast": ["BOOLEAN", {"default": False}]}},
                "input_order": {"required": ["model", "seed", "steps", "positive", "mode"],
                                "optional": ["strength", "fast"]},
                "output": ["LATENT"], "display_name": "Sampler"},
    "Patch": {"input": {"required": {"model": ["MODEL", {}], "clip": ["CLIP", {}],
                                     "seed": ["INT", {"default": 0, "control_after_generate": False}]}},
              "output": ["MODEL", "CLIP"], "display_name": "Patch"},
}


def node(node_id, kind, widgets=(), inputs=(), mode=0, title=None):
    out = {"id": node_id, "type": kind, "mode": mode, "widgets_values": list(widgets),
           "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs]}
    if title:
        out["title"] = title
    return out


def graph(*nodes, links=()):
    return {"nodes": list(nodes), "links": [list(link) for link in links], "version": 0.4}


def basic():
    """Loader -> Patch -> Sampler, Encode (clip from Patch) -> Sampler.positive, plus a note."""
    return graph(
        node(1, "Loader", ["a.safetensors"]),
        node(2, "Patch", [7], [("model", "MODEL", 1), ("clip", "CLIP", 2)]),
        node(3, "Encode", ["a dog"], [("clip", "CLIP", 3)], title="Prompt"),
        node(4, "Sampler", [5, "fixed", 10, "x", "fixed", "", 1.5, True],
             [("model", "MODEL", 4), ("positive", "CONDITIONING", 5)]),
        node(5, "MarkdownNote", ["# hello"]),
        links=[(1, 1, 0, 2, 0, "MODEL"), (2, 1, 1, 2, 1, "CLIP"), (3, 2, 1, 3, 0, "CLIP"),
               (4, 2, 0, 4, 0, "MODEL"), (5, 3, 0, 4, 1, "CONDITIONING")])


# ------------------------------------------------------------------ checking

def test_a_good_workflow_has_no_problems():
    assert validate.check_workflow(basic(), DEFS) == []


def test_problems_are_found_and_named():
    wf = basic()
    wf["nodes"][0]["widgets_values"] = ["missing.safetensors"]
    wf["nodes"][3]["widgets_values"] = [5, "sometimes", 500, "z", "fixed", "", 1.5, "yes"]
    wf["links"][4][5] = "LATENT"  # a CONDITIONING link declared as LATENT
    wf["nodes"][1]["inputs"][0]["link"] = None  # Patch.model no longer connected
    problems = validate.check_workflow(wf, DEFS)
    text = "\n".join(map(str, problems))
    assert [p.kind for p in problems if "missing.safetensors" in p.message] == ["model"]
    assert "steps 500 is above its maximum 100" in text
    assert "mode 'z' is not one of its options" in text
    assert "fast 'yes' is not a BOOLEAN" in text
    assert "control of seed is 'sometimes'" in text
    assert "required input model is not connected" in text
    assert "link 5 is LATENT but the output of node #3 (Encode, 'Prompt') is CONDITIONING" in text


def test_type_matching_follows_comfyui():
    assert validate.types_match("*", "MODEL") and validate.types_match("IMAGE,MASK", "MASK")
    assert not validate.types_match("IMAGE", "LATENT")


# ------------------------------------------------------------------ overrides

def basic_prompt():
    """basic() as the frontend queues it."""
    return {"1": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}, "_meta": {"title": "Loader"}},
            "2": {"class_type": "Patch", "inputs": {"model": ["1", 0], "clip": ["1", 1], "seed": 7},
                  "_meta": {"title": "Patch"}},
            "3": {"class_type": "Encode", "inputs": {"text": "a dog", "clip": ["2", 1]}, "_meta": {"title": "Prompt"}},
            "4": {"class_type": "Sampler", "inputs": {"model": ["2", 0], "seed": 5, "steps": 10, "positive": ["3", 0],
                                                      "mode": "x", "strength": 1.5, "fast": True},
                  "_meta": {"title": "Sampler"}}}


def test_set_by_id_title_or_type_and_values_typed_by_the_input():
    prompt = basic_prompt()
    assert overrides.set_input(prompt, DEFS, "Sampler", "steps", "30") == ["4"]
    assert overrides.set_input(prompt, DEFS, "Prompt", "text", "a cat") == ["3"]
    overrides.set_input(prompt, DEFS, "4", "fast", "false")
    overrides.set_input(prompt, DEFS, "4", "strength", "0.25")
    assert prompt["4"]["inputs"]["steps"] == 30 and prompt["4"]["inputs"]["fast"] is False
    assert prompt["4"]["inputs"]["strength"] == 0.25 and prompt["3"]["inputs"]["text"] == "a cat"
    with pytest.raises(overrides.OverrideError, match="no node 'KSampler'"):
        overrides.set_input(prompt, DEFS, "KSampler", "steps", "3")
    with pytest.raises(overrides.OverrideError, match="has no setting 'cfg'; its settings are: seed, steps, mode"):
        overrides.set_input(prompt, DEFS, "4", "cfg", "3")
    with pytest.raises(overrides.OverrideError, match="'many' is not an INT"):
        overrides.set_input(prompt, DEFS, "4", "steps", "many")


def test_the_prompt_is_set_on_the_encoder_that_feeds_the_sampler():
    prompt = basic_prompt()
    assert overrides.set_prompt(prompt, DEFS, "a teapot") == ["3"] and prompt["3"]["inputs"]["text"] == "a teapot"
    del prompt["4"]
    with pytest.raises(overrides.OverrideError, match="no text encoder feeds a sampler's 'positive' input"):
        overrides.set_prompt(prompt, DEFS, "a teapot")


def test_the_prompt_is_found_through_nodes_that_pass_a_conditioning_on():
    """Flux graphs: CLIPTextEncode -> FluxGuidance -> the sampler's positive."""
    prompt = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["9", 0]}},
              "2": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["1", 0], "guidance": 3.5}},
              "3": {"class_type": "KSampler", "inputs": {"positive": ["2", 0], "negative": ["4", 0]}},
              "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["9", 0]}}}
    assert overrides.positive_prompt_nodes(prompt) == ["1"]
    prompt["2"]["inputs"]["conditioning"] = ["2", 0]  # a cycle ends the search instead of looping
    assert overrides.positive_prompt_nodes(prompt) == []


# ------------------------------------------------------------------ train command options and batch files

TRAIN_DEF = {"input": {"required": {
    "model": ["MODEL", {}], "word": ["STRING", {"default": "dog"}], "output_name": ["STRING", {"default": "c"}],
    "steps": ["INT", {"default": 500, "min": 1}], "flip": ["BOOLEAN", {"default": True}],
    "variant": ["COMBO", {"options": ["value", "key+value"], "default": "value"}],
    "templates": ["STRING", {"default": "{}", "multiline": True}]}}, "output": ["INFUSION"]}


def test_node_settings_become_typed_options():
    import argparse
    parser = argparse.ArgumentParser()
    specs = train.add_node_options(parser, TRAIN_DEF)
    assert list(specs) == ["word", "output_name", "steps", "flip", "variant", "templates"]
    args = parser.parse_args(["--steps", "20", "--no-flip", "--variant", "key+value"])
    assert (args.steps, args.flip, args.variant, args.word) == (20, False, "key+value", None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--variant", "keys"])


def test_batch_file_rows_become_jobs(tmp_path):
    import argparse
    specs = train.add_node_options(argparse.ArgumentParser(), TRAIN_DEF)
    (tmp_path / "captions.txt").write_text("a photo of a {}\n{}")
    csv_file = tmp_path / "concepts.csv"
    csv_file.write_text(f"photos,word,steps,flip,templates\nphotos/rex,dog,,false,@{tmp_path / 'captions.txt'}\n"
                        "photos/pot,teapot,50,,\n")
    jobs = train.batch_jobs(str(csv_file), specs, {"steps": 100})
    assert [j.photos for j in jobs] == [str(tmp_path / "photos" / "rex"), str(tmp_path / "photos" / "pot")]
    assert jobs[0].settings == {"steps": 100, "word": "dog", "flip": False, "templates": "a photo of a {}\n{}",
                                "output_name": "rex"}
    assert jobs[1].settings == {"steps": 50, "word": "teapot", "output_name": "pot"}
    csv_file.write_text("photos,word,color\nrex,dog,red\n")
    with pytest.raises(ValueError, match="line 2: unknown column 'color'"):
        train.batch_jobs(str(csv_file), specs, {})
    csv_file.write_text("photos,steps\nrex,10\n")
    with pytest.raises(ValueError, match="no class word"):
        train.batch_jobs(str(csv_file), specs, {})


def test_a_batch_ends_with_a_table_of_its_rows():
    rows = [train.RowResult("rex", "done", steps=500, loss=0.123456, seconds=61.2, file="/out/rex.safetensors"),
            train.RowResult("ghost", "failed", "ValueError: photo folder not found: /x"),
            train.RowResult("pot", "cancelled", steps=120, seconds=9.0),
            train.RowResult("cat", "not run")]
    assert train.table(rows).splitlines() == [
        "row  name   status     steps  final loss  seconds  file",
        "1    rex    done       500    0.1235      61       /out/rex.safetensors",
        "2    ghost  failed     -      -           -        -",
        "3    pot    cancelled  120    -           9        -",
        "4    cat    not run    -      -           -        -"]
    assert train.row_lines(rows[1]) == "  failed: ValueError: photo folder not found: /x"
    assert "step 120 is saved with a resume state" in train.row_lines(rows[2])


def test_ray_is_optional_and_its_absence_says_how_to_install_it(monkeypatch):
    from infusion.cli import cluster
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ValueError, match=r"--ray needs Ray.* -m pip install ray"):
        cluster.import_ray()
    with open(os.path.join(locate.PACK_ROOT, "requirements.txt")) as f:
        assert not [line for line in f if line.strip().lower().startswith("ray")]


# ------------------------------------------------------------------ finding ComfyUI

def fake_comfyui(root):
    (root / "comfy").mkdir(parents=True)
    (root / "nodes.py").write_text("")
    return root


def test_find_comfyui_from_the_environment_or_custom_nodes(tmp_path):
    root = fake_comfyui(tmp_path / "ComfyUI")
    pack = root / "custom_nodes" / "ComfyUI-Infusion"
    pack.mkdir(parents=True)
    assert locate.find_comfyui(str(tmp_path), {"COMFYUI_PATH": str(root)}) == str(root)
    assert locate.find_comfyui(str(pack), {}) == str(root)
    with pytest.raises(locate.ComfyUINotFound, match="has no nodes.py"):
        (root / "nodes.py").unlink()
        locate.find_comfyui(str(tmp_path), {"COMFYUI_PATH": str(root)})
    with pytest.raises(locate.ComfyUINotFound, match="COMFYUI_PATH is not set and this pack .* is not inside"):
        locate.find_comfyui(str(tmp_path / "elsewhere"), {})


def test_requirements_are_read_by_distribution_name(tmp_path):
    text = "comfyui-frontend-package==1.27.10\ntorch\nnumpy>=1.25.0\n#non essential:\nkornia>=0.7.1 ; python_version>'3'\n"
    assert locate.requirement_names(text) == ["comfyui-frontend-package", "torch", "numpy", "kornia"]
    root = fake_comfyui(tmp_path / "ComfyUI")
    (root / "requirements.txt").write_text(text + "surely-not-installed-package-xyz\n")
    assert locate.missing_requirements(str(root)) == [
        n for n in ("torch", "numpy", "kornia") if not _installed(n)] + ["surely-not-installed-package-xyz"]


def _installed(name):
    import importlib.metadata
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_the_runner_says_what_is_missing(tmp_path):
    env = {**os.environ, "COMFYUI_PATH": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-m", "infusion", "train", "--checkpoint", "x.safetensors"],
                          cwd=locate.PACK_ROOT, env=env,
                          capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 1
    assert f"COMFYUI_PATH={tmp_path / 'nowhere'} does not exist" in done.stderr


# ------------------------------------------------------------------ the first run's ComfyUI and Python

def comfyui_tree(root, version):
    """A ComfyUI folder as far as the first run's choice looks: nodes.py, comfy/ (comfy.utils imports), its version."""
    fake_comfyui(root)
    (root / "comfy" / "utils.py").write_text("")
    (root / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    return root


def python_at(path, ready):
    """An executable that runs this test's Python (torch, transformers, ... installed) or, not ready, the same
    Python without its site-packages (-S: no torch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" {"" if ready else "-S "}"$@"\n')
    path.chmod(0o755)
    return str(path)


def first_run_setup(pack, path_dir, comfyui_path=None):
    """`.ci/first-run --print-setup` of the pack at `pack`, with only `path_dir` and the system's folders on PATH:
    (exit code, {"ComfyUI": ..., "Python": ...}, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    env["PATH"] = f"{path_dir}:/usr/bin:/bin"
    if comfyui_path:
        env["COMFYUI_PATH"] = str(comfyui_path)
    done = subprocess.run(["/bin/bash", str(pack / ".ci" / "first-run"), "--print-setup"], env=env,
                          capture_output=True, text=True, timeout=HANG)
    lines = dict(line.partition(": ")[::2] for line in done.stdout.splitlines())
    return done.returncode, lines, done.stderr


def test_the_first_run_uses_the_comfyui_it_is_installed_in_and_its_python_when_ready(tmp_path):
    comfy = comfyui_tree(tmp_path / "ComfyUI", "0.3.99")
    (comfy / "custom_nodes").mkdir()
    pack = comfy / "custom_nodes" / "ComfyUI-Infusion"
    pack.symlink_to(locate.PACK_ROOT)  # a clone linked into custom_nodes: found where it is linked, not where it is
    bin_dir = tmp_path / "bin"
    python_at(bin_dir / "python3", ready=False)
    python_at(bin_dir / "python", ready=False)
    # No ready Python: the environment CI builds, for this ComfyUI's version.
    assert first_run_setup(pack, bin_dir)[:2] == (0, {"ComfyUI": str(comfy), "Python": ".venv-0.3.99/bin/python"})
    # python3 on PATH has everything: it runs.
    ready_on_path = python_at(bin_dir / "python3", ready=True)
    assert first_run_setup(pack, bin_dir)[1] == {"ComfyUI": str(comfy), "Python": ready_on_path}
    # A virtual environment in the ComfyUI folder comes first.
    venv_python = python_at(comfy / "venv" / "bin" / "python", ready=True)
    assert first_run_setup(pack, bin_dir)[1] == {"ComfyUI": str(comfy), "Python": venv_python}
    # $COMFYUI_PATH comes before the ComfyUI the pack is in (a tree without a venv: python3 on PATH).
    other = comfyui_tree(tmp_path / "Other", "0.33.0")
    assert first_run_setup(pack, bin_dir, other)[1] == {"ComfyUI": str(other), "Python": ready_on_path}
    # ... and one that is not a ComfyUI stops the run with the runner's own message.
    code, _, err = first_run_setup(pack, bin_dir, tmp_path / "nowhere")
    assert code == 1 and f"COMFYUI_PATH={tmp_path / 'nowhere'} does not exist" in err


def test_the_first_run_outside_comfyui_uses_the_shared_trees(tmp_path):
    shared = comfyui_tree(tmp_path / "shared" / "ComfyUI-0.33.0", "0.33.0")
    pack = tmp_path / "checkout"
    pack.mkdir()
    for name in (".ci", "infusion", "requirements.txt"):  # what the choice reads, linked into a real folder
        (pack / name).symlink_to(os.path.join(locate.PACK_ROOT, name))
    bin_dir = tmp_path / "bin"
    python_at(bin_dir / "python3", ready=False)
    assert first_run_setup(pack, bin_dir)[:2] == (0, {"ComfyUI": str(shared), "Python": ".venv-0.33.0/bin/python"})


# ------------------------------------------------------------------ the shipped example workflows

EXAMPLES = examples.example_names()


def test_the_examples_are_shipped_where_comfyui_serves_templates():
    assert EXAMPLES == ["blend_concepts", "flux_concept", "generate_with_concept", "measure_overfitting", "multi_concept",
                        "train_concept", "train_from_dataset", "video_concept"]
    assert os.path.basename(examples.WORKFLOWS_DIR) == "workflows"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_a_consistent_ui_workflow_with_a_note(name):
    wf = examples.load(name)
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    notes = [n for n in nodes.values() if n["type"] in validate.NOTE_TYPES]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200
    for link in validate.links_of(wf).values():
        assert nodes[link.origin_id]["outputs"][link.origin_slot]["type"] == link.type
        assert link.id in nodes[link.origin_id]["outputs"][link.origin_slot]["links"]
        assert nodes[link.target_id]["inputs"][link.target_slot]["link"] == link.id
    assert all(n.get("mode", 0) == 0 for n in nodes.values())
