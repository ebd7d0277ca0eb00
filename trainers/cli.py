"""`fmtspec train CONFIG.yaml [--set key=value ...] [--output RUN_DIR] [--resume]`.

Import-light at the top: the config is validated before torch, DeepSpeed or the model are imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fmtspec.core.errors import FmtspecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.yaml", help="training config (see configs/)")
    parser.add_argument("--set", dest="overrides", metavar="key=value", action="append", default=[],
                        help="override a config key, dotted for sections (e.g. model_training.steps=200); repeatable")
    parser.add_argument("--output", metavar="RUN_DIR", default=None,
                        help="run folder to write (default: runs/<config path under configs/, without .yaml>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its last complete checkpoint")
    parser.add_argument("--cached", action="store_true",
                        help="method pretrain: train into $FMTSPEC_CACHE/mini_base/<config hash>, or reuse it")


def default_output(config_path: str) -> Path:
    """configs/promot/mt5_xxl/rte/promot.yaml -> runs/promot/mt5_xxl/rte/promot (what init_from in configs/ expects)."""
    parts = Path(config_path).with_suffix("").parts
    if "configs" in parts:
        parts = parts[len(parts) - parts[::-1].index("configs"):]
    else:
        parts = parts[-1:]
    return Path("runs", *parts)


def run(args: argparse.Namespace) -> int:
    from trainers.config import load_config

    config = load_config(args.config, args.overrides)
    if getattr(args, "cached", False):
        if args.output or args.resume:
            raise FmtspecError("--cached picks the run folder itself: drop --output and --resume")
        from trainers.pretrain import cached_base

        print(f"run folder: {cached_base(config, log=lambda line: print(line, file=sys.stderr))}")
        return 0
    output = Path(args.output) if args.output else default_output(args.config)

    from trainers.trainer import Stopped, barrier
    from trainers.train import train

    main = os.environ.get("RANK", "0") == "0"  # print once, not once per launched process
    try:
        run_dir = train(config, output, resume=args.resume)
    except Stopped as stop:
        if main:
            sys.stderr.write(f"fmtspec train: {stop.line(output)}\n")
        # 128 + the signal's number, what a shell reports for a process the signal killed (SIGTERM 143, SIGINT
        # 130): a scheduler's epilog or a wrapper tells a preemption from a failure (1)
        return 128 + stop.signum
    barrier()  # every process has finished before any exits (and ends its process group, at exit)
    if main:
        print(f"run folder: {run_dir}")
    return 0
