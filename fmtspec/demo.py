"""`make demo` / `fmtspec demo`: the main job, offline, in a few minutes on 2 CPU cores.

Two experiments into one folder and one board:
- experiments/demo_tiny.yaml: every training method on the tiny offline mT5 and the bundled fixtures of the
  real tasks, scored on `fmtspec_suite` and `fmtspec_targets` (the plumbing of the real pipeline; a random
  240k-parameter model's scores mean little). Run folders OUTPUT/runs/<label>/.
- experiments/demo_mini.yaml: the miniature world (harness_tasks/mini_world.py), where format specialization
  shows: the shipped pretrained base (models/mini_pretrained), then prompt tuning, fine-tuning and ProMoT
  with 2 seeds, scored on `fmtspec_mini` and its target. Run folders OUTPUT/runs/mini_<method>_s<seed>/,
  the base scored as mini_pretrained.
Every score is the stock `lm_eval --model promot_hf`. OUTPUT/leaderboard.md holds both, OUTPUT/plots/ and
OUTPUT/diagnostics/ the figures. Running it again reuses everything that is finished.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "harness_tasks" / "fixtures"
DEMO_EXPERIMENT = REPO / "experiments" / "demo_tiny.yaml"
MINI_EXPERIMENT = REPO / "experiments" / "demo_mini.yaml"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_out", help="folder for models, runs and results (default: demo_out)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N documents of each task (default: the experiment's)")
    parser.add_argument("--verbose", action="store_true", help="stream the training and lm_eval output too")


@contextlib.contextmanager
def environment(**values: str):
    """os.environ with `values` set, restored after (the two experiments read different data folders)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(args: argparse.Namespace) -> int:
    from fmtspec.bases import finish_pretraining, start_pretraining
    from fmtspec.experiment import run_experiment, write_leaderboard
    from fmtspec.experiment_file import PRETRAIN_PREFIX, load_experiment
    from fmtspec.processes import say
    from harness_tasks.mini_world import default_world

    for path in (DEMO_EXPERIMENT, MINI_EXPERIMENT, FIXTURES):
        if not path.exists():
            raise FmtspecError(f"the demo needs a source checkout of fmtspec ({path} is missing)")
    if args.limit is not None and args.limit < 1:
        raise FmtspecError(f"--limit must be at least 1, got {args.limit}")
    os.environ.update(OFFLINE)  # nothing asks the Hugging Face hub
    start = time.time()
    # Each experiment reads its own data: the real tasks the bundled fixtures, the miniature world its
    # generated splits (never the fixtures' small copies of them).
    tiny_env, mini_env = {"FMTSPEC_DATA_DIR": str(FIXTURES)}, {"FMTSPEC_DATA_DIR": str(default_world())}
    with environment(**tiny_env):
        tiny = load_experiment(DEMO_EXPERIMENT, args.output)
    with environment(**mini_env):
        mini = load_experiment(MINI_EXPERIMENT, args.output)
    for exp, env in ((tiny, tiny_env), (mini, mini_env)):
        exp.env.update(env)
        if args.limit is not None:
            exp.lm_eval["limit"] = args.limit
    pretraining = None  # the shipped base needs none; a `pretrain:` base trains while the tiny runs do
    if mini.base_model.startswith(PRETRAIN_PREFIX):
        with environment(**mini_env):
            pretraining = start_pretraining(mini, mini.base_model)
    if pretraining is not None:  # the base trains on its thread, the tiny runs on the other core
        tiny.env["OMP_NUM_THREADS"] = "1"
    with environment(**tiny_env):
        run_experiment(tiny, stream=args.verbose, board=False)
    with environment(**mini_env):
        if pretraining is not None:
            say("waiting for the miniature world's base")
            finish_pretraining(mini, pretraining, args.verbose)
        run_experiment(mini, stream=args.verbose, board=False)
        written = write_leaderboard(mini.output, [tiny, mini])
    say(f"demo done in {time.time() - start:.0f} s. Look at:")
    say(f"  leaderboard   {written[0]}")
    say(f"  plots         {mini.output / 'plots'}/")
    say(f"  diagnostics   {mini.output / 'diagnostics'}/")
    say(f"  run folders   {mini.output / 'runs'}/<label>/  (miniature world: mini_<method>_s<seed>)")
    say(f"  lm-eval       {mini.output / 'results'}/<label>/ (logs in {mini.output / 'logs'}/)")
    return 0
