"""`fmtspec leaderboard LABEL=PATH [LABEL=PATH ...] --baseline LABEL [--baseline LABEL] --output FILE.md [--plots DIR]`.

Import-light: matplotlib is imported only when --plots is given; torch and lm_eval never.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmtspec.core import atomic_files
from fmtspec.core.errors import FmtspecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="[LABEL=]PATH",
        help="an lm-eval --output_path folder (the newest results per task are used), one results JSON file, "
             "or a folder holding many models' results; LABEL defaults to the run folder's or the folder's name")
    parser.add_argument("--baseline", required=True, metavar="LABEL", action="append",
                        help="the checkpoint the deltas are taken against (e.g. the pretrained model); repeat it for "
                             "boards of several worlds (each table takes the first it holds, e.g. --baseline "
                             "pretrained --baseline mini_pretrained)")
    parser.add_argument("--output", required=True, metavar="FILE.md", help="where to write the markdown board")
    parser.add_argument("--plots", metavar="DIR", help="also write PNG plots (Norm. Avg., trade-off, training loss)")
    parser.add_argument("--stderr", action="store_true", help="show lm-eval's standard errors (value ± se)")


def run(args: argparse.Namespace) -> int:
    from leaderboards.board import build
    from leaderboards.results import load_checkpoints

    checkpoints = load_checkpoints(args.paths)
    labels = [c.label for c in checkpoints]
    for baseline in args.baseline:
        if baseline not in labels:
            raise FmtspecError(f"unknown baseline label {baseline!r}; the labels are: {', '.join(labels)}")
    board = build(checkpoints, args.baseline, show_stderr=args.stderr)
    written = []
    if args.plots:
        from leaderboards.plots import write_plots

        written += write_plots(board, Path(args.plots))
    write_text_atomically(Path(args.output), board.markdown)
    for path in [Path(args.output), *written]:
        sys.stdout.write(f"wrote {path}\n")
    return 0


def write_text_atomically(path: Path, text: str) -> None:
    """Never leave a half-written board (fmtspec.core.atomic_files); a write that fails is one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.write_text_atomically(path, text)
    except OSError as exc:
        raise FmtspecError(f"cannot write {path}: {exc.strerror or exc}") from None
