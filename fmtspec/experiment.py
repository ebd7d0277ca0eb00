"""`fmtspec experiment EXPERIMENT.yaml`: train what is missing, score every run with the stock `lm_eval`
command and the `promot_hf` model, write `leaderboard.md`, plots and the diagnostics. The file's keys:
fmtspec/experiment_file.py; scoring: fmtspec/scoring.py; GPUs: fmtspec/devices.py; bases: fmtspec/bases.py.

Folder (`--output`, else `output:`, else experiments_out/<name>):

    runs/<label>/           fmtspec run folders (`fmtspec train --output`)
    configs/<label>.yaml    the merged training config each run was started with
    results/<label>/        lm_eval --output_path of each run's chosen checkpoint (+ score.json)
                            (the stock `lm_eval` command line, several to a process: fmtspec.lm_eval_batch)
    checkpoints/<label>/step-N/  a run.json view of each checkpoint (step-0: the start model) + lm_eval/
    diagnostics/<label>/    specialization.{json,png}, alignment.{json,png}
    leaderboard.md, plots/  the board and its plots (leaderboards/)
    logs/                   every subprocess's output;  actions.jsonl: what each invocation did

Re-running skips finished work: a run folder with a run.json is not trained again (a folder without one
is resumed with `--resume`), and a score whose score.json matches the same command, and is newer than
the run, is not recomputed.

GPUs (the rule, in full: fmtspec/devices.py): with `jobs: 1` every run trains on all the experiment's GPUs
through the DeepSpeed launcher (as many as its batch_size / micro_batch_size allows). Scoring P checkpoints on
G GPUs takes min(P, G) lm_eval workers: one per GPU (CUDA_VISIBLE_DEVICES=<i>, --device cuda:0) while P >= G
(many small checkpoints); with P < G (few, large) each worker runs data-parallel over G // P GPUs (`accelerate
launch`), so that no GPU idles. No two workers running at once share a GPU. Without GPUs everything runs as it
does on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from fmtspec import diagnose
from fmtspec.bases import resolve_model
from fmtspec.core.errors import FmtspecError
from fmtspec.devices import TRAIN_PORT, experiment_gpus, fitting_devices, train_command, train_slots
from fmtspec.experiment_file import PRETRAINED, Experiment, RunSpec, load_experiment
from fmtspec.processes import record, run_logged, say
from fmtspec.scoring import score_all

def _first_difference(a, b, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}{key}.")
    return where.rstrip(".") or "(the whole config)"


def resolved_config(exp: Experiment, spec: RunSpec) -> tuple[dict, dict]:
    """(the raw config `fmtspec train` gets, the resolved config it will record in run.json)."""
    from trainers.config import load_config

    raw = copy.deepcopy(spec.raw_config)
    if raw.get("model"):
        raw["model"] = resolve_model(exp, raw["model"])
    return raw, json.loads(json.dumps(load_config(None, raw=raw)))


def check_trained_configs(exp: Experiment) -> None:
    """Before any work: a finished run trained with another config than the experiment asks for is an error,
    never silently reused. A config key added since the run was trained counts as its default value there."""
    from fmtspec.core.run_folder import is_run_folder, read_manifest
    from trainers.config import defaults, merge

    for spec in exp.runs:
        run_dir = exp.run_dir(spec.label)
        if spec.method == PRETRAINED or not is_run_folder(run_dir):
            continue
        trained = read_manifest(run_dir).get("config")
        if isinstance(trained, dict):
            trained = json.loads(json.dumps(merge(defaults(), trained)))
            trained.pop("logging", None)  # where a run logs its metrics does not change what it trained
        config = resolved_config(exp, spec)[1]
        config.pop("logging", None)
        if trained is not None and trained != config:
            raise FmtspecError(f"run '{spec.label}': {run_dir} was trained with another config "
                               f"('{_first_difference(trained, config)}' differs); delete it to train again")


def train_run(exp: Experiment, spec: RunSpec, stream: bool = False, devices: list[str] | None = None,
              port: int | None = None) -> None:
    """Train `spec` into runs/<label>, unless its run.json is there; resume an interrupted run. On `devices`
    (default: every GPU of the experiment; none on a CPU machine), see train_command."""
    import yaml

    from fmtspec.core.run_folder import is_run_folder

    run_dir = exp.run_dir(spec.label)
    if is_run_folder(run_dir):
        say(f"train {spec.label}: done before, skipped ({run_dir})")
        record(exp, "skip-train", spec.label)
        return
    raw, config = resolved_config(exp, spec)
    config_file = exp.output / "configs" / f"{spec.label}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# merged by fmtspec experiment {exp.source.name} for run '{spec.label}'\n"
            + yaml.safe_dump(raw, sort_keys=False))
    if not config_file.is_file() or config_file.read_text() != text:
        config_file.write_text(text)
    resume = run_dir.is_dir() and any(run_dir.iterdir())
    devices = experiment_gpus(exp) if devices is None else devices
    if devices and exp.launcher is None:  # a `launcher:` of the experiment's own decides for itself
        fitting = fitting_devices(devices, config)
        if len(fitting) < len(devices):
            say(f"train {spec.label}: batch_size {config['batch_size']} with micro_batch_size "
                f"{config['micro_batch_size'] or config['batch_size']} trains on {len(fitting)} of its {len(devices)} "
                "GPUs (DeepSpeed: batch_size = micro_batch_size x processes x accumulation steps)")
        devices = fitting
    launcher, env = train_command(exp, devices, port)
    cmd = [*launcher, str(config_file), "--output", str(run_dir)]
    if resume:
        cmd.append("--resume")
    gpus = env.get("CUDA_VISIBLE_DEVICES")
    say(f"train {spec.label} ({spec.method}){' resuming' if resume else ''}{f' on GPU {gpus}' if gpus else ''}"
        f" -> {run_dir}")
    start = time.time()
    run_logged(cmd, exp.output / "logs" / f"{spec.label}.train.log", f"training run '{spec.label}'", stream, env)
    if not is_run_folder(run_dir):
        raise FmtspecError(f"training run '{spec.label}' ended without writing {run_dir}/run.json")
    record(exp, "resume" if resume else "train", spec.label, seconds=round(time.time() - start, 1))
    say(f"train {spec.label}: done in {time.time() - start:.0f} s")


# ---- the whole experiment ---------------------------------------------------------------------------


def write_leaderboard(output: Path, experiments: list[Experiment]) -> list[Path]:
    """One board (and its plots) over every run of `experiments`, all scored into `output`; runs named
    `<label>_s<seed>` are shown as mean and spread over their seeds, with the checkpoint curves of the
    runs that have them (diagnostics/<label>/specialization.json)."""
    from leaderboards.board import build
    from leaderboards.cli import write_text_atomically
    from leaderboards.plots import write_curves, write_plots
    from leaderboards.results import load_checkpoints

    runs = [spec for exp in experiments for spec in exp.runs]
    board = build(load_checkpoints([f"{r.label}={output / 'results' / r.label}" for r in runs]),
                  [exp.baseline for exp in experiments])
    written = write_plots(board, output / "plots")
    curves = {}
    for spec in runs:
        path = output / "diagnostics" / spec.label / "specialization.json"
        if spec.checkpoints == "all" and path.is_file():
            curves[spec.label] = json.loads(path.read_text())
    written += write_curves(curves, output / "plots")
    write_text_atomically(output / "leaderboard.md", board.markdown)
    return [output / "leaderboard.md", *written]


def _alignment_done(folder: Path, run_dir: Path, settings: dict) -> bool:
    """alignment.json of the same settings, newer than the run it measured."""
    path = folder / "alignment.json"
    try:
        same = json.loads(path.read_text()).get("settings") == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        return False
    fresh = path.stat().st_mtime >= (run_dir / "run.json").stat().st_mtime
    return same and fresh and (folder / "alignment.png").is_file()


def train_all(exp: Experiment, stream: bool = False) -> None:
    """Train every run not trained yet, `exp.jobs` at a time (on GPUs: each on its share of them, train_slots);
    a run waits for the run it starts from."""
    trained = [r for r in exp.runs if r.method != PRETRAINED]
    if not trained:
        return
    slots = train_slots(exp)

    def on(slot: int, devices: list[str]) -> dict:  # train_run's GPU arguments (none on a CPU machine)
        return {"devices": devices, "port": TRAIN_PORT + slot if len(slots) > 1 else None} if devices else {}

    if len(slots) == 1:
        for i, spec in enumerate(trained, 1):
            say(f"stage train [{i}/{len(trained)}]")
            train_run(exp, spec, stream, **on(0, slots[0]))
        return
    import queue
    from concurrent.futures import ThreadPoolExecutor, wait

    for model in dict.fromkeys(spec.model for spec in trained if spec.model):
        resolve_model(exp, model)  # a base to pretrain or build: once, before the runs that share it
    say(f"stage train: {len(trained)} run(s), {len(slots)} at a time"
        + (f", {len(slots[0])} GPU(s) each" if slots[0] else ""))
    futures: dict = {}
    free: queue.Queue = queue.Queue()
    for slot in enumerate(slots):
        free.put(slot)

    def train_after_parent(spec: RunSpec) -> None:
        for parent in (spec.init_from, spec.stage1_from):
            if parent:  # submitted earlier, so already running or done: no deadlock
                futures[parent].result()
        slot, devices = free.get()  # as many slots as threads: one is free
        try:
            train_run(exp, spec, stream, **on(slot, devices))
        finally:
            free.put((slot, devices))

    with ThreadPoolExecutor(len(slots)) as pool:
        for spec in trained:
            futures[spec.label] = pool.submit(train_after_parent, spec)
        wait(futures.values())
    for spec in trained:  # the first failure, in run order
        futures[spec.label].result()


def run_experiment(exp: Experiment, stream: bool = False, board: bool = True) -> dict:
    """Every stage in order; returns {"leaderboard": path, "plots": [...], "diagnostics": [...]}.
    With `board=False` (several experiments sharing one folder, as in the demo) no board is written and
    the copy of the experiment file is named experiment.<name>.yaml."""
    started = time.time()
    exp.output.mkdir(parents=True, exist_ok=True)
    check_trained_configs(exp)
    trained = [r for r in exp.runs if r.method != PRETRAINED]
    say(f"experiment {exp.name}: {len(trained)} run(s) to train, {len(exp.runs)} to score -> {exp.output}")
    train_all(exp, stream)
    curves = score_all(exp, stream)
    diagnostics = []
    for label, points in curves.items():
        table = diagnose.specialization_table(points, exp.run_dir(label))
        diagnostics += diagnose.write_specialization(table, exp.output / "diagnostics" / label, label)
    if exp.alignment:
        settings = dict(exp.alignment)
        for label in settings.pop("runs", None) or []:
            folder = exp.output / "diagnostics" / label
            if _alignment_done(folder, exp.run_dir(label), settings):
                say(f"gradient alignment of {label}: done before, skipped")
                record(exp, "skip-alignment", label)
                diagnostics += [folder / "alignment.json", folder / "alignment.png"]
                continue
            say(f"gradient alignment of {label}")
            result = diagnose.alignment_for_run(exp.run_dir(label), **settings)
            result["settings"] = settings
            diagnostics += diagnose.write_alignment(result, folder, label)
            record(exp, "alignment", label)
    written = []
    if board:
        say("stage leaderboard")
        written = write_leaderboard(exp.output, [exp])
    # what was asked, kept beside what it produced
    copy_of_source = exp.output / ("experiment.yaml" if board else f"experiment.{exp.name}.yaml")
    if not copy_of_source.is_file() or copy_of_source.read_text() != exp.source.read_text():
        copy_of_source.write_text(exp.source.read_text())
    say(f"experiment {exp.name} done in {time.time() - started:.0f} s")
    if written:
        say(f"leaderboard: {written[0]}")
    for path in written[1:] + diagnostics:
        say(f"  {path}")
    return {"leaderboard": written[0] if written else None, "plots": written[1:], "diagnostics": diagnostics}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", metavar="EXPERIMENT.yaml", help="the experiment (see experiments/)")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="experiment folder (default: the file's 'output', else experiments_out/<name>)")
    parser.add_argument("--check", action="store_true", help="only validate the experiment and every run's config")
    parser.add_argument("--verbose", action="store_true", help="stream the training and lm_eval output too")


def run(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.output)
    if args.check:
        say(f"{args.experiment}: {len(exp.runs)} runs, tasks {','.join(exp.tasks)}; OK")
        return 0
    run_experiment(exp, stream=args.verbose)
    return 0
