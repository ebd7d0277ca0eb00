"""Reading lm-eval results: files, `--output_path` folders, experiment folders, and the run folders
they came from.

lm-eval 0.4.x writes `<output_path>/<model_name_sanitized>/results_<ISO time>.json` (or
`<stem>_<ISO time>.json` when `--output_path` ends in `.json`). Each file is a JSON object with
`results` ({task: {"metric,filter": value, "metric_stderr,filter": se, "alias": ..}}), `versions`,
`n-shot` ({task or group: shots}, a group's where its tasks agree), `configs` ({task: its config, with
`num_fewshot` and `output_type`}), `higher_is_better`, `n-samples` ({task: {"original", "effective"}}), and,
from `simple_evaluate`, `config` (model, model_args, limit, ...; `promot_hf` adds `config.promot_hf`),
`lm_eval_version` and `date` (a UNIX time). Group entries (`groups`, `group_subtasks`) sit beside the tasks
in `results`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fmtspec.core.errors import FmtspecError, read_json
from fmtspec.core.run_folder import is_run_folder, read_manifest, run_of
from harness_tasks.catalog import GROUPS, parse_task_name
from harness_tasks.metrics import metric_range

LM_EVAL_KEYS = ("versions", "n-shot", "configs", "config")
RESULTS_GLOB = "results_*.json"


@dataclass
class Checkpoint:
    """One column group of the board: every task result of one model, merged from its results files."""

    label: str
    files: list[Path]
    tasks: dict[str, dict]  # task name -> lm-eval's metric dict
    info: dict  # newest file's top-level keys other than per-task data (config, lm_eval_version, date..)
    groups: dict[str, dict] = field(default_factory=dict)  # group name -> its aggregate metrics
    shots: dict[str, int] = field(default_factory=dict)  # task or group -> the shot count its file records
    truncated: dict[str, int] = field(default_factory=dict)  # task -> requests promot_hf truncated the context of
    requests: dict[str, int] = field(default_factory=dict)  # task -> its request count, where the file tells
    run_dir: Path | None = None
    run_checkpoint: str | None = None  # e.g. "step-500" when a run's checkpoints/step-500 was evaluated
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.info.get("config") or {}


def load_results_file(path: Path) -> dict:
    """The parsed file, or one clear error when it is not an lm-eval results file."""
    data = read_json(path, "an lm-eval results file")
    if not isinstance(data, dict):
        raise FmtspecError(f"{path} is not an lm-eval results file: a JSON {type(data).__name__}, not an object")
    results = data.get("results")
    if results is None:
        raise FmtspecError(f"{path} is not an lm-eval results file: it has no 'results' key")
    if not isinstance(results, dict) or not results or not all(isinstance(v, dict) for v in results.values()):
        raise FmtspecError(f"{path} is not an lm-eval results file: 'results' is not a {{task: {{metric: value}}}} map")
    # lm-eval writes every score as "metric,filter" beside versions/n-shot/config; ask for one or the other
    scored = any("," in key for metrics in results.values() for key in metrics)
    if not scored and not any(key in data for key in LM_EVAL_KEYS):
        raise FmtspecError(f"{path} is not an lm-eval results file: no 'metric,filter' scores and none of "
                           f"lm-eval's keys ({', '.join(LM_EVAL_KEYS)})")
    check_ranges(path, data)
    return data


def _range(name: str, metric: str) -> tuple[float, float] | None:
    """The range of an fmtspec task's or group's metric (harness_tasks/metrics.py); None for other tasks'."""
    try:
        keys = [parse_task_name(task)[0].key for task in GROUPS.get(name, [name])]
    except KeyError:
        return None
    return next((r for key in keys if (r := metric_range(key, metric)) is not None), None)


def check_ranges(path: Path, data: dict) -> None:
    """Refuse a value of an fmtspec task's metric outside its range (lm-eval's fractions 0..1, BLEU and
    fmtspec's score/norm_avg 0..100) and a negative standard error: the board scales fractions x100, so a
    file already on 0-100 would show 5500.00. Values that are not numbers count as missing, as the board
    shows them."""
    for name, metrics in data["results"].items():
        for key, value in metrics.items():
            metric = key.partition(",")[0]
            bounds = _range(name, metric.removesuffix("_stderr"))
            number = _number(value)
            if bounds is None or number is None:
                continue
            if metric.endswith("_stderr"):
                if number < 0:
                    raise FmtspecError(f"{path}: task {name}: {key} = {value} is negative (a standard error is >= 0)")
            elif not bounds[0] - 1e-9 <= number <= bounds[1] + 1e-9:
                why = ("lm-eval reports it as a fraction, which the board shows x100" if bounds[1] == 1.0
                       else f"{metric} is on 0-100")
                raise FmtspecError(f"{path}: task {name}: {key} = {value} is outside {bounds[0]:g}..{bounds[1]:g} "
                                   f"({why})")


def group_names(data: dict) -> set[str]:
    """Group aggregates listed beside the tasks in `results` (and fmtspec's groups in hand-made files)."""
    return set(data.get("groups") or {}) | set(data.get("group_subtasks") or {}) | set(GROUPS)


def task_entries(data: dict) -> dict[str, dict]:
    """The per-task entries of a results file, without group aggregates."""
    groups = group_names(data)
    return {name: metrics for name, metrics in data["results"].items() if name not in groups}


def recorded_shots(data: dict, name: str) -> int | None:
    """The shot count a results file records for a task or group: `n-shot` (lm-eval gives a group one
    where its tasks agree), else the task's config `num_fewshot`; None where it records neither."""
    config = (data.get("configs") or {}).get(name) or {}
    for value in ((data.get("n-shot") or {}).get(name), config.get("num_fewshot")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def request_count(data: dict, task: str) -> int | None:
    """How many requests a task made, where the file tells: a generation task makes one per document
    scored (`n-samples` effective); a multiple-choice task one per choice, which the file does not count."""
    samples = (data.get("n-samples") or {}).get(task)
    output_type = ((data.get("configs") or {}).get(task) or {}).get("output_type")
    if output_type != "generate_until" or not isinstance(samples, dict):
        return None
    return _count(samples.get("effective"))


def truncated_requests(data: dict) -> dict[str, int]:
    """promot_hf's count, per task, of requests whose context it truncated to fit the model
    (`config.promot_hf.truncated_requests`); {} for other models' and older files."""
    counts = ((data.get("config") or {}).get("promot_hf") or {}).get("truncated_requests")
    if not isinstance(counts, dict):
        return {}
    return {task: n for task, n in ((task, _count(n)) for task, n in counts.items()) if n is not None}


def metric_value(metrics: dict, metric: str) -> tuple[float | None, float | None, str | None]:
    """(value, stderr, "metric,filter" key) of `metric` under whatever filter the task used.

    A value that is not a finite number counts as missing; stderr is None where lm-eval wrote "N/A".
    """
    for key, value in metrics.items():
        name, sep, filter_name = key.partition(",")
        if name != metric or not sep:
            continue
        se = metrics.get(f"{metric}_stderr,{filter_name}")
        return _number(value), _number(se), key
    if metric in metrics:  # a hand-written file without filter suffixes
        return _number(metrics[metric]), _number(metrics.get(f"{metric}_stderr")), metric
    return None, None, None


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# From command-line PATHs to checkpoints


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """`LABEL=PATH` or `PATH` (a PATH that exists as written wins over a split at '=')."""
    label, sep, path = spec.partition("=")
    if not sep or Path(spec).exists():
        return None, Path(spec)
    if not label.strip():
        raise FmtspecError(f"empty label in {spec!r}: write LABEL=PATH or just PATH")
    if not path:
        raise FmtspecError(f"no PATH in {spec!r}: write LABEL=PATH")
    return label.strip(), Path(path)


def load_checkpoints(specs: list[str]) -> list[Checkpoint]:
    """Every checkpoint the PATHs name, labelled, in command-line order; labels must be distinct."""
    checkpoints: list[Checkpoint] = []
    origin: dict[str, str] = {}
    for spec in specs:
        label, path = parse_spec(spec)
        found = checkpoints_at(path, label)
        for checkpoint in found:
            if checkpoint.label in origin:
                raise FmtspecError(
                    f"two PATHs have the label {checkpoint.label!r} ({origin[checkpoint.label]} and {path}): "
                    "name them with distinct LABEL=PATH")
            origin[checkpoint.label] = str(path)
        checkpoints.extend(found)
    return checkpoints


def checkpoints_at(path: Path, label: str | None) -> list[Checkpoint]:
    """A results file, an `--output_path` folder (one model) or an experiment folder (many)."""
    if not path.exists():
        raise FmtspecError(f"{path}: no such file or folder")
    if path.is_file():
        groups = {path.parent: [path]}
    else:
        groups = {}
        for file in sorted(path.rglob(RESULTS_GLOB)):
            groups.setdefault(file.parent, []).append(file)
        if not groups:
            raise FmtspecError(f"no lm-eval results files ({RESULTS_GLOB}) under {path}")
    if label is not None and len(groups) > 1:
        names = ", ".join(str(folder.relative_to(path)) for folder in groups)
        raise FmtspecError(
            f"{path} holds the results of {len(groups)} models ({names}): give each its own LABEL=PATH, "
            "or pass the folder without a label")
    checkpoints = [_merge(files) for files in groups.values()]
    for checkpoint, folder in zip(checkpoints, groups):
        checkpoint.run_dir, checkpoint.run_checkpoint = _run_dir(folder, checkpoint.config)
    if label is not None:
        checkpoints[0].label = label
        return checkpoints
    for checkpoint, derived in zip(checkpoints, _derived_labels(path, list(groups), checkpoints)):
        checkpoint.label = derived
    return checkpoints


def _merge(files: list[Path]) -> Checkpoint:
    """One model's results files, newest first per task: lm-eval names them by time, so they sort.

    Older files evaluated with other model_args are someone else's model in the same folder: skipped.
    """
    loaded = [(file, load_results_file(file)) for file in sorted(files, key=lambda f: _timestamp(f.name))]
    newest_file, newest = loaded[-1]
    model_args = (newest.get("config") or {}).get("model_args")
    checkpoint = Checkpoint(label="", files=[], tasks={}, info={})
    for file, data in reversed(loaded):
        if (data.get("config") or {}).get("model_args") != model_args:
            checkpoint.notes.append(f"skipped {file} (other model_args than the newest results in its folder)")
            continue
        fresh = {name: m for name, m in task_entries(data).items() if name not in checkpoint.tasks}
        fresh_groups = {name: data["results"][name] for name in group_names(data) & set(data["results"])
                        if name not in checkpoint.groups}
        checkpoint.groups.update(fresh_groups)
        # what a file says of a task (shots, truncation, requests) goes with the result that file supplied
        checkpoint.shots.update({name: n for name in [*fresh, *fresh_groups]
                                 if (n := recorded_shots(data, name)) is not None})
        truncated = truncated_requests(data)
        checkpoint.truncated.update({name: truncated[name] for name in fresh if name in truncated})
        checkpoint.requests.update({name: n for name in fresh if (n := request_count(data, name)) is not None})
        if fresh or file == newest_file:
            checkpoint.tasks.update(fresh)
            checkpoint.files.append(file)
    checkpoint.info = {key: value for key, value in newest.items() if key not in ("results", "configs", "samples")}
    return checkpoint


def _timestamp(name: str) -> str:
    """`results_2024-05-01T10-00-00.123.json` -> the time part (lm-eval's own rule: after the last '_')."""
    return name[name.rfind("_") + 1:].removesuffix(".json")


def _run_dir(folder: Path, config: dict) -> tuple[Path | None, str | None]:
    """The fmtspec run folder these results evaluate, and which of its checkpoints: from model_args
    (`pretrained=RUN_DIR`, `RUN_DIR/model`, `RUN_DIR/checkpoints/step-N`), else around the results."""
    for value in _model_arg_values(config.get("model_args")):
        run_dir, part = run_of(value) if value else (None, None)
        if run_dir is not None:
            return run_dir, part
    # RUN_DIR/<output_path>/<model>/results_*.json: the run folder is at most three levels up
    for ancestor in (folder, *folder.parents[:3]):
        if is_run_folder(ancestor):
            return ancestor, None
    return None, None


def _model_arg_values(model_args) -> list[str]:
    if isinstance(model_args, dict):
        return [str(v) for v in model_args.values()]
    if isinstance(model_args, str):
        return [part.partition("=")[2] for part in model_args.split(",") if "=" in part]
    return []


def _derived_labels(given: Path, folders: list[Path], checkpoints: list[Checkpoint]) -> list[str]:
    """The run folder's name where the results belong to one; else the folder the user named, or, in an
    experiment folder, the first folder below it that tells the models apart (lm-eval's model folder and
    folders like `eval/` below it dropped when they do not)."""
    paths = [_path_label(given, folder, c, several=len(folders) > 1) for folder, c in zip(folders, checkpoints)]
    firsts = [p.split("/")[0] for p in paths]
    short = [first if firsts.count(first) == 1 else p for first, p in zip(firsts, paths)]
    labels = []
    for checkpoint, fallback in zip(checkpoints, short):
        if checkpoint.run_dir is not None:
            read_manifest(checkpoint.run_dir)  # a broken manifest is an error, not a silent fallback
            name = checkpoint.run_dir.resolve().name
            labels.append(f"{name}/{checkpoint.run_checkpoint}" if checkpoint.run_checkpoint else name)
        else:
            labels.append(fallback)
    # several results folders of one run folder: their paths tell them apart
    return [fallback if labels.count(label) > 1 else label for label, fallback in zip(labels, short)]


def _path_label(given: Path, folder: Path, checkpoint: Checkpoint, several: bool) -> str:
    model_folder = checkpoint.info.get("model_name_sanitized")
    if given.is_file():
        return (folder.parent if folder.name == model_folder else folder).resolve().name
    rel = folder.relative_to(given).parts
    if rel and rel[-1] == model_folder:
        rel = rel[:-1]
    if not rel:
        return folder.resolve().name if several else given.resolve().name
    return "/".join(rel)


__all__ = ["Checkpoint", "load_checkpoints", "load_results_file", "metric_value", "task_entries"]
