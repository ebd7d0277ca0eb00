"""`fmtspec diagnose`: the format-specialization diagnostics (fmtspec.diagnose) of one run folder.

    fmtspec diagnose specialization RUN_DIR [--tasks fmtspec_suite_1shot] [--limit N] [--output DIR]
        scores every intermediate checkpoint with the stock `lm_eval --model promot_hf` (as an experiment
        scores them, fmtspec.scoring) and tracks, per step, each unseen task's score and `fmt_label_share`
        (Figures 1-2): specialization.json + .png
    fmtspec diagnose alignment RUN_DIR [--steps 0,final] [--layer decoder:-1] [--batches 4] [--output DIR]
        the cosine between the full and the format gradient per module of one layer, at chosen checkpoints
        (Figures 3, 7): alignment.json + .png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmtspec.core.errors import FmtspecError
from fmtspec.diagnose import MODULES, alignment_for_run, specialization_table, write_alignment, write_specialization
from fmtspec.experiment_file import task_list
from fmtspec.processes import say
from fmtspec.scoring import run_scores, score_job


def specialization_for_run(run_dir: Path, tasks: list[str], out_dir: Path, settings: dict) -> list[Path]:
    """Score each checkpoint of `run_dir` with lm_eval (skipping what is done; the rest in one lm_eval
    process) and write the diagnostic."""
    from fmtspec.core import run_folder as rf

    steps = rf.checkpoint_steps(run_dir)
    if not steps:
        raise FmtspecError(f"{run_dir} has no checkpoints (checkpoints/step-N) to score")
    jobs = []
    for step in [0, *steps]:  # 0: the model the run started from
        view = rf.write_checkpoint_view(run_dir, step, out_dir / "checkpoints" / f"step-{step}")
        jobs.append((step, score_job({"pretrained": str(view)}, tasks, view / "lm_eval", settings,
                                     out_dir / "logs" / f"step-{step}.lm_eval.log",
                                     what=f"lm_eval on checkpoint step-{step}", newer_than=run_dir / "run.json")))
    say(f"score {sum(job.results is None for _, job in jobs)} of {len(jobs)} checkpoints on {','.join(tasks)}")
    run_scores([job for _, job in jobs])
    points = [(step, job.results) for step, job in jobs]
    return write_specialization(specialization_table(points, run_dir), out_dir, Path(run_dir).name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True, parser_class=type(parser))
    spec = sub.add_parser("specialization", help="fmt_label_share and unseen-task scores of every checkpoint")
    spec.add_argument("run_dir", metavar="RUN_DIR")
    spec.add_argument("--tasks", default="fmtspec_suite_1shot", help="lm-eval tasks (default: fmtspec_suite_1shot)")
    spec.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    spec.add_argument("--batch_size", type=int, default=8)
    spec.add_argument("--output", metavar="DIR", default=None, help="default: diagnostics/<run name>")
    align = sub.add_parser("alignment", help="cosine between the full and the format gradient per module")
    align.add_argument("run_dir", metavar="RUN_DIR")
    align.add_argument("--steps", default="0,final", help="comma-separated: 0, checkpoint steps, final, all")
    align.add_argument("--layer", default="decoder:-1",
                       help="[encoder|decoder:]INDEX (default: the last decoder layer)")
    align.add_argument("--task", default=None, help="default: the run's first task")
    align.add_argument("--batches", type=int, default=4)
    align.add_argument("--batch_size", type=int, default=8)
    align.add_argument("--seed", type=int, default=0)
    align.add_argument("--output", metavar="DIR", default=None, help="default: diagnostics/<run name>")


def run(args: argparse.Namespace) -> int:
    from fmtspec.core.run_folder import read_manifest

    run_dir = Path(args.run_dir).resolve()
    read_manifest(run_dir)  # one clear line when it is not a (complete) run folder
    out = Path(args.output) if args.output else Path("diagnostics") / run_dir.name
    if args.diagnostic == "specialization":
        tasks = task_list(args.tasks, "--tasks", Path("command line"))
        settings = {"batch_size": args.batch_size, "limit": args.limit}
        written = specialization_for_run(run_dir, tasks, out.resolve(), settings)
    else:
        result = alignment_for_run(run_dir, args.steps, args.layer, args.task, args.batches, args.batch_size, args.seed)
        written = write_alignment(result, out, run_dir.name)
        for row in result["steps"]:
            cells = [f"{m}={'—' if row['cosine'][m] is None else format(row['cosine'][m], '.3f')}" for m in MODULES]
            print(f"step {row['step']}: " + ", ".join(cells))
    for path in written:
        print(f"wrote {path}")
    return 0
