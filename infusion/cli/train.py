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
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .executor import PromptInvalid, Runner
from .node_inputs import combo_options, has_widget, input_options, input_type, ordered_inputs, parse_value

CHECKPOINT_NODE, PHOTOS_NODE, TRAIN_NODE, SAVE_NODE = "CheckpointLoaderSimple", "LoadConceptPhotos", "TrainInfusion", "SaveImage"
NODES = (CHECKPOINT_NODE, PHOTOS_NODE, TRAIN_NODE, SAVE_NODE)
TRAIN_ID = "3"  # the trainer's node id in train_prompt
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
        TRAIN_ID: {"class_type": TRAIN_NODE, "inputs": inputs, "_meta": {"title": f"Train {job.name}"}},
        "4": {"class_type": SAVE_NODE, "inputs": {"images": [TRAIN_ID, loss_graph],
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
        lines.append(f"  concept:    {result.output(TRAIN_ID, outputs.index('STRING'))}")
    losses = _losses(result, outputs)
    if losses:
        lines.append(f"  loss:       {losses[0]:.4g} (step 1) -> {losses[-1]:.4g} (step {len(losses)})")
    lines += [f"  loss graph: {p}" for p in result.saved_files(output_directory)]
    trained = prompt[TRAIN_ID]["inputs"]
    if trained.get("sample_every"):
        lines.append(f"  previews:   {os.path.join(output_directory, 'infusion', trained['output_name'], 'samples')}")
    return "\n".join(lines)


def _losses(result: Any, outputs: list) -> list[float]:
    return list(result.output(TRAIN_ID, outputs.index("LOSS_MAP")).get("loss") or []) if "LOSS_MAP" in outputs else []


@dataclass
class RowResult:
    """How one concept of a batch ended: a line of the summary table."""
    name: str
    status: str  # done, failed, cancelled, not run
    message: str = ""  # done: what it made (summary); failed: the error
    steps: int = 0  # the steps the concept has (a cancelled one: its last saved step)
    loss: float | None = None  # the last step's loss
    seconds: float = 0.0
    file: str = ""
    resumed_from: int = 0  # a retried row: the saved step it continued from (0: from the start)


def use_output_folder(path: str) -> None:
    """The concepts (their snapshots and resume states), loss graphs and previews go to `path` instead of
    ComfyUI's models/infusion and output folders."""
    import folder_paths

    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    folder_paths.add_model_folder_path("infusion", path, is_default=True)
    folder_paths.set_output_directory(path)


def _resume_file(name: str) -> str:
    import folder_paths

    from ..training.session import resume_path
    return resume_path(folder_paths.get_folder_paths("infusion")[0], name)


def _saved_step(name: str) -> int:
    """The step of <name>'s resume state in the concept folder, 0 when it has none."""
    from ..training.state import load_state

    path = _resume_file(name)
    return load_state(path).step if os.path.isfile(path) else 0


def saved_state(name: str) -> tuple[int, int] | None:
    """What tells <name>'s resume state from another (modification time, size), None when it has none: a retry
    resumes only from a state saved since the row was first handed out, never from an older run's."""
    try:
        found = os.stat(_resume_file(name))
    except FileNotFoundError:
        return None
    return found.st_mtime_ns, found.st_size


def run_row(runner: Runner, definitions: Mapping[str, Mapping[str, Any]], prompt: dict[str, Any],
            resume_saved: bool = False) -> RowResult:
    """Train one concept's prompt (train_prompt). resume_saved: continue from the row's resume state when one
    is saved (a retry after its worker died), else start as the prompt says."""
    import folder_paths

    name = str(prompt[TRAIN_ID]["inputs"]["output_name"])
    resumed = _saved_step(name) if resume_saved else 0
    if resumed:
        prompt = {**prompt, TRAIN_ID: {**prompt[TRAIN_ID], "inputs": {**prompt[TRAIN_ID]["inputs"], "resume": True}}}
    started = time.monotonic()
    try:
        result = runner.run(prompt)
    except PromptInvalid as e:
        return RowResult(name, "failed", str(e))
    seconds = time.monotonic() - started
    if result.interrupted:
        return RowResult(name, "cancelled", steps=_saved_step(name), seconds=seconds, resumed_from=resumed)
    if not result.success:
        error = result.error or {}
        return RowResult(name, "failed", f"{error.get('exception_type', 'error')}: "
                         f"{error.get('exception_message', '').strip()} (--verbose shows ComfyUI's traceback)",
                         seconds=seconds, resumed_from=resumed)
    outputs = list(definitions[TRAIN_NODE]["output"])
    losses = _losses(result, outputs)
    return RowResult(name, "done", summary(result, definitions, folder_paths.get_output_directory(), prompt),
                     steps=len(losses), loss=losses[-1] if losses else None, seconds=seconds,
                     file=str(result.output(TRAIN_ID, outputs.index("STRING"))) if "STRING" in outputs else "",
                     resumed_from=resumed)


def row_lines(row: RowResult) -> str:
    """What the batch prints when a row ends."""
    if row.status == "done":
        return row.message
    if row.status == "cancelled":
        return (f"  cancelled: step {row.steps} is saved with a resume state; train it again with --resume to "
                "continue")
    return f"  {row.status}: {row.message}"


def table(rows: Sequence[RowResult]) -> str:
    """The batch's summary: a line per row (row, status, steps, final loss, seconds, file)."""
    head = ("row", "name", "status", "steps", "final loss", "seconds", "file")
    cells = [head] + [(str(i), r.name, r.status, str(r.steps) if r.steps else "-",
                       f"{r.loss:.4g}" if r.loss is not None else "-", f"{r.seconds:.0f}" if r.seconds else "-",
                       r.file or "-") for i, r in enumerate(rows, start=1)]
    widths = [max(len(c[k]) for c in cells) for k in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def train_all(runner: Runner, definitions: Mapping[str, Mapping[str, Any]], checkpoint: str,
              jobs: Sequence[Job]) -> list[RowResult]:
    """Train every job in turn, in this process; a cancel stops the batch (the rows after it: not run)."""
    rows: list[RowResult] = []
    for i, job in enumerate(jobs, start=1):
        print(f"[{i}/{len(jobs)}] {job.name}: '{job.settings['word']}' from {job.photos}", flush=True)
        row = run_row(runner, definitions, train_prompt(definitions, checkpoint, job))
        rows.append(row)
        print(row_lines(row), flush=True)
        if row.status == "cancelled":
            rows += [RowResult(later.name, "not run") for later in jobs[i:]]
            break
    return rows
