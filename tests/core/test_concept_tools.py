"""The concept tools's core: blends (exact at the ends), re-binding, block-weight texts, reports."""
import os

import pytest
import torch

from infusion.concept import InfusionConcept
from infusion.layers import LayerId
from infusion.concept_tools import blend, layer_weights, rebind, report, residual_norms

from core_helpers import HANG, random_concept, sd15_layers

LAYERS = sorted(sd15_layers())


@pytest.mark.parametrize("variant", ["value", "key+value"])
def test_blend_is_exact_at_its_ends_and_linear_between(variant):
    a, b = random_concept(variant=variant, seed=1), random_concept(variant=variant, seed=2)
    for vectors in ("values", "keys"):
        if getattr(a, vectors) is None:
            continue
        one, zero = getattr(blend(a, b, 1.0), vectors), getattr(blend(a, b, 0.0), vectors)
        assert all(torch.equal(one[l], getattr(a, vectors)[l]) for l in LAYERS)  # bit for bit
        assert all(torch.equal(zero[l], getattr(b, vectors)[l]) for l in LAYERS)
        twice = getattr(blend(a, b, 2.0), vectors)  # extrapolates
        assert all(torch.allclose(twice[l], 2 * getattr(a, vectors)[l] - getattr(b, vectors)[l]) for l in LAYERS)


def test_blend_takes_a_word_and_records_its_lineage():
    a, b = random_concept("dog", seed=1), random_concept("cat", seed=2)
    mixed = blend(a, b, 0.25)
    assert mixed.word == "dog" and mixed.token_ids == a.token_ids
    assert blend(a, b, 0.25, "Cat").word == "cat"
    assert blend(a, b, 0.25, "puppy").token_ids == ()
    assert mixed.metadata["lineage"] == {"blend": {"a": {"name": "rex", "word": "dog"},
                                                   "b": {"name": "rex", "word": "cat"}, "weight": 0.25}}
    again = blend(mixed, b, 0.5)  # a blend of a blend keeps its history
    assert again.metadata["lineage"]["blend"]["a"]["lineage"] == mixed.metadata["lineage"]


def test_blend_refuses_other_layers_or_variants():
    a = random_concept()
    fewer = InfusionConcept.zeros("dog", {l: w for l, w in sd15_layers().items() if l.block != "middle"}, "custom")
    with pytest.raises(ValueError, match="other cross-attention layers .*first that differs: middle.0.0"):
        blend(a, fewer, 0.5)
    with pytest.raises(ValueError, match="is value, .* is key\\+value"):
        blend(a, random_concept(variant="key+value"), 0.5)


def test_rebind_moves_the_concept_to_another_word():
    a = random_concept()
    puppy = rebind(a, " Puppy ")
    assert puppy.word == "puppy" and puppy.token_ids == () and puppy.values is a.values
    assert rebind(a, "dog") is a


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("input=1, middle=0.5, output=1", {LayerId("middle", 0, 0): 0.5}),
    ("output = 0; output.3.0=2", {**{l: 0.0 for l in LAYERS if l.block == "output"}, LayerId("output", 3, 0): 2.0}),
    (" ".join(["1"] * 15 + ["-0.5"]), {LAYERS[-1]: -0.5}),
    ("\n".join(["1"] * 16), {}),
])
def test_block_weights_texts(text, expected):
    assert layer_weights(text, LAYERS) == {l: expected.get(l, 1.0) for l in LAYERS}


@pytest.mark.parametrize("text, message", [
    ("inputs=1", "'inputs' is neither a block .* nor one of this concept's layers"),
    ("input=half", "'half' is not a number"),
    ("1, 2, 3", "3 numbers for 16 layers"),
    ("input=1, 0.5", "'0.5' is not understood"),
    ("input=", "'input=' is not understood"),
])
def test_block_weights_say_what_was_not_understood(text, message):
    with pytest.raises(ValueError, match=message):
        layer_weights(text, LAYERS)


def test_report_tells_what_the_concept_is_and_where_it_lives(tmp_path):
    from infusion.format import load_concept, save_concept
    a = random_concept()
    a.metadata = {"training": {"steps_done": 500, "steps": 500, "learning_rate": 0.01, "status": "complete"},
                  "provenance": {"base_model": "v1-5.safetensors"}}
    path = save_concept(a, str(tmp_path / "rex.safetensors"))
    loaded = load_concept(path)
    norms = residual_norms(loaded)
    assert norms == {l: float(loaded.values[l].norm()) for l in LAYERS}
    text = report(loaded, norms, value_space=False)
    for needle in ("'rex' (word 'dog')", "SD15, 16 cross-attention layers, text width 768, variant value",
                   f"file: {path}, {os.path.getsize(path) / 1024:.1f} KB", "steps_done 500", "status complete", "base model: v1-5.safetensors",
                   "|u|, text space", "middle 0.0: "):
        assert needle in text, needle


def test_the_runner_describes_concept_files_without_comfyui(tmp_path):
    import subprocess
    import sys
    from infusion.format import save_concept
    path = save_concept(random_concept(), str(tmp_path / "rex.safetensors"))
    (tmp_path / "notes.safetensors").write_text("not a concept")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    done = subprocess.run([sys.executable, "-m", "infusion", "info", path], cwd=root, env=env, capture_output=True,
                          text=True, timeout=HANG)
    assert done.returncode == 0 and done.stdout.startswith("Infusion concept 'rex' (word 'dog')"), done.stderr
    done = subprocess.run([sys.executable, "-m", "infusion", "info", str(tmp_path / "notes.safetensors")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 1 and "notes.safetensors is not a safetensors file" in done.stderr
