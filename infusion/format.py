"""The concept file: safetensors only (never pickle), validated before anything is applied.

Tensors: "value.<layer>" (and "key.<layer>" for the key+value variant), each one residual vector,
fp16 or fp32. Metadata (all strings, JSON where structured): format "infusion", format_version,
method, variant, family (ComfyUI's name for the base model, a label), word, token_ids, layers
([name, value width] pairs), training, provenance, and the vectors' space:
- version 1 (UNet concepts): vector_space "text", text_width (the vectors are the model's text width);
- version 2 (DiT concepts, value space): vector_space "value", vector_width.
A text-space concept is still written as version 1, so older packs read it as they always did.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any, Callable, Sequence

import torch
import safetensors.torch
from safetensors import SafetensorError

from .concept import VARIANTS, VECTOR_SPACES, InfusionConcept
from .layers import LayerId

FORMAT_VERSION = 2  # the newest this pack reads and writes
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_RESERVED = {"format", "format_version", "method", "variant", "family", "text_width", "vector_width",
             "vector_space", "word", "name", "token_ids", "layers"}


class ConceptFileError(ValueError):
    """A file that is not a usable Infusion concept."""


def save_concept(concept: InfusionConcept, path: str, dtype: str = "fp16") -> str:
    """Write atomically (temporary file + rename), so an interrupted save never leaves a broken file."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not '{dtype}'")
    tensors = {f"value.{l.key}": v.detach().to("cpu", _DTYPES[dtype]).contiguous() for l, v in concept.values.items()}
    for l, k in (concept.keys or {}).items():
        tensors[f"key.{l.key}"] = k.detach().to("cpu", _DTYPES[dtype]).contiguous()
    text_space = concept.vector_space == "text"
    meta = {
        "format": "infusion",
        "format_version": "1" if text_space else "2",
        "method": "infusion",
        "variant": concept.variant,
        "family": concept.family,
        "text_width" if text_space else "vector_width": str(concept.text_width),
        "vector_space": concept.vector_space,
        "word": concept.word,
        "name": concept.name,
        "token_ids": json.dumps(list(concept.token_ids)),
        "layers": json.dumps([[l.key, concept.value_widths.get(l, 0)] for l in sorted(concept.values)]),
        **{k: json.dumps(v) for k, v in concept.metadata.items() if k not in _RESERVED},
    }
    return write_safetensors(tensors, path, meta)


_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.uint8: "U8"}


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


# An atomic save writes ".<file name>.<random>.tmp" beside its file, then renames it to the file name.
TEMPORARY_SUFFIX = ".tmp"


class SaveError(RuntimeError):
    """A file could not be written (no space left, a read-only folder); the message names the folder and the fix."""


def write_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> str:
    """A safetensors file whose bytes depend only on its content (the library's writer orders
    metadata keys at random), written atomically: temporary file + rename, so an interrupted
    save never leaves a broken file."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMPORARY_SUFFIX, dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.writelines(blobs)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them (power loss)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private; a saved concept is an ordinary file
        os.replace(tmp, path)
        _sync_folder(folder)
    except OSError as e:
        raise SaveError(f"could not save {os.path.basename(path)} in {folder} ({e.strerror or e}): free some space "
                        "on that disk or make the folder writable (or give ComfyUI another models folder in "
                        "extra_model_paths.yaml); every file saved before is unchanged") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def remove_temporaries(folder: str, owns: Callable[[str], bool]) -> list[str]:
    """Delete the temporary files that saves left in `folder` when their process was killed mid-save (the
    rename never happened, so the file they were for is whole), for the file names `owns` accepts. Only the
    writer of those names may call this, or it could delete a save in progress. Returns what was removed."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    removed = [e for e in entries if e.startswith(".") and e.endswith(TEMPORARY_SUFFIX)
               and e.count(".") >= 3 and owns(e[1:-len(TEMPORARY_SUFFIX)].rsplit(".", 1)[0])]
    for entry in removed:
        os.remove(os.path.join(folder, entry))
    return removed


def _sync_folder(folder: str) -> None:
    """The rename on disk too (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Concept files are kilobytes (SDXL key+value in fp32: about 1.2 MB); a bigger file is something else,
# and reading it whole would cost memory its content cannot justify.
MAX_CONCEPT_BYTES = 16 * 2**20
# safetensors' own limit on a header; only a big file's header is read on its own (for the hint).
_MAX_HEADER_BYTES = 100_000_000


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _parse_header(raw: bytes, name: str) -> dict[str, Any]:
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ConceptFileError(f"{name} is not a safetensors file (unreadable header: {e})") from None
    if not isinstance(header, dict):
        raise ConceptFileError(f"{name} is not a safetensors file (its header is not a JSON object)")
    return header


def _read(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The file's header and tensors, read once into memory (never mapped: a file that shrinks
    under a mapping crashes the process). safetensors validates offsets, dtypes and shapes."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ConceptFileError(f"{name} is not a safetensors file (only {size} bytes)")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise ConceptFileError(f"{name} is not a safetensors file, or it is truncated (its header claims "
                                   f"{n} bytes, the file has {size}); Infusion concepts are .safetensors files")
        if size > MAX_CONCEPT_BYTES:
            hint = _not_infusion_hint(list(_parse_header(f.read(n), name))) if n <= _MAX_HEADER_BYTES else ""
            raise ConceptFileError(f"{name} is {size / 2**20:.0f} MB, too large for an Infusion concept (a few "
                                   f"hundred KB at most).{hint}")
        data = head + f.read(size - 8 + 1)  # one byte more than expected shows a file that grew
    if len(data) != size:
        raise ConceptFileError(f"{name} changed while it was read ({size} bytes, then {len(data)}); "
                               "wait until it is completely written, then load it again")
    header = _parse_header(data[8:8 + n], name)
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as e:
        promised = 8 + n + _data_end(header)
        if promised > size:
            raise ConceptFileError(f"{name} is truncated: {size} bytes, its header promises {promised}; "
                                   "re-download or re-train it") from None
        raise ConceptFileError(f"{name} is not a valid safetensors file ({e}); re-download or re-train it") from None
    return header, tensors


def _data_end(header: dict[str, Any]) -> int:
    """Where the header says the tensor data ends (0 when it cannot say), to tell a cut file apart."""
    try:
        return max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return 0


def _check_within(path: str, folders: Sequence[str]) -> None:
    """Refuse a link that leads out of the model folders (it could point at any file on the machine)."""
    real = os.path.realpath(path)
    roots = [os.path.realpath(folder) for folder in folders]
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise ConceptFileError(f"{os.path.basename(path)} is a link to {real}, outside the Infusion model folders "
                               f"({', '.join(roots)}): copy the file into models/infusion, or add its folder under "
                               "'infusion' in extra_model_paths.yaml")


def _not_infusion_hint(keys: list[str]) -> str:
    if any("lora" in k for k in keys):
        return " It looks like a LoRA: load it with ComfyUI's LoraLoader instead."
    if any(k.startswith(("model.diffusion_model", "first_stage_model", "cond_stage_model")) for k in keys):
        return " It looks like a model checkpoint: load it with Load Checkpoint."
    return ""


def load_concept(path: str, folders: Sequence[str] | None = None) -> InfusionConcept:
    """Load and fully validate a concept file; raises ConceptFileError naming the file and what is
    wrong, and nothing else. With `folders`, the file (after links) must lie inside one of them."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ConceptFileError(f"concept file not found: {path}")
    if folders is not None:
        _check_within(path, folders)
    try:
        header, tensors = _read(path)
    except OSError as e:
        raise ConceptFileError(f"{name} could not be read ({e.strerror or e})") from None
    meta = header.get("__metadata__") or {}
    keys = [k for k in header if k != "__metadata__"]
    if meta.get("format") != "infusion" or meta.get("method") != "infusion":
        raise ConceptFileError(f"{name} is not an Infusion concept (its metadata does not say format 'infusion')."
                               + _not_infusion_hint(keys))
    try:
        concept = _concept(name, meta, tensors)
    except ConceptFileError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ConceptFileError(f"{name}: corrupt concept metadata ({e}); re-train it or use an earlier "
                               "checkpoint") from None
    concept.path = path
    return concept


def _concept(name: str, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> InfusionConcept:
    version = meta.get("format_version", "")
    if not (version.isascii() and version.isdigit()) or not 1 <= int(version) <= FORMAT_VERSION:
        raise ConceptFileError(f"{name} has Infusion format version '{version}', this pack reads versions "
                               f"1..{FORMAT_VERSION}: update ComfyUI-Infusion")
    family = meta.get("family", "")
    space = meta.get("vector_space", "text") if int(version) >= 2 else "text"
    if space not in VECTOR_SPACES:
        raise ConceptFileError(f"{name}: unknown vector space '{space}' (known: {', '.join(VECTOR_SPACES)})")
    width_field = "vector_width" if int(version) >= 2 else "text_width"
    width = _decimal(meta.get(width_field, ""), width_field)
    variant = meta.get("variant")
    if variant not in VARIANTS:
        raise ConceptFileError(f"{name}: unknown variant '{variant}' (known: {', '.join(VARIANTS)})")
    layer_list = json.loads(meta["layers"])
    if not isinstance(layer_list, list) or not all(isinstance(e, list) and len(e) == 2 for e in layer_list):
        raise ValueError("'layers' is not a list of [name, value width] pairs")
    layers = {LayerId.parse(str(k)): _non_negative_int(w, "a value width") for k, w in layer_list}
    token_ids = json.loads(meta.get("token_ids", "[]"))
    if not isinstance(token_ids, list):
        raise ValueError("'token_ids' is not a list")
    extra = {k: json.loads(v) for k, v in meta.items() if k not in _RESERVED}
    expected = {f"value.{l.key}" for l in layers} | ({f"key.{l.key}" for l in layers} if variant == "key+value" else set())
    if set(tensors) != expected:
        raise ConceptFileError(f"{name}: its tensors do not match its layer list "
                               f"(missing {sorted(expected - set(tensors))}, extra {sorted(set(tensors) - expected)})")
    for k, t in sorted(tensors.items()):
        if t.dtype not in (torch.float16, torch.float32) or t.shape != (width,):
            raise ConceptFileError(f"{name}: tensor {k} is {t.dtype} {tuple(t.shape)}, expected fp16/fp32 ({width},)")
        if not torch.isfinite(t).all():
            raise ConceptFileError(f"{name}: tensor {k} has non-finite values (NaN or inf); the concept is "
                                   "damaged: re-train it or use an earlier checkpoint")
    return InfusionConcept(
        word=meta.get("word", ""),
        family=family,
        values={l: tensors[f"value.{l.key}"].float() for l in layers},
        keys={l: tensors[f"key.{l.key}"].float() for l in layers} if variant == "key+value" else None,
        value_widths=layers,
        token_ids=tuple(_non_negative_int(i, "a token id") for i in token_ids),
        name=meta.get("name") or os.path.splitext(name)[0],
        metadata=extra,
        vector_space=space,
        image_queries_only=variant == "image-queries",
    )


def _decimal(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise ValueError(f"{what} '{text}' is not a positive whole number")
    return int(text)


def _non_negative_int(value: Any, what: str) -> int:
    # bool is an int in Python; a JSON true is no width or token id.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not {what}")
    return value
