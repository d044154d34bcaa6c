"""The concept file: safetensors only (never pickle), validated before anything is applied.

Tensors: "value.<layer>" (and "key.<layer>" for the key+value variant), each a text-space
residual of the family's text width, fp16 or fp32. Metadata (all strings, JSON where
structured): format "infusion", format_version, method, variant, family, text_width, word,
token_ids, layers ([name, value width] pairs), training, provenance.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .concept import VARIANTS, InfusionConcept
from .layers import FAMILIES, LayerId

FORMAT_VERSION = 1
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_RESERVED = {"format", "format_version", "method", "variant", "family", "text_width", "vector_space",
             "word", "name", "token_ids", "layers"}


class ConceptFileError(ValueError):
    """A file that is not a usable Infusion concept."""


def save_concept(concept: InfusionConcept, path: str, dtype: str = "fp16") -> str:
    """Write atomically (temporary file + rename), so an interrupted save never leaves a broken file."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not '{dtype}'")
    tensors = {f"value.{l.key}": v.detach().to("cpu", _DTYPES[dtype]).contiguous() for l, v in concept.values.items()}
    for l, k in (concept.keys or {}).items():
        tensors[f"key.{l.key}"] = k.detach().to("cpu", _DTYPES[dtype]).contiguous()
    meta = {
        "format": "infusion",
        "format_version": str(FORMAT_VERSION),
        "method": "infusion",
        "variant": concept.variant,
        "family": concept.family,
        "text_width": str(concept.text_width),
        "vector_space": "text",
        "word": concept.word,
        "name": concept.name,
        "token_ids": json.dumps(list(concept.token_ids)),
        "layers": json.dumps([[l.key, concept.value_widths.get(l, 0)] for l in sorted(concept.values)]),
        **{k: json.dumps(v) for k, v in concept.metadata.items() if k not in _RESERVED},
    }
    return write_safetensors(tensors, path, meta)


_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.uint8: "U8"}


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
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".infusion-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.writelines(blobs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _header(path: str) -> dict[str, Any]:
    """Read and sanity-check the safetensors header, so a wrong file gets a precise message."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConceptFileError(f"{name} is not a safetensors file (only {size} bytes)")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100_000_000):
            raise ConceptFileError(f"{name} is not a safetensors file, or it is truncated "
                                   "(header longer than the file); Infusion concepts are .safetensors files")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConceptFileError(f"{name} is not a safetensors file (unreadable header)") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ConceptFileError(f"{name} is truncated: {size} bytes, its header promises {8 + n + end}; "
                               "re-download or re-train it")
    return header


def _not_infusion_hint(keys: list[str]) -> str:
    if any("lora" in k for k in keys):
        return " It looks like a LoRA: load it with ComfyUI's LoraLoader instead."
    if any(k.startswith(("model.diffusion_model", "first_stage_model", "cond_stage_model")) for k in keys):
        return " It looks like a model checkpoint: load it with Load Checkpoint."
    return ""


def load_concept(path: str) -> InfusionConcept:
    """Load and fully validate a concept file; raises ConceptFileError with a clear reason."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ConceptFileError(f"concept file not found: {path}")
    header = _header(path)
    meta = header.get("__metadata__", {}) or {}
    keys = [k for k in header if k != "__metadata__"]
    if meta.get("format") != "infusion" or meta.get("method") != "infusion":
        raise ConceptFileError(f"{name} is not an Infusion concept (its metadata does not say format 'infusion')."
                               + _not_infusion_hint(keys))
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION or int(version) < 1:
        raise ConceptFileError(f"{name} has Infusion format version '{version}', this pack reads versions "
                               f"1..{FORMAT_VERSION}: update ComfyUI-Infusion")
    family = meta.get("family")
    if family not in FAMILIES:
        raise ConceptFileError(f"{name}: unknown model family '{family}' (known: {', '.join(FAMILIES)})")
    width = FAMILIES[family].text_width
    if meta.get("text_width") != str(width):
        raise ConceptFileError(f"{name}: text width {meta.get('text_width')} does not match family {family} ({width})")
    variant = meta.get("variant")
    if variant not in VARIANTS:
        raise ConceptFileError(f"{name}: unknown variant '{variant}' (known: {', '.join(VARIANTS)})")
    try:
        layers = {LayerId.parse(k): int(w) for k, w in json.loads(meta["layers"])}
        token_ids = tuple(int(i) for i in json.loads(meta.get("token_ids", "[]")))
        extra = {k: json.loads(v) for k, v in meta.items() if k not in _RESERVED}
    except (KeyError, ValueError, TypeError) as e:
        raise ConceptFileError(f"{name}: corrupt metadata ({e})") from None
    expected = {f"value.{l.key}" for l in layers} | ({f"key.{l.key}" for l in layers} if variant == "key+value" else set())
    if set(keys) != expected:
        raise ConceptFileError(f"{name}: its tensors do not match its layer list "
                               f"(missing {sorted(expected - set(keys))}, extra {sorted(set(keys) - expected)})")
    if len(layers) != FAMILIES[family].n_layers:
        raise ConceptFileError(f"{name}: {len(layers)} layers, a {FAMILIES[family].label} concept has "
                               f"{FAMILIES[family].n_layers}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ConceptFileError(f"{name} could not be read as safetensors ({e})") from None
    for k, t in tensors.items():
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
        token_ids=token_ids,
        name=meta.get("name") or os.path.splitext(name)[0],
        metadata=extra,
    )
