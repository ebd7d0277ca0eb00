"""Scoring an experiment's runs: each run's chosen checkpoint, and its intermediate checkpoints, with the stock
`lm_eval` command line and the `promot_hf` model, several command lines to a worker process
(fmtspec.lm_eval_batch), the workers spread over the GPUs (fmtspec.devices' rule). A score whose score.json
matches the same command and is newer than the run is not recomputed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmtspec.bases import resolve_model
from fmtspec.core.errors import FmtspecError
from fmtspec.devices import SCORE_PORT, device_env, experiment_gpus
from fmtspec.experiment_file import PRETRAINED, Experiment, RunSpec
from fmtspec.processes import error_line, offline_env, record, say

@dataclass
class ScoreWorker:
    """One lm_eval worker process (`python -m fmtspec.lm_eval_batch`) and what it runs on."""

    env: dict = field(default_factory=dict)  # added to its environment (CUDA_VISIBLE_DEVICES)
    args: list[str] = field(default_factory=list)  # added to each of its lm_eval command lines (--device cuda:0)
    processes: int = 1  # > 1: data-parallel, `accelerate launch` in that many processes (one per GPU)
    port: int = SCORE_PORT  # accelerate's rendezvous port when data-parallel


def score_workers(exp: Experiment, pending: int) -> list[ScoreWorker]:
    """The lm_eval workers for `pending` command lines, by the rule above."""
    devices = experiment_gpus(exp)
    pending = max(1, pending)
    if not devices:
        return [ScoreWorker(device_env(exp, [])) for _ in range(min(exp.jobs, pending))]
    if exp.lm_eval.get("device"):
        return [ScoreWorker(device_env(exp, devices)) for _ in range(min(exp.jobs, pending))]
    parallelize = str((exp.lm_eval.get("model_args") or {}).get("parallelize", "")).lower() in ("true", "1")
    count = min(exp.jobs, pending, len(devices)) if parallelize else min(pending, len(devices))
    size = len(devices) // count
    groups = [devices[i * size:(i + 1) * size] for i in range(count)]
    if parallelize:
        return [ScoreWorker(device_env(exp, group)) for group in groups]
    env = {}
    if "OMP_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in exp.env:  # a share of the cores each
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(devices)))
    if size == 1:
        return [ScoreWorker({**env, **device_env(exp, group)}, ["--device", "cuda:0"]) for group in groups]
    return [ScoreWorker({**env, **device_env(exp, group)}, [], size, SCORE_PORT + i) for i, group in enumerate(groups)]


def worker_command(worker: ScoreWorker, job_file: Path) -> list[str]:
    """The command of a worker running the lm_eval command lines of `job_file`."""
    batch = ["-m", "fmtspec.lm_eval_batch", str(job_file)]
    if worker.processes == 1:
        return [sys.executable, *batch]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(worker.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(worker.port), *batch]


def _workers_text(workers: list[ScoreWorker], pending: int) -> str:
    used = min(len(workers), pending)
    if used <= 1 and workers[0].processes == 1:
        gpu = workers[0].env.get("CUDA_VISIBLE_DEVICES")
        return f" on GPU {gpu}" if gpu and "," not in gpu else ""
    if workers[0].processes > 1:
        return f" in {used} data-parallel worker(s) of {workers[0].processes} GPUs"
    pinned = bool(workers[0].args)
    return f" in {used} worker processes" + (", one per GPU" if pinned else "")


def model_args_text(args: dict) -> str:
    for key, value in args.items():
        if "," in str(value) or "=" in str(value):
            raise FmtspecError(f"model_args {key}={value!r}: values may not contain ',' or '='")
    return ",".join(f"{k}={v}" for k, v in args.items())


@dataclass
class ScoreJob:
    """One `lm_eval --model promot_hf` command: its arguments, where it writes, and whether it is done."""

    what: str  # for messages: "lm_eval on <label>"
    argv: list[str]  # what follows `lm_eval` on the command line
    out_dir: Path  # its --output_path; out_dir/score.json marks it done
    key: dict  # what decides the result (model_args, tasks, limit, ...), recorded in score.json
    log: Path
    results: Path | None = None  # the results file, once done (before or now)
    ran: bool = False  # whether this invocation ran it


def score_job(model_args: dict, tasks: list[str], out_dir: Path, settings: dict, log: Path, *, what: str,
              newer_than: Path | None = None) -> ScoreJob:
    """The lm_eval command scoring `model_args` on `tasks` into `out_dir`, marked done when the same
    command already wrote results there that are newer than `newer_than`."""
    model_args = {**{k: str(v) for k, v in model_args.items()},
                  **{k: str(v) for k, v in (settings.get("model_args") or {}).items()}}
    key = {"model_args": model_args, "tasks": list(tasks), "limit": settings.get("limit"),
           "gen_kwargs": settings.get("gen_kwargs"), "device": settings.get("device")}
    argv = ["--model", "promot_hf", "--model_args", model_args_text(model_args), "--tasks", ",".join(tasks),
            "--output_path", str(out_dir), "--batch_size", str(settings.get("batch_size") or 1)]
    if settings.get("limit") is not None:
        argv += ["--limit", str(settings["limit"])]
    if settings.get("gen_kwargs"):
        argv += ["--gen_kwargs", str(settings["gen_kwargs"])]
    if settings.get("device"):
        argv += ["--device", str(settings["device"])]
    job = ScoreJob(what, argv, out_dir, key, log)
    job.results = _finished_score(out_dir / "score.json", key, tasks, newer_than)
    return job


def run_scores(jobs: list[ScoreJob], workers: int | list[ScoreWorker] = 1, env: dict | None = None,
               stream: bool = False) -> None:
    """Run the jobs not done yet, in `workers` processes of `python -m fmtspec.lm_eval_batch` (each pays
    lm_eval's start-up once; a number, or the ScoreWorkers of score_workers: their GPUs), the jobs dealt out
    in turn; every job's output goes to its own log. Raises on the first failure, after marking what
    finished."""
    from concurrent.futures import ThreadPoolExecutor

    if isinstance(workers, int):
        workers = [ScoreWorker() for _ in range(workers)]
    pending = [job for job in jobs if job.results is None]
    count = min(len(workers), len(pending))
    chunks = [pending[i::count] for i in range(count)]
    with ThreadPoolExecutor(max(1, count)) as pool:
        for future in [pool.submit(_run_batch, chunk, env, stream, worker) for chunk, worker in zip(chunks, workers)]:
            future.result()


def _run_batch(jobs: list[ScoreJob], env: dict | None, stream: bool, worker: ScoreWorker | None = None) -> None:
    from fmtspec.lm_eval_batch import DONE

    worker = worker or ScoreWorker()

    before = {id(job): _results_files(job.out_dir) for job in jobs}
    job_file = jobs[0].log.parent / f".lm_eval_batch-{os.getpid()}-{threading.get_ident()}.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps([job.argv + worker.args for job in jobs]))
    launch = "" if worker.processes == 1 else f"(accelerate launch, {worker.processes} processes) "
    gpus = f"CUDA_VISIBLE_DEVICES={worker.env['CUDA_VISIBLE_DEVICES']} " if "CUDA_VISIBLE_DEVICES" in worker.env else ""
    for job in jobs:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.log.write_text(f"$ {gpus}{launch}lm_eval " + " ".join(job.argv + worker.args) + "\n")
    proc = subprocess.Popen(worker_command(worker, job_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**(env or offline_env()), **worker.env}, text=True, errors="replace")
    current, done, tail = 0, set(), []
    out = open(jobs[0].log, "a")
    try:
        for line in proc.stdout:
            if line.startswith("fmtspec-batch: job "):
                number = line.split()[2].rstrip(":")
                if line.strip() == DONE.format(number):
                    done.add(int(number))
                    say(f"{jobs[int(number)].what}: done")
                    continue
                if int(number) != current:
                    out.close()
                    current, tail = int(number), []
                    out = open(jobs[current].log, "a")
                continue
            out.write(line)
            if stream:
                sys.stderr.write(line)
            if line.strip():
                tail = (tail + [line.strip()])[-40:]
    finally:
        out.close()
    code = proc.wait()
    job_file.unlink(missing_ok=True)
    for i in sorted(done):
        job = jobs[i]
        new = sorted(_results_files(job.out_dir) - before[id(job)])
        if not new:
            raise FmtspecError(f"lm_eval wrote no results file under {job.out_dir} (full output: {job.log})")
        (job.out_dir / "score.json").write_text(
            json.dumps({**job.key, "results": str(new[-1].relative_to(job.out_dir))}, indent=2) + "\n")
        job.results, job.ran = new[-1], True
    if code != 0 or len(done) < len(jobs):
        failed = jobs[min(set(range(len(jobs))) - done, default=current)]
        raise FmtspecError(f"{failed.what} failed (exit {code}): {error_line(tail)} (full output: {failed.log})")


def _results_files(folder: Path) -> set[Path]:
    return set(folder.rglob("results_*.json")) if folder.is_dir() else set()


def _finished_score(marker: Path, key: dict, tasks: list[str], newer_than: Path | None) -> Path | None:
    if not marker.is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
        results = marker.parent / saved["results"]
        data = json.loads(results.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if {k: saved.get(k) for k in key} != key:
        return None
    covered = set(data.get("results") or {}) | set(data.get("group_subtasks") or {})
    if not set(tasks) <= covered:
        return None
    if newer_than is not None and newer_than.exists() and results.stat().st_mtime < newer_than.stat().st_mtime:
        return None
    return results


def final_job(exp: Experiment, spec: RunSpec) -> ScoreJob:
    """lm_eval of the run's chosen checkpoint on the experiment's tasks, into results/<label>."""
    from fmtspec.core.run_folder import MANIFEST

    if spec.method == PRETRAINED:
        target, newer_than = resolve_model(exp, spec.model), None
    else:
        target, newer_than = str(exp.run_dir(spec.label)), exp.run_dir(spec.label) / MANIFEST
    return score_job({"pretrained": target}, exp.tasks, exp.output / "results" / spec.label, exp.lm_eval,
                     exp.output / "logs" / f"{spec.label}.lm_eval.log", what=f"lm_eval on run '{spec.label}'",
                     newer_than=newer_than)


def checkpoint_jobs(exp: Experiment, spec: RunSpec, finals: dict[str, ScoreJob]) -> list[tuple[int, ScoreJob]]:
    """lm_eval of every intermediate checkpoint of a run on `checkpoint_tasks`: [(step, job)]. Step 0 (the
    start model) is the pretrained run of the same model where it scores those tasks, else scored too."""
    from fmtspec.core.run_folder import read_manifest
    from fmtspec.core import run_folder as rf

    run_dir = exp.run_dir(spec.label)
    start = read_manifest(run_dir).get("base_model")
    points = [(0, finals[other.label]) for other in exp.runs
              if other.method == PRETRAINED and resolve_model(exp, other.model) == start
              and set(_leaf_tasks(exp.checkpoint_tasks)) <= set(_leaf_tasks(exp.tasks))][:1]
    for step in ([] if points else [0]) + rf.checkpoint_steps(run_dir):
        view = rf.write_checkpoint_view(run_dir, step, exp.output / "checkpoints" / spec.label / f"step-{step}")
        points.append((step, score_job({"pretrained": str(view)}, exp.checkpoint_tasks, view / "lm_eval",
                                       exp.lm_eval, exp.output / "logs" / f"{spec.label}.step-{step}.lm_eval.log",
                                       what=f"lm_eval on run '{spec.label}' checkpoint step-{step}",
                                       newer_than=run_dir / "run.json")))
    return points


def score_all(exp: Experiment, stream: bool = False) -> dict[str, list[tuple[int, Path]]]:
    """Score every run, and every checkpoint of the runs with `checkpoints: all`, in `exp.jobs` lm_eval
    worker processes (on GPUs: score_workers'); returns each such run's [(step, results file)]."""
    finals = {spec.label: final_job(exp, spec) for spec in exp.runs}
    curves = {spec.label: checkpoint_jobs(exp, spec, finals) for spec in exp.runs if spec.checkpoints == "all"}
    jobs = list({id(job): job for job in [*finals.values(), *(job for points in curves.values()
                                                              for _, job in points)]}.values())
    pending = sum(job.results is None for job in jobs)
    workers = score_workers(exp, pending) if pending else [ScoreWorker()]
    say(f"stage score: {pending} lm_eval run(s) of {len(jobs)}" + _workers_text(workers, pending))
    start = time.time()
    try:
        run_scores(jobs, workers, offline_env(exp), stream)
    finally:
        for label, job in finals.items():
            if job.results is not None:
                record(exp, "score" if job.ran else "skip-score", label)
        for label, points in curves.items():
            for step, job in points:
                if job.results is not None and job not in finals.values():
                    record(exp, "score" if job.ran else "skip-score", label, step=step)
    say(f"stage score: done in {time.time() - start:.0f} s")
    return {label: [(step, job.results) for step, job in points] for label, points in curves.items()}


def _leaf_tasks(tasks: list[str]) -> list[str]:
    from harness_tasks.catalog import GROUPS

    out = []
    for task in tasks:
        out += _leaf_tasks(GROUPS[task]) if task in GROUPS else [task]
    return out
