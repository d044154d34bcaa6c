"""Concept files made by an attacker or a broken disk: every one gets ConceptFileError naming the
file and what is wrong, never another exception, and none is read beyond what its size justifies."""
import json
import os
import random
import struct

import pytest
import torch

from infusion import format as fmt
from infusion.format import ConceptFileError, load_concept, save_concept

from core_helpers import random_concept

NAME = "mutant.safetensors"


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict | str, body: bytes, pad: bool = True) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.fixture
def good(tmp_path) -> bytes:
    c = random_concept(variant="key+value")
    c.metadata = {"training": {"steps": 5}}
    return open(save_concept(c, str(tmp_path / "good.safetensors")), "rb").read()


def _load(tmp_path, data: bytes):
    path = tmp_path / NAME
    path.write_bytes(data)
    return load_concept(str(path))


def _mutate_header(header: dict, case: str) -> dict | str:
    tensors = sorted(k for k in header if k != "__metadata__")
    first, second = header[tensors[0]], header[tensors[1]]
    meta = header["__metadata__"]
    if case == "no data_offsets":
        del first["data_offsets"]
    elif case == "overlapping offsets":
        first["data_offsets"] = list(second["data_offsets"])
    elif case == "out-of-range offsets":
        first["data_offsets"] = [first["data_offsets"][0], 10**9]
    elif case == "reversed offsets":
        first["data_offsets"] = first["data_offsets"][::-1]
    elif case == "negative offset":
        first["data_offsets"] = [-2, first["data_offsets"][1]]
    elif case == "dtype disagrees with bytes":
        first["dtype"] = "F64"
    elif case == "shape disagrees with bytes":
        first["shape"] = [first["shape"][0] + 1]
    elif case == "unknown dtype":
        first["dtype"] = "Q7"
    elif case == "integer tensor":
        first["dtype"] = "I16"
    elif case == "metadata value not a string":
        meta["family"] = 1
    elif case == "metadata not an object":
        header["__metadata__"] = ["format", "infusion"]
    elif case == "layers not a list":
        meta["layers"] = json.dumps({"input.1.0": 320})
    elif case == "layers of odd entries":
        meta["layers"] = json.dumps([["input.1.0"], 5, None])
    elif case == "layer width not a number":
        meta["layers"] = json.dumps([[k, "wide"] for k, _ in json.loads(meta["layers"])])
    elif case == "odd layer name":
        meta["layers"] = json.dumps([["input.-1.0" if i == 0 else k, w]
                                     for i, (k, w) in enumerate(json.loads(meta["layers"]))])
    elif case == "token ids not numbers":
        meta["token_ids"] = json.dumps(["dog"])
    elif case == "token ids not a list":
        meta["token_ids"] = "7"
    elif case == "empty word":
        meta["word"] = "   "
    elif case == "extra metadata not JSON":
        meta["training"] = "{oops"
    elif case == "missing layers":
        del meta["layers"]
    elif case == "odd tensor key":
        header["value.input.1.0/../../x"] = header.pop(tensors[0])
    elif case == "duplicate keys":
        text = json.dumps(header)
        return text[:-1] + ", " + json.dumps(tensors[0]) + ": " + json.dumps(first) + "}"
    elif case == "header is a list":
        return "[1, 2, 3]"
    elif case == "header not JSON":
        return "{\"a\": " + "x" * 20
    return header


HEADER_CASES = ["no data_offsets", "overlapping offsets", "out-of-range offsets", "reversed offsets",
                "negative offset", "dtype disagrees with bytes", "shape disagrees with bytes", "unknown dtype",
                "integer tensor", "metadata value not a string", "metadata not an object", "layers not a list",
                "layers of odd entries", "layer width not a number", "odd layer name", "token ids not numbers",
                "token ids not a list", "empty word", "extra metadata not JSON", "missing layers", "odd tensor key",
                "duplicate keys", "header is a list", "header not JSON"]


@pytest.mark.parametrize("case", HEADER_CASES)
def test_a_malformed_header_gets_a_clear_error(tmp_path, good, case):
    header, body = _split(good)
    with pytest.raises(ConceptFileError, match=NAME):
        _load(tmp_path, _join(_mutate_header(header, case), body))


@pytest.mark.parametrize("length", [2**64 - 1, 2**64 - 8, 2**63, 10**8, 10**6])
def test_a_header_length_beyond_the_file_is_refused_without_reading_it(tmp_path, good, length):
    with pytest.raises(ConceptFileError, match=f"{NAME} is not a safetensors file, or it is truncated"):
        _load(tmp_path, struct.pack("<Q", length) + good[8:])


def test_a_file_too_large_for_a_concept_is_refused_with_a_hint_from_its_header(tmp_path):
    # A LoRA-like header promising 20 MB of weights, stored as a sparse file: nothing is read but the header.
    size = 20 * 2**20
    header = {"lora_unet_x.lora_up.weight": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}
    path = tmp_path / NAME
    path.write_bytes(_join(header, b""))
    os.truncate(path, path.stat().st_size + size)
    with pytest.raises(ConceptFileError, match=f"{NAME} is 20 MB, too large .* looks like a LoRA"):
        load_concept(str(path))


@pytest.mark.parametrize("change", [-1, +1])
def test_a_file_that_changes_size_while_read_is_refused(tmp_path, good, monkeypatch, change):
    real_fstat = os.fstat

    def fstat_before_the_change(fd):
        # The size seen when the file was opened; then it shrank or grew before it was read.
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size - change, *st[7:]))

    monkeypatch.setattr(fmt.os, "fstat", fstat_before_the_change)
    with pytest.raises(ConceptFileError, match=f"{NAME} changed while it was read"):
        _load(tmp_path, good)


def test_a_link_out_of_the_given_folders_is_refused(tmp_path, good):
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret.safetensors").write_bytes(good)
    (models / "inside.safetensors").write_bytes(good)
    os.symlink(elsewhere / "secret.safetensors", models / NAME)
    os.symlink(models / "inside.safetensors", models / "alias.safetensors")
    with pytest.raises(ConceptFileError, match=f"{NAME} is a link to .*secret.safetensors, outside"):
        load_concept(str(models / NAME), folders=[str(models)])
    assert load_concept(str(models / "alias.safetensors"), folders=[str(models)]).word == "dog"
    assert load_concept(str(models / NAME)).word == "dog"  # no folders given: any path the caller chose


def _mutants(good: bytes, rng: random.Random):
    """(label, bytes): byte flips in the header and the body, truncations at every header boundary and
    at random lengths, rewritten header lengths, and structured header edits."""
    n = struct.unpack("<Q", good[:8])[0]
    header_text = good[8:8 + n]
    for i in range(900):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0, 8 + n)] = rng.randrange(256)
        yield f"header flip {i}", bytes(data)
    for i in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(8 + n, len(good))] = rng.randrange(256)
        yield f"body flip {i}", bytes(data)
    # Every structural boundary of the header (and the length field, and the header's end).
    cuts = set(range(9)) | {8 + i for i, b in enumerate(header_text) if chr(b) in '{}[]:,"'} | {8 + n}
    for cut in sorted(cuts):
        yield f"cut at {cut}", good[:cut]
    for i in range(300):
        yield f"random length {i}", good[:rng.randrange(len(good))]
    for i in range(200):
        length = rng.choice([rng.randrange(2**64), rng.randrange(n - 16, n + 16), 2**64 - rng.randrange(1, 64)])
        yield f"header length {length}", struct.pack("<Q", length) + good[8:]
    header, body = _split(good)
    for i in range(150):
        mutated = _mutate_header(json.loads(json.dumps(header)), rng.choice(HEADER_CASES))
        yield f"header edit {i}", _join(mutated, body, pad=rng.random() < 0.5)


def test_fuzzed_concept_files_only_ever_raise_concept_file_errors(tmp_path, good):
    path = tmp_path / NAME
    counts = {"loaded": 0, "refused": 0}
    unexpected = []
    for label, data in _mutants(good, random.Random(2024)):
        path.write_bytes(data)
        try:
            load_concept(str(path))
            counts["loaded"] += 1
        except ConceptFileError as e:
            counts["refused"] += 1
            if NAME not in str(e):
                unexpected.append(f"{label}: message does not name the file: {e}")
        except Exception as e:  # noqa: BLE001  (exactly what this test looks for)
            unexpected.append(f"{label}: {type(e).__name__}: {e}")
    assert unexpected == []
    assert sum(counts.values()) >= 2000
    # Body flips mostly give a still-valid file; everything else mostly breaks it.
    assert counts["loaded"] > 100 and counts["refused"] > 1500, counts


def test_a_loaded_file_is_still_the_concept_it_was(tmp_path, good):
    c = _load(tmp_path, good)
    assert c.variant == "key+value" and c.metadata == {"training": {"steps": 5}}
    assert all(torch.isfinite(v).all() for v in c.values.values())
