"""Several stock `lm_eval` commands in one process: `python -m fmtspec.lm_eval_batch JOBS.json`.

JOBS.json is a list of argument lists, each exactly what follows `lm_eval` on a command line
(`["--model", "promot_hf", "--model_args", "pretrained=...", "--tasks", ..., "--output_path", ...]`).
Each job goes through lm-eval's own command-line parser and `run` command, so its results file, printed
tables and errors are the command's. What the batch saves is the start-up every `lm_eval` process pays
(imports, and indexing the few thousand task YAMLs, ~10 s on a laptop core): the task index is built once per
set of task folders and reused, the tasks themselves are loaded fresh by each job. That index is lm-eval's
private `TaskIndex.build`: where a later lm-eval moves or changes it, each job indexes again, as `lm_eval` does.

After each job it prints one line `fmtspec-batch: job N done`, which `fmtspec experiment` reads to know
what finished when a later job fails. Under `accelerate launch` (data-parallel, one process per GPU) every
process runs every job and only the main one (RANK 0) prints these lines.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path

DONE = "fmtspec-batch: job {} done"
_BUILD_PARAMETERS = [("paths", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                     ("resolve_includes", inspect.Parameter.KEYWORD_ONLY)]

log = logging.getLogger(__name__)


def _reuse_task_index() -> None:
    """Memoize lm-eval's TaskIndex.build (a pure walk over YAML folders) for the life of this process.

    It is private to lm-eval: where it is missing or takes other arguments than 0.4.13's
    `build(paths, *, resolve_includes=True)`, nothing is memoized and each job indexes again (slower, same
    results)."""
    try:
        from lm_eval.tasks import _index

        build = _index.TaskIndex.build
        parameters = [(p.name, p.kind) for p in inspect.signature(build).parameters.values()]
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        log.debug("fmtspec-batch: lm-eval's task index is not reused (%r)", exc)
        return
    if parameters != _BUILD_PARAMETERS:
        log.debug("fmtspec-batch: lm-eval's task index is not reused (TaskIndex.build%s)", inspect.signature(build))
        return
    built: dict = {}

    def cached_build(paths, *, resolve_includes=True):
        paths = list(paths)
        key = (tuple(str(p) for p in paths), resolve_includes)
        if key not in built:
            built[key] = build(paths, resolve_includes=resolve_includes)
        return dict(built[key])  # a TaskManager may add to its own copy

    _index.TaskIndex.build = staticmethod(cached_build)


def run_jobs(jobs: list[list[str]]) -> None:
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    _reuse_task_index()
    main = os.environ.get("RANK", "0") == "0"  # the markers once, not once per data-parallel process
    for i, argv in enumerate(jobs):
        if main:
            print(f"fmtspec-batch: job {i}: lm_eval {' '.join(argv)}", flush=True)
        sys.argv = ["lm_eval", *argv]  # the stock parser reads sys.argv (and inserts `run` as lm_eval does)
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
        if main:
            print(DONE.format(i), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fmtspec.lm_eval_batch JOBS.json", file=sys.stderr)
        return 2
    try:
        jobs = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as exc:
        print(f"fmtspec: cannot read the job file {argv[0]}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(jobs, list) or not all(isinstance(j, list) and all(isinstance(a, str) for a in j) for j in jobs):
        print(f"fmtspec: {argv[0]} must hold a list of lm_eval argument lists", file=sys.stderr)
        return 2
    run_jobs(jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
