"""`fmtspec experiment EXPERIMENT.yaml`: train what is missing, score every run with the stock `lm_eval`
command and the `promot_hf` model, write `leaderboard.md`, plots and the diagnostics.

    name: rte_mt5_xxl
    base_model: google/mt5-xxl         # every run starts from it, replacing its config's `model` (a run's
                                       # `model:` wins); a folder is found as written, beside this file
                                       # or in the checkout (models/mini_pretrained/model, the shipped
                                       # miniature base); `tiny:mt5` builds a tiny offline model;
                                       # `pretrain:CONFIG.yaml` the model of that `method: pretrain` run,
                                       # shipped or trained once into $FMTSPEC_CACHE (trainers.pretrain)
    tasks: [fmtspec_rte, fmtspec_suite]  # what lm_eval scores for each run
    checkpoint_tasks: [fmtspec_suite_1shot]  # what it scores on each intermediate checkpoint (default: tasks)
    baseline: pretrained               # the label the leaderboard's deltas are taken against
    lm_eval: {batch_size: 8, limit: null, gen_kwargs: null, device: null, model_args: {}}
    train: {tasks: [fmtspec_rte]}       # config keys every trained run shares (< its config < its `train`)
                                       # logging: {tensorboard: true, wandb: {project: P}} there: each run's
                                       # events in runs/<label>/tensorboard (an absolute folder: DIR/<label>),
                                       # each run a W&B run named by its label, grouped by `name`
    runs:
      - {label: pretrained, method: pretrained}
      - {label: finetune, config: configs/promot/mt5_xxl/rte/finetune.yaml, checkpoints: all}
      - {label: promot, method: promot, train: {prompt: {length: 100}}}
      - {label: twice, config: ..., init_from: finetune}     # a chain: starts from finetune's model
      - {label: ft, method: finetune, seeds: [0, 1, 2]}     # runs ft_s0, ft_s1, ft_s2 (config key seed: N);
                                       # an init_from naming seeded runs starts each seed from its own
      - {label: pm, method: promot, stage1_from: pt}        # ProMoT whose stage 1 is prompt_tuning run pt's
                                       # prompt (not trained again)
    alignment: {runs: [finetune], steps: [0, final], layer: "decoder:-1", batches: 4, batch_size: 8}
    launcher: scripts/train_single_node.sh --num_gpus 8   # default: python -m fmtspec train; on GPUs
                                       # scripts/train_single_node.sh (DeepSpeed, one process per GPU)
    jobs: 2                            # runs trained at once, each on cores/jobs CPU threads (default 1);
                                       # on the CPU, lm_eval scores in as many worker processes
    gpus: auto                         # auto (default: the GPUs CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`,
                                       # shows; none on a CPU machine), N (the first N of them; 0: none)
                                       # or [0, 1, ...] (those GPUs); with G of them each run trains on
                                       # G/jobs, and lm_eval scores one worker per GPU or data-parallel

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

GPUs (the rule, in full, above `visible_gpus`): with `jobs: 1` every run trains on all the experiment's GPUs
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
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmtspec import diagnose
from fmtspec.core.errors import FmtspecError, did_you_mean

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = "pretrained"  # the method of a run that is only scored
TINY_PREFIX = "tiny:"  # base_model: tiny:<kind> builds fmtspec.tiny_models' model into the experiment folder
PRETRAIN_PREFIX = "pretrain:"  # base_model: pretrain:<config> pretrains (once, cached) a base from scratch

TOP_KEYS = ("name", "output", "base_model", "tasks", "checkpoint_tasks", "baseline", "lm_eval", "train", "runs",
            "alignment", "launcher", "jobs", "gpus")
RUN_KEYS = ("label", "method", "config", "model", "train", "init_from", "stage1_from", "checkpoints", "seeds")
RUN_LINKS = ("init_from", "stage1_from")  # run keys that name an earlier run
LM_EVAL_KEYS = ("batch_size", "limit", "gen_kwargs", "device", "model_args")
ALIGNMENT_KEYS = ("runs", "steps", "layer", "task", "batches", "batch_size", "seed")


@dataclass
class RunSpec:
    label: str
    method: str  # "pretrained" or a trainer method (resolved from the config when only `config` is given)
    model: str | None  # what a pretrained run scores / what a trained run starts from
    raw_config: dict | None  # the merged training config (None for pretrained runs)
    init_from: str | None
    checkpoints: str  # "final" | "all"
    stage1_from: str | None = None


@dataclass
class Experiment:
    name: str
    source: Path
    output: Path
    base_model: str
    tasks: list[str]
    checkpoint_tasks: list[str]
    baseline: str
    lm_eval: dict
    runs: list[RunSpec]
    alignment: dict | None = None
    launcher: list[str] | None = None  # the command that trains, before CONFIG.yaml (default: fmtspec train)
    jobs: int = 1  # runs trained at once (on the CPU: and lm_eval workers scoring)
    gpus: str | int | list = "auto"  # `gpus:` as written: "auto", a count, or a list of device numbers (strings)
    devices: list[str] | None = None  # the GPUs of this invocation, once found (experiment_gpus)
    env: dict = field(default_factory=dict)  # extra environment of every subprocess (the demo's data folders)
    bases: dict = field(default_factory=dict)  # pretrain:<config> -> its model folder, once found
    log: list[dict] = field(default_factory=list)  # actions of this invocation

    def run(self, label: str) -> RunSpec:
        return next(r for r in self.runs if r.label == label)

    def run_dir(self, label: str) -> Path:
        return self.output / "runs" / label


# ---------------------------------------------------------------------------------------------------
# Reading and validating the experiment file


def _check_keys(mapping, allowed, where: str, source: Path) -> None:
    if not isinstance(mapping, dict):
        raise FmtspecError(f"{source}: '{where or 'the file'}' must be a mapping of {', '.join(allowed)}")
    for key in mapping:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else str(key)
            raise FmtspecError(f"{source}: unknown key '{dotted}'{did_you_mean(key, allowed)}")


def _task_list(value, where: str, source: Path) -> list[str]:
    from harness_tasks.catalog import ALL_TASKS, GROUPS

    if isinstance(value, str):
        value = [t for t in value.split(",") if t.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise FmtspecError(f"{source}: '{where}' must be a non-empty list of lm-eval task or group names")
    known = list(ALL_TASKS) + list(GROUPS)
    for task in value:  # other lm-eval tasks pass through; a misspelt fmtspec task does not
        if task.startswith("fmtspec_") and task not in known:
            raise FmtspecError(f"{source}: unknown task '{task}' in '{where}'{did_you_mean(task, known)}")
    return [t.strip() for t in value]


def _candidates(path: str, source: Path) -> list[Path]:
    """Where a relative path of an experiment file is looked for: as written, beside the file, in the checkout."""
    return [Path(path)] if Path(path).is_absolute() else [Path.cwd() / path, source.parent / path, REPO / path]


def _find_config(path: str, source: Path) -> Path:
    """A run's `config:` (or a launcher script), found in `_candidates` order."""
    candidates = _candidates(path, source)
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.abspath(candidate))  # not resolve(): a venv's python is a symlink
    looked = ", ".join(str(c.parent) for c in candidates)
    raise FmtspecError(f"{source}: file not found: {path} (looked in {looked})")


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FmtspecError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return data if data is not None else {}


def load_experiment(path: str | Path, output: str | Path | None = None) -> Experiment:
    """Read and check the whole experiment (every run's training config too) before any work."""
    from trainers import run_logs
    from trainers.config import load_config, merge
    from trainers.methods import METHODS

    source = Path(path)
    if not source.is_file():
        raise FmtspecError(f"experiment file not found: {source}")
    data = _read_yaml(source)
    _check_keys(data, TOP_KEYS, "", source)
    for key in ("name", "runs"):
        if not data.get(key):
            raise FmtspecError(f"{source}: '{key}' must be set")
    name = str(data["name"])
    out = Path(output or data.get("output") or Path("experiments_out") / name).resolve()
    base_model = data.get("base_model")
    tasks = _task_list(data.get("tasks"), "tasks", source)
    checkpoint_tasks = _task_list(data.get("checkpoint_tasks") or tasks, "checkpoint_tasks", source)
    lm_eval = {"batch_size": 8, "limit": None, "gen_kwargs": None, "device": None, "model_args": {}}
    _check_keys(data.get("lm_eval") or {}, LM_EVAL_KEYS, "lm_eval", source)
    lm_eval.update(data.get("lm_eval") or {})
    _check_lm_eval(lm_eval, source)
    shared = data.get("train") or {}
    if not isinstance(shared, dict):
        raise FmtspecError(f"{source}: 'train' must be a mapping of training config keys")
    if not isinstance(data["runs"], list):
        raise FmtspecError(f"{source}: 'runs' must be a list of {{label, method or config, ...}}")
    base_model = _locate_model(base_model, source, "base_model") if base_model else base_model

    runs: list[RunSpec] = []
    labels: list[str] = []
    for i, item in _expand_seeds(data["runs"], source):
        where = f"runs[{i}]"
        label = item.get("label")
        if not label or not isinstance(label, str) or "/" in label or label.startswith("."):
            raise FmtspecError(f"{source}: {where} needs a 'label' (a folder name, no '/')")
        if label in labels:
            raise FmtspecError(f"{source}: two runs have the label '{label}'")
        labels.append(label)
        where = f"run '{label}'"
        checkpoints = item.get("checkpoints", "final")
        if checkpoints not in ("final", "all"):
            raise FmtspecError(f"{source}: {where}: checkpoints is {checkpoints!r}; choose final or all")
        method = item.get("method")
        model = _locate_model(item["model"], source, f"{where}: model") if item.get("model") else base_model
        if method == PRETRAINED:
            for key in ("config", "train", *RUN_LINKS):
                if key in item:
                    raise FmtspecError(f"{source}: {where}: a pretrained run is only scored; remove '{key}'")
            if not model:
                raise FmtspecError(f"{source}: {where}: set 'model' or the experiment's 'base_model'")
            if checkpoints == "all":
                raise FmtspecError(f"{source}: {where}: a pretrained run has no checkpoints; remove 'checkpoints'")
            runs.append(RunSpec(label, PRETRAINED, str(model), None, None, "final"))
            continue
        if method is not None and method not in METHODS:
            raise FmtspecError(f"{source}: {where}: unknown method '{method}'"
                               f"{did_you_mean(method, (PRETRAINED, *METHODS))}; "
                               f"choose {PRETRAINED} or {', '.join(METHODS)}")
        if method is None and "config" not in item:
            raise FmtspecError(f"{source}: {where} needs 'method' or 'config'")
        raw = copy.deepcopy(shared)
        if "config" in item:
            raw = merge(raw, _read_yaml(_find_config(str(item["config"]), source)))
        if not isinstance(item.get("train", {}), dict):
            raise FmtspecError(f"{source}: {where}: 'train' must be a mapping of training config keys")
        raw = merge(raw, item.get("train") or {})
        _run_logging(raw, label, name)
        if method is not None:
            raw["method"] = method
        if model:
            raw["model"] = str(model)
        parent = item.get("init_from")
        if parent is not None:
            if parent not in labels[:-1]:
                known = [r.label for r in runs if r.method != PRETRAINED]
                raise FmtspecError(f"{source}: {where}: init_from '{parent}' is not the label of an earlier "
                                   f"trained run{did_you_mean(parent, known)}")
            if next(r for r in runs if r.label == parent).method == PRETRAINED:
                raise FmtspecError(f"{source}: {where}: init_from '{parent}' is a pretrained run; "
                                   "start from base_model instead")
            raw["init_from"] = str(out / "runs" / parent)
        stage1 = item.get("stage1_from")
        if stage1 is not None:
            if stage1 not in labels[:-1] or next(r for r in runs if r.label == stage1).method != "prompt_tuning":
                known = [r.label for r in runs if r.method == "prompt_tuning"]
                raise FmtspecError(f"{source}: {where}: stage1_from '{stage1}' is not the label of an earlier "
                                   f"prompt_tuning run{did_you_mean(stage1, known)}")
            raw["stage1_from"] = str(out / "runs" / stage1)
        try:  # a tiny: or pretrain: base is checked above and resolved when the run starts
            config = load_config(None, raw=raw, model_prefixes=(TINY_PREFIX, PRETRAIN_PREFIX))
            run_logs.check(config)  # a configured writer that is not installed: before any run trains
        except FmtspecError as exc:
            raise FmtspecError(f"{source}: {where}: {exc}") from None
        runs.append(RunSpec(label, config["method"], raw.get("model"), raw, parent, checkpoints, stage1))

    baseline = data.get("baseline", PRETRAINED)
    if baseline not in labels:
        raise FmtspecError(f"{source}: baseline '{baseline}' is not a run label{did_you_mean(baseline, labels)}")
    if not base_model and any(r.method == PRETRAINED for r in runs):
        raise FmtspecError(f"{source}: 'base_model' must be set")
    alignment = data.get("alignment")
    if alignment is not None:
        _check_keys(alignment, ALIGNMENT_KEYS, "alignment", source)
        for label in alignment.get("runs") or []:
            if label not in labels or next(r for r in runs if r.label == label).method == PRETRAINED:
                raise FmtspecError(f"{source}: alignment.runs: '{label}' is not a trained run"
                                   f"{did_you_mean(label, labels)}")
        for key, low in (("batches", 1), ("batch_size", 2), ("seed", 0)):  # fmtspec.diagnose.alignment_for_run's
            value = alignment.get(key, low)
            if not _is_int(value) or value < low:
                raise FmtspecError(f"{source}: 'alignment.{key}' must be an integer >= {low}, got {value!r}")
    jobs = data.get("jobs", 1)
    if not _is_int(jobs) or jobs < 1:
        raise FmtspecError(f"{source}: 'jobs' must be an integer >= 1, got {jobs!r}")
    return Experiment(name, source.resolve(), out, str(base_model) if base_model else "", tasks, checkpoint_tasks,
                      baseline, lm_eval, runs, alignment, _launcher(data.get("launcher"), source), jobs,
                      gpus=_gpus_setting(data.get("gpus", "auto"), source))


def _gpus_setting(value, source: Path):
    """`gpus:` as Experiment.gpus: "auto" (also null), a count >= 0, or a list of distinct device numbers
    (kept as the strings CUDA_VISIBLE_DEVICES takes). What the machine has is checked when the work starts."""
    if value is None or value == "auto":
        return "auto"
    if _is_int(value) and value >= 0:
        return value
    if (isinstance(value, list) and value and all(_is_int(v) and v >= 0 for v in value)
            and len(set(value)) == len(value)):
        return [str(v) for v in value]
    raise FmtspecError(f"{source}: 'gpus' must be auto, a number of GPUs (0: none) or a list of distinct GPU "
                       f"numbers such as [0, 1], got {value!r}")


def _run_logging(raw: dict, label: str, experiment: str) -> None:
    """Each run's `logging` (trainers/run_logs.py), from the experiment's `train:` like any shared key: a relative
    `tensorboard` folder is inside each run folder already (`true`: runs/<label>/tensorboard); an absolute one
    gets one subfolder per run, DIR/<label>, so that `tensorboard --logdir DIR` shows every run apart. With W&B
    (`wandb.project`), each run is its own W&B run, named by its label and grouped by the experiment's name
    (unless the run's config names them)."""
    section = raw.get("logging")
    if not isinstance(section, dict):
        return  # nothing to do, or not a mapping: load_config says so
    folder = section.get("tensorboard")
    if isinstance(folder, str) and folder.strip() and Path(folder).expanduser().is_absolute():
        section["tensorboard"] = str(Path(folder).expanduser() / label)
    wandb = section.get("wandb")
    if isinstance(wandb, dict) and wandb.get("project"):
        wandb["name"] = wandb.get("name") or label
        wandb["group"] = wandb.get("group") or experiment


def _expand_seeds(items: list, source: Path):
    """(index, run) of every run, a run with `seeds: [0, 1, 2]` as one run per seed: label `<label>_s<seed>`,
    config key `seed` set; an `init_from` (`stage1_from`) naming such a run takes each seed's own run."""
    seeded: set[str] = set()
    for i, item in enumerate(items):
        where = f"runs[{i}]"
        _check_keys(item, RUN_KEYS, where, source)
        if "seeds" not in item:
            for key in RUN_LINKS:
                if item.get(key) in seeded:
                    raise FmtspecError(f"{source}: {where}: {key} '{item[key]}' has seeds; give this run the same "
                                       f"seeds, or name one seed's run (e.g. '{item[key]}_s0')")
            yield i, item
            continue
        label, seeds = item.get("label"), item["seeds"]
        if not label or not isinstance(label, str):
            raise FmtspecError(f"{source}: {where} needs a 'label' (a folder name, no '/')")
        if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise FmtspecError(f"{source}: {where}: seeds must be a list of distinct integers >= 0, e.g. [0, 1, 2]")
        if item.get("method") == PRETRAINED:
            raise FmtspecError(f"{source}: {where}: a pretrained run is only scored; remove 'seeds'")
        if not isinstance(item.get("train", {}), dict):
            raise FmtspecError(f"{source}: {where}: 'train' must be a mapping of training config keys")
        seeded.add(label)
        for seed in seeds:
            run = {k: v for k, v in item.items() if k != "seeds"}
            run["label"] = f"{label}_s{seed}"
            run["train"] = {**(item.get("train") or {}), "seed": seed}
            for key in RUN_LINKS:
                if item.get(key) in seeded:
                    run[key] = f"{item[key]}_s{seed}"
            yield i, run


def _locate_model(model, source: Path, key: str = "base_model"):
    """A `base_model` / run `model` as the runs will use it: `pretrain:CONFIG.yaml` with the config found (as a
    run's `config:`) and checked as a pretraining run (trained, or found shipped or cached, only when a run
    needs it: `resolve_model`); a local model folder as an absolute path; `tiny:<kind>` (a known kind) and hub
    ids (valid ones: the hub is not asked) as written."""
    from trainers.config import load_config

    if not isinstance(model, str):
        raise FmtspecError(f"{source}: {key} must be a hub id, a model folder, {TINY_PREFIX}<kind> or "
                           f"{PRETRAIN_PREFIX}CONFIG.yaml, got {model!r}")
    if model.startswith(TINY_PREFIX):
        from fmtspec.tiny_models import KINDS

        if model[len(TINY_PREFIX):] not in KINDS:
            kinds = [TINY_PREFIX + k for k in KINDS]
            raise FmtspecError(f"{source}: {key}: unknown tiny model '{model}'{did_you_mean(model, kinds)}; choose "
                               f"{', '.join(kinds)}")
        return model
    if not model.startswith(PRETRAIN_PREFIX):
        return _find_model_folder(model, source, key)
    path = _find_config(model[len(PRETRAIN_PREFIX):], source)
    try:
        config = load_config(path)
    except FmtspecError as exc:
        raise FmtspecError(f"{source}: {model}: {exc}") from None
    if config["method"] != "pretrain":
        raise FmtspecError(f"{source}: {model} is a method: {config['method']} config; a pretrained base needs "
                           "method: pretrain")
    return PRETRAIN_PREFIX + str(path)


def _find_model_folder(model: str, source: Path, key: str = "base_model") -> str:
    """A model folder found in `_candidates` order (the checkout holds the shipped `models/mini_pretrained/model`),
    as an absolute path; anything else is a hub id, passed on as is. A folder needs a config.json; a value
    that looks like a path but is found nowhere, or is no valid hub id, is an error."""
    from trainers.config import model_problem

    path = os.path.expanduser(model)
    folder = next((c for c in _candidates(path, source) if c.is_dir()), None)
    bases = [] if os.path.isabs(path) else [Path.cwd(), source.parent, REPO]  # those of _candidates
    looked = f" (looked in {', '.join(dict.fromkeys(map(str, bases)))})" if bases else ""
    problem = model_problem(str(folder or model), key, bases=bases or None, looked=looked)
    if problem:
        raise FmtspecError(f"{source}: {problem}")
    return model if folder is None else os.path.abspath(folder)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_lm_eval(settings: dict, source: Path) -> None:
    """`lm_eval:` values as lm_eval's command line takes them, checked before any run trains."""
    import re

    size = settings["batch_size"]
    if size is not None and not (_is_int(size) and size >= 1
                                 or isinstance(size, str) and re.fullmatch(r"auto(:[1-9][0-9]*)?", size)):
        raise FmtspecError(f"{source}: 'lm_eval.batch_size' must be an integer >= 1, auto or auto:N, got {size!r}")
    limit = settings["limit"]
    if limit is not None and not (_is_int(limit) and limit >= 1
                                  or isinstance(limit, float) and 0 < limit < 1):
        raise FmtspecError(f"{source}: 'lm_eval.limit' must be an integer >= 1 (documents per task), a fraction "
                           f"between 0 and 1 (of each task's documents) or null (all), got {limit!r}")
    for key, example in (("gen_kwargs", "max_gen_toks=16"), ("device", "cuda:0")):
        if settings[key] is not None and not (isinstance(settings[key], str) and settings[key].strip()):
            raise FmtspecError(f"{source}: 'lm_eval.{key}' must be a string such as '{example}' or null, "
                               f"got {settings[key]!r}")
    if not isinstance(settings["model_args"], dict):
        raise FmtspecError(f"{source}: 'lm_eval.model_args' must be a mapping (e.g. {{dtype: bfloat16}})")


def _launcher(value, source: Path) -> list[str] | None:
    """`launcher:` as argv; a script path is found like a run's config (as written, beside the file, in the checkout)."""
    import shlex

    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FmtspecError(f"{source}: 'launcher' must be a command, e.g. scripts/train_single_node.sh --num_gpus 8")
    import shutil

    argv = shlex.split(value)
    if "/" in argv[0]:
        argv[0] = str(_find_config(os.path.expanduser(argv[0]), source))
        if not os.access(argv[0], os.X_OK):
            raise FmtspecError(f"{source}: launcher {argv[0]} is not executable (chmod +x it, or name its "
                               f"interpreter first, e.g. bash {argv[0]})")
    elif shutil.which(argv[0]) is None:
        raise FmtspecError(f"{source}: launcher '{argv[0]}' is not a command on PATH (nor a file: write a script "
                           f"as ./{argv[0]} or with its folder)")
    return argv


# ---------------------------------------------------------------------------------------------------
# Running: stages, subprocesses, skipping


def say(message: str) -> None:
    print(f"[fmtspec] {message}", flush=True)


def offline_env(exp: Experiment | None = None, share_cores: bool = True) -> dict:
    """The environment of the training and lm_eval subprocesses: the caller's, quiet tokenizers, the
    experiment's own variables, and with `jobs` > 1 an equal share of the CPU threads for each."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    if exp is not None:
        env.update(exp.env)
        if share_cores and exp.jobs > 1 and "OMP_NUM_THREADS" not in env:  # threads beyond the cores only slow torch down
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // exp.jobs))
    return env


# ---- GPUs: which devices each training run and each lm_eval worker gets ------------------------------------
#
# Training: on G GPUs, min(jobs, G) runs train at once, each on G // that many GPUs (jobs: 1, the default: every
# run on all G) through the DeepSpeed launcher, scripts/train_single_node.sh unless `launcher:` names another,
# with CUDA_VISIBLE_DEVICES set to the run's GPUs (and, for runs side by side, their own --master_port). With the
# default launcher a run takes as many of its GPUs as its batch allows (batch_size a multiple of micro_batch_size
# x processes: a config without micro_batch_size trains on one GPU; fitting_devices).
# Scoring: P lm_eval command lines to run on G GPUs go to W = min(P, G) workers of k = G // W GPUs each: while
# there are at least as many checkpoints to score as GPUs, one worker per GPU (CUDA_VISIBLE_DEVICES=<i>,
# --device cuda:0; each job loads one copy of its model on one GPU and nothing is shared); with fewer, the GPUs
# that would idle are used data-parallel: each worker runs its jobs under `accelerate launch` in k processes
# (one per GPU, every request split k ways). The time to score is about ceil(P / W) x (load + eval / k): with
# P >= G that is smallest at k = 1 (data-parallelism only adds each process's model load and the gathers),
# with P < G at k = G // P (the load is paid once per GPU anyway). `lm_eval.device` set: as written, `jobs`
# workers seeing all the GPUs; `lm_eval.model_args.parallelize`: min(jobs, P, G) workers, each splitting its
# model over G // that many GPUs. No GPU (a CPU machine, or `gpus: 0`): `jobs` runs and workers, as always.

SINGLE_NODE = REPO / "scripts" / "train_single_node.sh"
TRAIN_PORT = 29500  # DeepSpeed rendezvous port of the first of the runs trained side by side (+1 for the next)
SCORE_PORT = 29600  # accelerate's port of the first data-parallel lm_eval worker (+1 for the next)


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPUs this machine shows, named as CUDA_VISIBLE_DEVICES names them, without importing torch: the
    entries of CUDA_VISIBLE_DEVICES where it is set (as CUDA reads it: none from an empty or negative entry on),
    else one per GPU line of `nvidia-smi -L` ("0", "1", ...), else none."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = []
        for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    return [str(i) for i in range(_nvidia_smi_count())]


def _nvidia_smi_count() -> int:
    """GPUs `nvidia-smi -L` lists (MIG instances, listed indented under their GPU, are not counted)."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def experiment_gpus(exp: Experiment) -> list[str]:
    """The GPUs of this invocation (found once): `gpus: auto` those the machine shows, `gpus: N` the first N
    of them, `gpus: [...]` those listed, each of which the machine must show; [] on a machine without GPUs."""
    if exp.devices is None:
        shown = visible_gpus()
        how = (f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in os.environ
               else "nvidia-smi -L")
        if exp.gpus == "auto":
            devices = shown
        elif isinstance(exp.gpus, int):
            if exp.gpus > len(shown):
                raise FmtspecError(f"{exp.source}: gpus: {exp.gpus}, but this machine shows {len(shown)} GPU(s) "
                                   f"({how})")
            devices = shown[:exp.gpus]
        else:
            missing = [d for d in exp.gpus if d not in shown]
            if missing:
                raise FmtspecError(f"{exp.source}: gpus: GPU {missing[0]} is not one this machine shows ({how}: "
                                   f"{', '.join(shown) or 'none'})")
            devices = list(exp.gpus)
        exp.devices = devices
    return exp.devices


def device_env(exp: Experiment, devices: list[str]) -> dict:
    """CUDA_VISIBLE_DEVICES of a subprocess on `devices`; with no GPU nothing (the environment as before),
    except that `gpus: 0` hides the machine's GPUs."""
    if devices:
        return {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
    return {"CUDA_VISIBLE_DEVICES": ""} if exp.gpus == 0 else {}


def train_slots(exp: Experiment) -> list[list[str]]:
    """The GPUs of each of the runs trained at once: min(jobs, G) slots of G // slots GPUs; without GPUs,
    `jobs` slots of none."""
    devices = experiment_gpus(exp)
    if not devices:
        return [[] for _ in range(exp.jobs)]
    slots = min(exp.jobs, len(devices))
    size = len(devices) // slots
    return [devices[i * size:(i + 1) * size] for i in range(slots)]


def fitting_devices(devices: list[str], config: dict) -> list[str]:
    """The most of `devices` (the first ones) that a run of `config` trains on: DeepSpeed needs batch_size to
    be a multiple of micro_batch_size (default: batch_size) x processes, and the global batch stays the
    config's."""
    micro = config.get("micro_batch_size") or config["batch_size"]
    usable = [k for k in range(1, len(devices) + 1) if config["batch_size"] % (micro * k) == 0]
    return devices[:max(usable, default=1)]


def train_command(exp: Experiment, devices: list[str], port: int | None = None) -> tuple[list[str], dict]:
    """(launcher argv before CONFIG.yaml, environment) of one run on `devices`: without GPUs `launcher:` or
    `python -m fmtspec train` as before; on GPUs `launcher:` or scripts/train_single_node.sh, which starts one
    process per GPU of CUDA_VISIBLE_DEVICES (and gets `--master_port port` when runs train side by side)."""
    env = {**offline_env(exp), **device_env(exp, devices)}
    if not devices:
        return list(exp.launcher or [sys.executable, "-m", "fmtspec", "train"]), env
    launcher = list(exp.launcher or [str(SINGLE_NODE)])
    if any(Path(arg).name == SINGLE_NODE.name for arg in launcher):
        env.setdefault("DEEPSPEED", f"{sys.executable} -m deepspeed.launcher.runner")  # this venv's, PATH or not
        env.setdefault("PYTHON", sys.executable)
        if port is not None and "--master_port" not in launcher:
            launcher += ["--master_port", str(port)]
    return launcher, env


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


_RECORD_LOCK = threading.Lock()


def record(exp: Experiment, action: str, label: str, **extra) -> None:
    """Append what this invocation did to actions.jsonl (tests and users read what was skipped)."""
    entry = {"time": round(time.time(), 3), "action": action, "label": label, **extra}
    with _RECORD_LOCK:
        exp.log.append(entry)
        exp.output.mkdir(parents=True, exist_ok=True)
        with open(exp.output / "actions.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")


def start_logged(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or offline_env(),
                            text=True, errors="replace")


def finish_logged(proc: subprocess.Popen, log: Path, what: str, stream: bool = False) -> None:
    """Copy the output of `proc` into `log` (and the console with `stream`) until it ends; one clear line
    when it failed."""
    tail: list[str] = []
    with open(log, "a") as f:
        for line in proc.stdout:
            f.write(line)
            if stream:
                sys.stderr.write(line)
            if line.strip():
                tail = (tail + [line.strip()])[-40:]
    code = proc.wait()
    if code != 0:
        raise FmtspecError(f"{what} failed (exit {code}): {_error_line(tail)} (full output: {log})")


def run_logged(cmd: list[str], log: Path, what: str, stream: bool = False, env: dict | None = None) -> None:
    """Run `cmd`, its output into `log` (and the console with `stream`); one clear line when it fails."""
    finish_logged(start_logged(cmd, log, env), log, what, stream)


def _error_line(tail: list[str]) -> str:
    """The most telling line of a failed subprocess: our own one-line errors first, else the last line."""
    for prefix in ("fmtspec ", "promot_hf:", "fmtspec:"):
        for line in reversed(tail):
            if line.startswith(prefix):
                return line
    for line in reversed(tail):
        if "Error" in line or "error" in line:
            return line
    return tail[-1] if tail else "(no output)"


def resolve_model(exp: Experiment, model: str | None) -> str | None:
    """The model a run starts from: a hub id or folder as is; `tiny:<kind>` -> the folder of that tiny
    offline model, built into the experiment folder once; `pretrain:<config>` -> the model folder of that
    pretraining run, trained once into the cache."""
    if model and model.startswith(PRETRAIN_PREFIX):
        return pretrained_base(exp, model)
    if not model or not model.startswith(TINY_PREFIX):
        return model
    from fmtspec.tiny_models import KINDS, build_tiny_model

    kind = model[len(TINY_PREFIX):]
    if kind not in KINDS:
        raise FmtspecError(f"unknown tiny model '{model}'; choose {', '.join(TINY_PREFIX + k for k in KINDS)}")
    folder = exp.output / "models" / kind
    if not (folder / "config.json").is_file():
        say(f"building the tiny {kind} model in {folder}")
        build_tiny_model(kind, folder)
    return str(folder)


def pretrained_base(exp: Experiment, model: str) -> str:
    """The model folder of the `pretrain:<config>` base (trainers.pretrain.cached_base: the shipped base, or
    one keyed by the config and the data, so the base is pretrained once for every run and later experiment)."""
    from fmtspec.core.run_folder import model_path, read_manifest
    from trainers.pretrain import find_base

    if model not in exp.bases:
        pending = start_pretraining(exp, model)  # None when the base is shipped or cached
        run_dir = finish_pretraining(exp, pending) if pending else find_base(_base_config(model))
        exp.bases[model] = model_path(run_dir, read_manifest(run_dir))
    return exp.bases[model]


def _base_config(model: str) -> dict:
    from trainers.config import load_config

    return load_config(Path(model[len(PRETRAIN_PREFIX):]))


def start_pretraining(exp: Experiment, model: str) -> tuple | None:
    """Start `fmtspec train CONFIG --cached` in the background unless the base is shipped or cached; hand
    the result to finish_pretraining."""
    from trainers.pretrain import cache_key, cache_root, find_base

    config = _base_config(model)
    found = find_base(config)
    if found is not None:
        say(f"pretrained base: {found}")
        return None
    folder = cache_root() / cache_key(config)
    config_file = model[len(PRETRAIN_PREFIX):]
    log = exp.output / "logs" / "pretrain.log"
    say(f"pretraining the base {config_file} into {folder} (log: {log})")
    proc = start_logged([sys.executable, "-m", "fmtspec", "train", config_file, "--cached"], log,
                        offline_env(exp, share_cores=False))  # one process: every core
    return proc, log, model, folder, time.time()


def finish_pretraining(exp: Experiment, pending: tuple, stream: bool = False) -> Path:
    proc, log, model, folder, started = pending
    finish_logged(proc, log, f"pretraining the base {model[len(PRETRAIN_PREFIX):]}", stream)
    record(exp, "pretrain", model, seconds=round(time.time() - started, 1), run=str(folder))
    say(f"pretrained base: done in {time.time() - started:.0f} s")
    return folder


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


# ---- scoring ----------------------------------------------------------------------------------------


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
        raise FmtspecError(f"{failed.what} failed (exit {code}): {_error_line(tail)} (full output: {failed.log})")


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


def _leaf_tasks(tasks: list[str]) -> list[str]:
    from harness_tasks.catalog import GROUPS

    out = []
    for task in tasks:
        out += _leaf_tasks(GROUPS[task]) if task in GROUPS else [task]
    return out


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
