import os

import pytest
import torch
from safetensors.torch import save_file

from infusion.concept import ConceptMismatchError
from infusion.format import ConceptFileError, load_concept, save_concept
from infusion.layers import LayerId

from core_helpers import random_concept, sd15_layers


def test_round_trip_fp32_is_exact(tmp_path, concept):
    path = save_concept(concept, str(tmp_path / "rex.safetensors"), dtype="fp32")
    loaded = load_concept(path)
    assert loaded.word == "dog" and loaded.family == "SD15" and loaded.variant == "value"
    assert loaded.token_ids == (1929,) and loaded.name == "rex"
    assert loaded.value_widths == {l: w for l, (_, w) in sd15_layers().items()}
    for layer, v in concept.values.items():
        assert torch.equal(loaded.values[layer], v)


def test_round_trip_fp16_rounds_to_half(tmp_path, concept):
    loaded = load_concept(save_concept(concept, str(tmp_path / "rex.safetensors")))
    for layer, v in concept.values.items():
        assert torch.equal(loaded.values[layer], v.half().float())


def test_key_value_variant_and_metadata_round_trip(tmp_path):
    c = random_concept(variant="key+value")
    c.metadata = {"training": {"steps": 500, "lr": 0.01}, "provenance": {"base_model": "x.safetensors"}}
    loaded = load_concept(save_concept(c, str(tmp_path / "kv.safetensors"), dtype="fp32"))
    assert loaded.variant == "key+value"
    assert loaded.metadata == c.metadata
    assert all(torch.equal(loaded.keys[l], c.keys[l]) for l in c.keys)


def test_sd15_concept_file_is_small(tmp_path, concept):
    path = save_concept(concept, str(tmp_path / "rex.safetensors"))
    assert os.path.getsize(path) <= 32 * 1024


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, concept):
    path = tmp_path / "rex.safetensors"
    save_concept(concept, str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one
    before = path.read_bytes()
    concept.values[LayerId("input", 1, 0)] = torch.full((768,), float("nan"))
    with pytest.raises(Exception):
        save_concept(concept, str(path), dtype="fp64")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rex.safetensors"]


def _save_and_die_before_the_rename(concept, path):
    """A process killed mid-save (SIGKILL: no finally runs), after the bytes are written, before the rename."""
    import signal
    os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    save_concept(concept, path)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork")
def test_a_save_killed_mid_way_leaves_the_file_whole_and_its_temporary_goes_with_the_next_run(tmp_path, concept):
    import multiprocessing

    from infusion.training.session import name_lock

    save_concept(concept, str(tmp_path / "rex.safetensors"))
    before = (tmp_path / "rex.safetensors").read_bytes()
    for target in ("rex.safetensors", "rex_step00004.safetensors", "rex.resume", "rexa.safetensors"):
        child = multiprocessing.get_context("fork").Process(target=_save_and_die_before_the_rename,
                                                             args=(concept, str(tmp_path / target)))
        child.start()
        child.join()
        assert child.exitcode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 5 and all(n.endswith(".tmp") for n in left if n != "rex.safetensors"), left
    assert (tmp_path / "rex.safetensors").read_bytes() == before  # the file the killed save was for: unchanged
    with name_lock(str(tmp_path), "rex"):  # the next run of 'rex' removes its own temporaries, not 'rexa''s
        kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert kept == [n for n in left if n == "rex.safetensors" or n.startswith(".rexa.safetensors.")], kept


def test_a_name_that_would_overwrite_another_runs_snapshots_is_refused():
    from infusion.training.session import check_name

    assert check_name("rex_step") == "rex_step"
    with pytest.raises(ValueError, match="'rex_step00003' ends like the snapshots of a run named 'rex'"):
        check_name("rex_step00003.safetensors")


def _rewrite(path, tensors=None, meta_update=None, drop=()):
    from safetensors.torch import load_file
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(path)) if tensors is None else tensors
    for k in drop:
        t.pop(k)
    meta.update(meta_update or {})
    save_file(t, str(path), metadata=meta)


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a safetensors file"),
    ("empty", "not a safetensors file"),
    ("truncated", "truncated"),
    ("lora", "looks like a LoRA"),
    ("version", "format version '99'"),
    ("nan", "non-finite"),
    ("missing_layer", "do not match its layer list"),
    ("extra_tensor", "do not match its layer list"),
    ("text_width", "tensor value.input.1.0 is torch.float16 \\(768,\\), expected fp16/fp32 \\(1024,\\)"),
])
def test_bad_files_are_rejected_with_a_clear_message(tmp_path, concept, case, message):
    path = tmp_path / "bad.safetensors"
    save_concept(concept, str(path))
    if case == "garbage":
        path.write_bytes(b"\x89PNG\r\n" + os.urandom(500))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "lora":
        save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 4)}, str(path))
    elif case == "version":
        _rewrite(path, meta_update={"format_version": "99"})
    elif case == "nan":
        from safetensors.torch import load_file
        t = load_file(str(path))
        t["value.middle.0.0"][3] = float("nan")
        _rewrite(path, tensors=t)
    elif case == "missing_layer":
        _rewrite(path, drop=["value.output.11.0"])
    elif case == "extra_tensor":
        from safetensors.torch import load_file
        t = load_file(str(path))
        t["value.output.12.0"] = torch.zeros(768, dtype=torch.float16)
        _rewrite(path, tensors=t)
    elif case == "text_width":
        _rewrite(path, meta_update={"text_width": "1024"})
    with pytest.raises(ConceptFileError, match=message):
        load_concept(str(path))


def test_a_concept_fits_exactly_the_layers_it_was_made_for(concept):
    concept.check_fits(sd15_layers(), "SD15")
    # An SDXL-like model: other text width, other layers. The message names both families and the layers.
    sdxl_like = {LayerId("input", 4, i): (2048, 640) for i in range(70)}
    with pytest.raises(ConceptMismatchError, match="made for a SD15 model \\(16 cross-attention layers, text width "
                       "768\\) but this model is SDXL \\(70 cross-attention layers, text width 2048\\); first layers "
                       "that differ: input.1.0: concept text 768 -> value 320, model has no such layer"):
        concept.check_fits(sdxl_like, "SDXL")
    # Same names, one value width changed: the family label does not matter, the layers do.
    wider = dict(sd15_layers())
    wider[LayerId("output", 9, 0)] = (768, 640)
    with pytest.raises(ConceptMismatchError, match="differ: output.9.0: concept text 768 -> value 320, model text "
                       "768 -> value 640. Train"):
        concept.check_fits(wider, "SD15")
    fewer = dict(sd15_layers())
    fewer.pop(LayerId("middle", 0, 0))
    with pytest.raises(ConceptMismatchError, match="middle.0.0: concept text 768 -> value 1280, model has no such"):
        concept.check_fits(fewer, "custom")
