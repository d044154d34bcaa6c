"""Infusion's headless runner: train concepts and describe concept files, with ComfyUI as a library (no server).

Run it with ComfyUI's Python from the pack's folder (ComfyUI/custom_nodes/ComfyUI-Infusion); a pack
kept elsewhere finds ComfyUI through COMFYUI_PATH=/path/to/ComfyUI. Options after `--` go to ComfyUI
itself (--lowvram, --cpu, --output-directory DIR, ...).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .locate import ComfyUINotFound

EPILOG = "Options after -- go to ComfyUI (e.g. -- --lowvram, -- --cpu, -- --output-directory out)."


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="base model: a name in models/checkpoints, or a path to a file")
    parser.add_argument("--photos", help="folder of the concept's photos")
    parser.add_argument("--batch", metavar="CSV", help="train many concepts: a CSV file with a 'photos' column and "
                                                       "any node setting as a column (word, output_name, steps, ...)")
    parser.add_argument("--output-folder", metavar="DIR", help="where the concepts (with their snapshots and resume "
                        "states), loss graphs and previews go (default: ComfyUI's models/infusion and output folders)")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="train the batch on a Ray cluster: without ADDRESS a local one (every GPU of this "
                             "machine), with one the cluster there (host:port, or 'auto' for the one running here); "
                             "needs `pip install ray`")
    parser.add_argument("--workers", type=int, metavar="N", help="with --ray: how many workers (default: one per GPU "
                        "of the cluster; without GPUs one, which shares the CPUs)")
    parser.add_argument("--verbose", action="store_true", help="show ComfyUI's log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infusion", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Parsed again, with the node's own options, once ComfyUI is loaded (cmd_train).
    _train_options(commands.add_parser("train", add_help=False, epilog=EPILOG, help="train a concept (or a batch "
                                       "of them) from photos; --help lists the node's options (loads ComfyUI)"))

    info = commands.add_parser("info", epilog=EPILOG, help="describe concept files: word, model, layers, training, "
                                                           "lineage, residual norm per layer (no ComfyUI needed)")
    info.add_argument("files", nargs="+", help="concept .safetensors files")

    return parser


def cmd_train(args: argparse.Namespace, argv: list[str], comfy_args: Sequence[str]) -> int:
    from . import runtime, train
    from .executor import Runner, cancel_on_ctrl_c
    from .node_inputs import node_definitions

    # A driver of Ray workers trains nothing itself: its ComfyUI stays off the GPUs.
    comfy_root = runtime.start([*comfy_args, "--cpu"] if args.ray is not None else comfy_args, verbose=args.verbose)
    definitions = node_definitions(train.NODES)
    missing = [k for k in train.NODES if k not in definitions]
    if missing:
        raise ValueError(f"this ComfyUI has no node {', '.join(missing)}: is this pack up to date?")
    parser = argparse.ArgumentParser(prog="python -m infusion train", epilog=EPILOG,
                                     description="Train Infusion concepts from folders of photos.")
    _train_options(parser)
    specs = train.add_node_options(parser, definitions[train.TRAIN_NODE])
    options = parser.parse_args(argv)
    if not options.checkpoint:
        parser.error("--checkpoint is required (a name in models/checkpoints, or a path)")
    if options.workers is not None and (options.ray is None or options.workers < 1):
        parser.error("--workers N (at least 1) goes with --ray")
    settings = train.node_settings(options, specs)
    if options.batch:
        jobs = train.batch_jobs(options.batch, specs, settings)
    elif options.photos:
        jobs = [train.job_for(options.photos, settings)]
    else:
        parser.error("give --photos FOLDER (one concept) or --batch FILE.csv (many)")
    if options.output_folder:
        train.use_output_folder(options.output_folder)
    checkpoint = train.model_file("checkpoints", options.checkpoint)
    if options.ray is not None:
        from .cluster import Cluster, train_on_ray
        prompts = [train.train_prompt(definitions, checkpoint, job) for job in jobs]
        cluster = Cluster(options.ray, comfy_root, options.workers, list(comfy_args), options.checkpoint,
                          options.output_folder, options.verbose)
        rows = train_on_ray(cluster, prompts)
    else:
        with cancel_on_ctrl_c():
            rows = train.train_all(Runner(), definitions, checkpoint, jobs)
    if len(rows) > 1:
        print("\n" + train.table(rows), flush=True)
    failed = sum(row.status == "failed" for row in rows)
    if failed:
        print(f"{failed} of {len(rows)} concepts failed", file=sys.stderr)
    if any(row.status == "cancelled" for row in rows):
        return 130
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace, comfy_args: Sequence[str]) -> int:
    from ..format import load_concept
    from ..concept_tools import report, residual_norms

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

    try:
        if args.command == "train":
            return cmd_train(args, argv[argv.index("train") + 1:], comfy_args)
        return cmd_info(args, comfy_args)
    except (ComfyUINotFound, FileNotFoundError, ValueError) as e:  # PromptInvalid included
        print(f"error: {e}", file=sys.stderr)
        return 1
