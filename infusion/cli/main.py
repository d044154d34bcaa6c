"""Infusion's headless runner: train concepts, run workflows and check an install, with ComfyUI as a library (no server).

Run it with ComfyUI's Python from the pack's folder (ComfyUI/custom_nodes/ComfyUI-Infusion); a pack
kept elsewhere finds ComfyUI through COMFYUI_PATH=/path/to/ComfyUI. Options after `--` go to ComfyUI
itself (--lowvram, --cpu, --output-directory DIR, ...).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

from .convert import WorkflowError
from .locate import ComfyUINotFound
from .overrides import OverrideError

EPILOG = "Options after -- go to ComfyUI (e.g. -- --lowvram, -- --cpu, -- --output-directory out)."


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show ComfyUI's log")
    parser.add_argument("--custom-nodes", action="store_true",
                        help="also load every other pack in ComfyUI's custom_nodes (for workflows that use them)")


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="base model: a name in models/checkpoints, or a path to a file")
    parser.add_argument("--photos", help="folder of the concept's photos")
    parser.add_argument("--batch", metavar="CSV", help="train many concepts: a CSV file with a 'photos' column and "
                                                       "any node setting as a column (word, output_name, steps, ...)")
    _common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infusion", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Parsed again, with the node's own options, once ComfyUI is loaded (cmd_train).
    _train_options(commands.add_parser("train", add_help=False, epilog=EPILOG, help="train a concept (or a batch "
                                       "of them) from photos; --help lists the node's options (loads ComfyUI)"))

    run = commands.add_parser("run", epilog=EPILOG, help="run a workflow file (UI or API format) or an example")
    run.add_argument("workflow", nargs="?", help="a .json file, or an example's name; leave out to list them")
    run.add_argument("--checkpoint", help="every Load Checkpoint: a name in models/checkpoints, or a path")
    run.add_argument("--photos", help="every Load Concept Photos folder")
    run.add_argument("--word", help="the class word of every Train Infusion Concept")
    run.add_argument("--prompt", help="the text of every prompt that feeds a sampler's positive input")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="any setting; NODE is a node id, title or type (e.g. KSampler.steps=20); repeatable")
    _common(run)

    smoke = commands.add_parser("smoke", epilog=EPILOG,
                                help="check the install: tiny random models through every example workflow (~1 min)")
    smoke.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    _common(smoke)

    info = commands.add_parser("info", epilog=EPILOG, help="describe concept files: word, model, layers, training, "
                                                           "lineage, residual norm per layer (no ComfyUI needed)")
    info.add_argument("files", nargs="+", help="concept .safetensors files")

    check = commands.add_parser("check", epilog=EPILOG,
                                help="check workflows against this ComfyUI's nodes (types, links, settings)")
    check.add_argument("workflows", nargs="*", help="files or example names (default: every example)")
    _common(check)
    return parser


def _start(args: argparse.Namespace, comfy_args: Sequence[str]) -> None:
    from . import runtime
    runtime.start(comfy_args, all_custom_nodes=args.custom_nodes, verbose=args.verbose)


def cmd_train(args: argparse.Namespace, argv: list[str], comfy_args: Sequence[str]) -> int:
    from . import train
    from .executor import Runner, cancel_on_ctrl_c
    from .prompts import model_file
    from .registry import node_definitions

    _start(args, comfy_args)
    kinds = (train.CHECKPOINT_NODE, train.PHOTOS_NODE, train.TRAIN_NODE, train.SAVE_NODE)
    definitions = node_definitions(kinds)
    missing = [k for k in kinds if k not in definitions]
    if missing:
        raise WorkflowError(f"this ComfyUI has no node {', '.join(missing)}: is this pack up to date?")
    parser = argparse.ArgumentParser(prog="python -m infusion train", epilog=EPILOG,
                                     description="Train Infusion concepts from folders of photos.")
    _train_options(parser)
    specs = train.add_node_options(parser, definitions[train.TRAIN_NODE])
    options = parser.parse_args(argv)
    if not options.checkpoint:
        parser.error("--checkpoint is required (a name in models/checkpoints, or a path)")
    settings = train.node_settings(options, specs)
    if options.batch:
        jobs = train.batch_jobs(options.batch, specs, settings)
    elif options.photos:
        jobs = [train.job_for(options.photos, settings)]
    else:
        parser.error("give --photos FOLDER (one concept) or --batch FILE.csv (many)")
    runner = Runner()
    with cancel_on_ctrl_c():
        failed = train.train_all(runner, definitions, model_file("checkpoints", options.checkpoint), jobs)
    if failed:
        print(f"{failed} of {len(jobs)} concepts failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace, comfy_args: Sequence[str]) -> int:
    from . import workflows
    if not args.workflow:
        print("Example workflows: " + ", ".join(workflows.example_names()))
        return 0
    path = workflows.resolve(args.workflow)
    workflow = workflows.load(path)
    _start(args, comfy_args)
    import folder_paths

    from .executor import Runner, cancel_on_ctrl_c
    from .prompts import as_prompt, with_overrides

    prompt, definitions = as_prompt(workflow)
    with_overrides(prompt, definitions, checkpoint=args.checkpoint, photos=args.photos, word=args.word,
                   text=args.prompt, assignments=args.set)
    print(f"Running {os.path.basename(path)}", flush=True)
    with cancel_on_ctrl_c():
        result = Runner().run_or_raise(prompt)
    for node_id, shown in result.ui.items():
        for text in shown.get("text") or []:
            title = prompt.get(node_id, {}).get("_meta", {}).get("title", node_id)
            print(f"\n{title}:\n{text}")
    for saved in result.saved_files(folder_paths.get_output_directory()):
        print(f"saved: {saved}")
    return 0


def cmd_smoke(args: argparse.Namespace, comfy_args: Sequence[str]) -> int:
    started = time.perf_counter()
    workdir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="infusion_smoke_")
    os.makedirs(workdir, exist_ok=True)
    try:
        # Everything (models, photos, outputs) in the work folder: the user's ComfyUI stays untouched.
        _start(args, ["--base-directory", workdir, *comfy_args])
        from .executor import ConsoleReporter, Runner
        from .smoke import Smoke, SmokeFailed

        report = ConsoleReporter() if args.verbose else (lambda event, data: None)
        print(f"Smoke check in {workdir}: tiny random models, 64 px, 1-2 steps (checks the install, not quality)",
              flush=True)
        smoke = Smoke.prepare(Runner(report))
        try:
            smoke.run_all()
        except SmokeFailed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
        print(f"All checks passed ({time.perf_counter() - started:.0f} s in all, ComfyUI's start included).")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def cmd_check(args: argparse.Namespace, comfy_args: Sequence[str]) -> int:
    from . import workflows
    names = args.workflows or workflows.example_names()
    _start(args, comfy_args)
    from .convert import to_api
    from .prompts import definitions_for
    from .validate import check_workflow

    failed = 0
    for name in names:
        path = workflows.resolve(name)
        workflow = workflows.load(path)
        if workflows.is_api_format(workflow):
            print(f"{name}: API format, nothing to check here (the executor validates it when run)")
            continue
        definitions = definitions_for(workflow)
        problems = check_workflow(workflow, definitions)
        errors = [p for p in problems if p.kind != "model"]
        if not errors:
            to_api(workflow, definitions)
        status = "FAILED" if errors else "ok"
        print(f"{status:6} {name}")
        for problem in problems:
            print(f"       {'note: ' if problem.kind == 'model' else ''}{problem}")
        failed += bool(errors)
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace, comfy_args: Sequence[str]) -> int:
    from ..format import load_concept
    from ..toolbox import report, residual_norms

    for i, path in enumerate(args.files):
        concept = load_concept(path)
        print(("\n" if i else "") + report(concept, residual_norms(concept), value_space=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    comfy_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, comfy_args = argv[:split], argv[split + 1:]
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    from .executor import PromptInvalid, RunFailed
    try:
        if args.command == "train":
            return cmd_train(args, argv[argv.index("train") + 1:], comfy_args)
        return {"run": cmd_run, "smoke": cmd_smoke, "check": cmd_check, "info": cmd_info}[args.command](args, comfy_args)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 130 if str(e) == "cancelled" else 1
    except (ComfyUINotFound, WorkflowError, OverrideError, PromptInvalid, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
