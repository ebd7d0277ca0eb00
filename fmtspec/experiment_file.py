"""The experiment file of `fmtspec experiment`: its schema (fmtspec.core.schema), and reading it, with every
run's training config, into an `Experiment` before any work starts. A mistake is one line naming the file and
the key.

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
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fmtspec.core.errors import FmtspecError, did_you_mean
from fmtspec.core.schema import Field, check, is_int, merge
from fmtspec.core.schema import defaults as schema_defaults

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = "pretrained"  # the method of a run that is only scored
TINY_PREFIX = "tiny:"  # base_model: tiny:<kind> builds fmtspec.tiny_models' model into the experiment folder
PRETRAIN_PREFIX = "pretrain:"  # base_model: pretrain:<config> pretrains (once, cached) a base from scratch

RUN_LINKS = ("init_from", "stage1_from")  # run keys that name an earlier run


def _lm_eval_batch_size(value) -> bool:
    return is_int(value) and value >= 1 or isinstance(value, str) and re.fullmatch(r"auto(:[1-9][0-9]*)?", value)


def _gpus_ok(value) -> bool:
    return (value == "auto" or is_int(value) and value >= 0
            or isinstance(value, list) and bool(value) and all(is_int(v) and v >= 0 for v in value)
            and len(set(value)) == len(value))


def _nonblank(value) -> bool:
    return bool(value.strip())


# The experiment file (README "Experiments"): its keys, their types and defaults. What a value means beyond
# that (a task name, a model, a run label) is checked by load_experiment.
RUN_SCHEMA = {
    "label": Field(str, rule="a folder name, no '/'"),
    "method": Field(str),
    "config": Field(str, rule="a training config file"),
    "model": Field(str, rule="a hub id, a model folder, tiny:<kind> or pretrain:CONFIG.yaml"),
    "train": Field(dict, {}, rule="a mapping of training config keys"),
    "init_from": Field(str, rule="the label of an earlier run"),
    "stage1_from": Field(str, rule="the label of an earlier prompt_tuning run"),
    "checkpoints": Field(str, "final", ("final", "all"), nullable=False),
    "seeds": Field(list, nullable=False, valid=lambda v: bool(v) and len(set(map(str, v))) == len(v)
                   and all(is_int(s) and s >= 0 for s in v), rule="a list of distinct integers >= 0, e.g. [0, 1, 2]"),
}
EXPERIMENT_SCHEMA = {
    "name": Field((str, int), help="names the output folder (experiments_out/<name>)"),
    "output": Field(str),
    "base_model": Field(str, rule="a hub id, a model folder, tiny:<kind> or pretrain:CONFIG.yaml"),
    "tasks": Field((list, str), rule="a non-empty list of lm-eval task or group names"),
    "checkpoint_tasks": Field((list, str), rule="a non-empty list of lm-eval task or group names"),
    "baseline": Field(str, PRETRAINED),
    "lm_eval": {  # as lm_eval's command line takes them
        "batch_size": Field((int, str), 8, valid=_lm_eval_batch_size, rule="an integer >= 1, auto or auto:N"),
        "limit": Field((int, float), None, valid=lambda v: is_int(v) and v >= 1 or isinstance(v, float) and 0 < v < 1,
                       rule="an integer >= 1 (documents per task), a fraction between 0 and 1 (of each task's "
                            "documents) or null (all)"),
        "gen_kwargs": Field(str, None, valid=_nonblank, rule="a string such as 'max_gen_toks=16' or null"),
        "device": Field(str, None, valid=_nonblank, rule="a string such as 'cuda:0' or null"),
        "model_args": Field(dict, {}, nullable=False, rule="a mapping (e.g. {dtype: bfloat16})"),
    },
    "train": Field(dict, {}, rule="a mapping of training config keys"),
    "runs": Field(list, nullable=False, rule="a list of {label, method or config, ...}"),
    "alignment": {  # fmtspec.diagnose.alignment_for_run's arguments
        "runs": Field(list), "steps": Field((list, str, int)), "layer": Field(str), "task": Field(str),
        "batches": Field(int, 4, min=1, rule="an integer >= 1"),
        "batch_size": Field(int, 8, min=2, rule="an integer >= 2"),
        "seed": Field(int, 0, min=0, rule="an integer >= 0"),
    },
    "launcher": Field(str, valid=_nonblank, rule="a command, e.g. scripts/train_single_node.sh --num_gpus 8"),
    "jobs": Field(int, 1, nullable=False, min=1, rule="an integer >= 1"),
    "gpus": Field((str, int, list), "auto", valid=_gpus_ok,
                  rule="auto, a number of GPUs (0: none) or a list of distinct GPU numbers such as [0, 1]"),
}


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


def _check_keys(mapping, schema: dict, where: str, source: Path) -> None:
    """Keys, types and ranges of one mapping of the file (`where`: its dotted prefix, "" the top), as
    fmtspec.core.schema checks them, each problem one line that starts with the file."""
    if not isinstance(mapping, dict):
        raise FmtspecError(f"{source}: '{where.rstrip('.') or 'the file'}' must be a mapping of {', '.join(schema)}")
    try:
        check(mapping, schema, where, noun="key")
    except FmtspecError as exc:
        raise FmtspecError(f"{source}: {exc}") from None


def task_list(value, where: str, source: Path) -> list[str]:
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
    from trainers.config import load_config
    from trainers.methods import METHODS

    source = Path(path)
    if not source.is_file():
        raise FmtspecError(f"experiment file not found: {source}")
    data = _read_yaml(source)
    if isinstance(data, dict):  # an empty section (`lm_eval:`) is its defaults
        data = {k: v for k, v in data.items() if not (v is None and isinstance(EXPERIMENT_SCHEMA.get(k), dict))}
    _check_keys(data, EXPERIMENT_SCHEMA, "", source)
    for key in ("name", "runs"):
        if not data.get(key):
            raise FmtspecError(f"{source}: '{key}' must be set")
    name = str(data["name"])
    out = Path(output or data.get("output") or Path("experiments_out") / name).resolve()
    base_model = data.get("base_model")
    tasks = task_list(data.get("tasks"), "tasks", source)
    checkpoint_tasks = task_list(data.get("checkpoint_tasks") or tasks, "checkpoint_tasks", source)
    lm_eval = merge(schema_defaults(EXPERIMENT_SCHEMA["lm_eval"]), data.get("lm_eval") or {})
    shared = data.get("train") or {}
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
        checkpoints = item.get("checkpoints") or "final"
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
        for label in alignment.get("runs") or []:
            if label not in labels or next(r for r in runs if r.label == label).method == PRETRAINED:
                raise FmtspecError(f"{source}: alignment.runs: '{label}' is not a trained run"
                                   f"{did_you_mean(label, labels)}")
    jobs = data.get("jobs", 1)
    return Experiment(name, source.resolve(), out, str(base_model) if base_model else "", tasks, checkpoint_tasks,
                      baseline, lm_eval, runs, alignment, _launcher(data.get("launcher"), source), jobs,
                      gpus=_gpus_setting(data.get("gpus")))


def _gpus_setting(value):
    """`gpus:` (checked by the schema) as Experiment.gpus: "auto" (also null), a count >= 0, or a list of distinct
    device numbers (kept as the strings CUDA_VISIBLE_DEVICES takes). What the machine has is checked when the
    work starts."""
    if value is None or value == "auto":
        return "auto"
    return [str(v) for v in value] if isinstance(value, list) else value


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
        _check_keys(item, RUN_SCHEMA, f"{where}.", source)
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


def _launcher(value, source: Path) -> list[str] | None:
    """`launcher:` as argv; a script path is found like a run's config (as written, beside the file, in the checkout)."""
    import shlex

    if value is None:
        return None
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
