"""The train command: concepts from folders of photos on a checkpoint, run by ComfyUI's executor as
Load Checkpoint -> Load Concept Photos -> Train Infusion Concept (-> Save Image of the loss graph).

The node's settings become command-line options, read from its live definition (names, types,
defaults, choices and tooltips), so the runner always offers exactly the node's options. A batch
file trains many concepts in one process: the checkpoint is loaded once and reused.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .executor import PromptInvalid, RunFailed, Runner
from .node_inputs import combo_options, has_widget, input_options, input_type, ordered_inputs, parse_value

CHECKPOINT_NODE, PHOTOS_NODE, TRAIN_NODE, SAVE_NODE = "CheckpointLoaderSimple", "LoadConceptPhotos", "TrainInfusion", "SaveImage"
# Settings the command fills itself; every other widget input of the node is an option.
FOLDER_INPUT, SIZE_INPUT, CKPT_INPUT = "folder", "size", "ckpt_name"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _read_text(value: str) -> str:
    """A multiline setting: @path reads the text from a file (caption templates)."""
    if value.startswith("@") and os.path.isfile(value[1:]):
        with open(value[1:], encoding="utf-8") as f:
            return f.read()
    return value


# What the train command does where the node's default would not fit a command line.
COMMAND_DEFAULTS = {"word": "required", "output_name": "the photo folder's name"}


def add_node_options(parser: argparse.ArgumentParser, definition: Mapping[str, Any]) -> dict[str, list]:
    """One option per widget input of the node, typed from its definition; returns {input: spec}.
    An option left out keeps the node's default (COMMAND_DEFAULTS excepted)."""
    group = parser.add_argument_group(f"{definition.get('display_name', TRAIN_NODE)} settings "
                                      "(from the node; left out = the node's default)")
    specs = {}
    for name, spec in ordered_inputs(definition):
        if not has_widget(spec):
            continue
        opts, kind = input_options(spec), input_type(spec)
        default = opts.get("default")
        shown = str(default).replace("\n", " | ") if kind == "STRING" and opts.get("multiline") else default
        default_text = COMMAND_DEFAULTS.get(name, f"node default: {shown}")
        help_text = f"{opts.get('tooltip', '')} ({default_text})".replace("%", "%%")
        if kind == "BOOLEAN":
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif kind == "COMBO":
            group.add_argument(flag(name), dest=name, choices=combo_options(spec), default=None, help=help_text)
        else:
            convert = {"INT": int, "FLOAT": float}.get(kind, _read_text if opts.get("multiline") else str)
            group.add_argument(flag(name), dest=name, type=convert, default=None, metavar=kind,
                               help=help_text + (" @FILE reads it from a file." if opts.get("multiline") else ""))
            if opts.get("multiline") and name.endswith("s"):  # one line per use: --template T, --sample-prompt P
                group.add_argument(flag(name[:-1]), dest=LINES + name, action="append", metavar="LINE",
                                   help=f"one line of {flag(name)}; repeat it for more (replaces {flag(name)})")
        specs[name] = spec
    return specs


LINES = "lines_of_"  # argparse destinations of the repeatable one-line forms


def node_settings(options: argparse.Namespace, specs: Mapping[str, list]) -> dict[str, Any]:
    """The node settings given on the command line; repeated one-line options joined into their text."""
    settings = {name: getattr(options, name) for name in specs}
    for name in specs:
        lines = getattr(options, LINES + name, None)
        if lines:
            settings[name] = "\n".join(lines)
    return settings


@dataclass
class Job:
    photos: str
    settings: dict[str, Any]  # node input -> value (the node's default where absent)

    @property
    def name(self) -> str:
        return str(self.settings["output_name"])


def _sources(definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """Output type -> [node id, slot] of the checkpoint and photo loaders (ids as in train_prompt)."""
    out: dict[str, list] = {}
    for node_id, kind in (("1", CHECKPOINT_NODE), ("2", PHOTOS_NODE)):
        for slot, output_type in enumerate(definitions[kind]["output"]):
            out.setdefault(str(output_type), [node_id, slot])
    return out


def train_prompt(definitions: Mapping[str, Mapping[str, Any]], checkpoint: str, job: Job) -> dict[str, Any]:
    """The API prompt that trains one concept; the trainer's inputs are wired to the loaders by type."""
    train_def = definitions[TRAIN_NODE]
    inputs: dict[str, Any] = {}
    sources = _sources(definitions)
    required = set((train_def["input"].get("required") or {}))
    for name, spec in ordered_inputs(train_def):
        if has_widget(spec):
            inputs[name] = job.settings.get(name, input_options(spec).get("default"))
        elif input_type(spec) in sources:
            inputs[name] = sources[input_type(spec)]
        elif name in required:
            raise ValueError(f"{TRAIN_NODE} needs a {input_type(spec)} input ('{name}') that the train command "
                             "cannot provide: run a workflow with `run` instead")
    photos_def = dict(ordered_inputs(definitions[PHOTOS_NODE]))
    size_spec = input_options(photos_def[SIZE_INPUT])
    step = size_spec.get("step", 64)
    # Photos are loaded at least at the training resolution (the node scales them down again).
    size = max(size_spec.get("default", 1024), math.ceil(int(inputs.get("resolution") or 0) / step) * step)
    loss_graph = list(train_def["output"]).index("IMAGE")
    return {
        "1": {"class_type": CHECKPOINT_NODE, "inputs": {CKPT_INPUT: checkpoint}, "_meta": {"title": "Load Checkpoint"}},
        "2": {"class_type": PHOTOS_NODE, "inputs": {FOLDER_INPUT: job.photos, SIZE_INPUT: size},
              "_meta": {"title": "Load Concept Photos"}},
        "3": {"class_type": TRAIN_NODE, "inputs": inputs, "_meta": {"title": f"Train {job.name}"}},
        "4": {"class_type": SAVE_NODE, "inputs": {"images": ["3", loss_graph],
                                                  "filename_prefix": f"infusion/{job.name}_loss"},
              "_meta": {"title": "Save loss graph"}},
    }


def model_file(folder: str, value: str) -> str:
    """A model name for a combo of `folder` ('checkpoints', ...): a path to an existing file puts its
    folder first among ComfyUI's folders of that kind (for this run) and gives its name."""
    if not os.path.isfile(value):
        return value
    import folder_paths
    path = os.path.abspath(value)
    folder_paths.add_model_folder_path(folder, os.path.dirname(path), is_default=True)
    return os.path.basename(path)


def _cell_value(spec: list, text: str) -> Any:
    """A batch-file cell parsed like the command-line option of the same setting."""
    value = parse_value(spec, text)
    options = combo_options(spec)
    if options is not None and value not in options:
        raise ValueError(f"'{text}' is not one of {', '.join(map(str, options))}")
    return _read_text(value) if input_options(spec).get("multiline") else value


def batch_jobs(path: str, specs: Mapping[str, list], defaults: Mapping[str, Any]) -> list[Job]:
    """Jobs from a CSV file: a 'photos' column (folders relative to the file) and any node setting
    as a column (word, output_name, steps, ...); empty cells keep the command line's value."""
    jobs = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "photos" not in rows[0]:
        raise ValueError(f"{path}: a CSV file with a header row and a 'photos' column is needed, e.g.\n"
                         "photos,word,output_name\nphotos/rex,dog,rex\nphotos/teapot,teapot,my_teapot")
    for line, row in enumerate(rows, start=2):
        settings = dict(defaults)
        for column, text in row.items():
            key = (column or "").strip().replace("-", "_")
            if key == "photos" or not (text or "").strip():
                continue
            if key not in specs:
                raise ValueError(f"{path}, line {line}: unknown column '{column}'; columns are photos and the node "
                                 f"settings: {', '.join(specs)}")
            try:
                settings[key] = _cell_value(specs[key], text.strip())
            except ValueError as e:
                raise ValueError(f"{path}, line {line}, column {column}: {e}") from None
        photos = os.path.join(os.path.dirname(os.path.abspath(path)), row["photos"].strip())
        jobs.append(job_for(photos, settings))
    return jobs


def job_for(photos: str, settings: Mapping[str, Any]) -> Job:
    """A job; the output name defaults to the photo folder's name, and the word must be given."""
    settings = {k: v for k, v in settings.items() if v is not None}
    if not settings.get("word"):
        raise ValueError(f"no class word for {photos}: give --word (or a 'word' column), e.g. --word dog")
    settings.setdefault("output_name", os.path.basename(os.path.normpath(photos)))
    return Job(os.path.abspath(photos), settings)


def summary(result: Any, definitions: Mapping[str, Mapping[str, Any]], output_directory: str,
            prompt: Mapping[str, Any]) -> str:
    """What one training run made: the concept, its loss, the loss graph and where the previews went."""
    outputs = list(definitions[TRAIN_NODE]["output"])
    lines = []
    if "STRING" in outputs:
        lines.append(f"  concept:    {result.output('3', outputs.index('STRING'))}")
    if "LOSS_MAP" in outputs:
        losses = result.output("3", outputs.index("LOSS_MAP")).get("loss") or []
        if losses:
            lines.append(f"  loss:       {losses[0]:.4g} (step 1) -> {losses[-1]:.4g} (step {len(losses)})")
    lines += [f"  loss graph: {p}" for p in result.saved_files(output_directory)]
    trained = prompt["3"]["inputs"]
    if trained.get("sample_every"):
        lines.append(f"  previews:   {os.path.join(output_directory, 'infusion', trained['output_name'], 'samples')}")
    return "\n".join(lines)


def train_all(runner: Runner, definitions: Mapping[str, Mapping[str, Any]], checkpoint: str,
              jobs: Sequence[Job]) -> int:
    """Train every job in turn; returns the number that failed. A cancel stops the batch."""
    import folder_paths

    failed = 0
    for i, job in enumerate(jobs, start=1):
        print(f"[{i}/{len(jobs)}] {job.name}: '{job.settings['word']}' from {job.photos}", flush=True)
        prompt = train_prompt(definitions, checkpoint, job)
        try:
            result = runner.run(prompt)
        except PromptInvalid as e:
            print(f"  failed: {e}", flush=True)
            failed += 1
            continue
        if result.interrupted:
            print(f"  cancelled: the last finished step is saved with a resume state; run the same command "
                  f"with --resume to continue{' (this concept only: the batch stopped here)' if len(jobs) > 1 else ''}.",
                  flush=True)
            raise RunFailed("cancelled")
        if not result.success:
            error = result.error or {}
            print(f"  failed: {error.get('exception_type', 'error')}: {error.get('exception_message', '').strip()} "
                  "(--verbose shows ComfyUI's traceback)", flush=True)
            failed += 1
            continue
        print(summary(result, definitions, folder_paths.get_output_directory(), prompt), flush=True)
    return failed
