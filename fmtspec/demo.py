"""`make demo` / `fmtspec demo`: the main job, `fmtspec experiment experiments/demo_tiny.yaml`, offline.

It builds the tiny mT5 (fmtspec.tiny_models), trains it with every method on the bundled fixtures, scores
every run with the stock `lm_eval --model promot_hf` on `fmtspec_suite` and `fmtspec_targets`, scores each
checkpoint of the fine-tuned run for the format-specialization curve, computes the gradient alignment, and
writes OUTPUT/leaderboard.md, OUTPUT/plots/ and OUTPUT/diagnostics/ (run folders in OUTPUT/runs/<label>/).
Running it again reuses everything that is finished.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from fmtspec.errors import FmtspecError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "harness_tasks" / "fixtures"
DEMO_EXPERIMENT = REPO / "experiments" / "demo_tiny.yaml"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_out", help="folder for models, runs and results (default: demo_out)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N documents of each task (default: the experiment's)")
    parser.add_argument("--verbose", action="store_true", help="stream the training and lm_eval output too")


def run(args: argparse.Namespace) -> int:
    from fmtspec.experiment import load_experiment, run_experiment, say

    if not DEMO_EXPERIMENT.is_file() or not FIXTURES.is_dir():
        raise FmtspecError(f"the demo needs a source checkout of fmtspec ({DEMO_EXPERIMENT} and {FIXTURES})")
    # Offline: every task reads the bundled fixtures, nothing asks the Hugging Face hub.
    os.environ["FMTSPEC_DATA_DIR"] = str(FIXTURES)
    os.environ.update(OFFLINE)
    start = time.time()
    exp = load_experiment(DEMO_EXPERIMENT, args.output)
    if args.limit is not None:
        if args.limit < 1:
            raise FmtspecError(f"--limit must be at least 1, got {args.limit}")
        exp.lm_eval["limit"] = args.limit
    out = run_experiment(exp, stream=args.verbose)
    say(f"demo done in {time.time() - start:.0f} s. Look at:")
    say(f"  leaderboard   {out['leaderboard']}")
    say(f"  plots         {exp.output / 'plots'}/")
    say(f"  diagnostics   {exp.output / 'diagnostics'}/")
    say(f"  run folders   {exp.output / 'runs'}/<label>/")
    say(f"  lm-eval       {exp.output / 'results'}/<label>/ (logs in {exp.output / 'logs'}/)")
    return 0
