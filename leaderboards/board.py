"""The leaderboard: the papers' tables built from lm-eval results, rendered as markdown.

Layout of the main table (ProMoT Tables 5.2/5.3, 2, 7-11): one row per unseen task, a column per
checkpoint and shot count, the fine-tuning target's row and the `Norm. Avg.` row above, a win-count
row below. Scores are on a 0-100 scale (fractions x100, BLEU as is), two decimals, rounded half up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from harness_tasks.catalog import (GROUPS, MINI, MINI_TARGET, SHOTS, SUITE, TARGETS, TEACH_TWICE, TaskInfo,
                                   parse_task_name, scale_of)
from leaderboards.results import Checkpoint, metric_value

MISSING = "—"
FORMAT_SIGNAL = "fmt_label_share"
SUITE_GROUPS = [f"fmtspec_suite_{s}shot" for s in SHOTS]  # the groups of one shot count's 8 unseen tasks
# The teach-twice paper's tables: metric columns per task, in its order.
TEACH_TWICE_METRICS = {
    "a2t": ("bleu", "rougeL", "rouge1", "rouge2"),
    "alt_en_zh": ("bleu",),
    "mcd_reviews": ("acc", "f1"),
}
METRIC_NAMES = {"bleu": "sacreBLEU", "rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                "acc": "Accuracy", "f1": "F1", "exact_match": "Exact match"}


def fmt(value: float, signed: bool = False) -> str:
    """Two decimals, half up (as printed tables round), without binary noise or '-0.00'."""
    rounded = Decimal(repr(round(value, 9))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)
    return f"{rounded:+}" if signed else f"{rounded}"


def rounded(value: float) -> Decimal:
    return Decimal(fmt(value))


@dataclass
class Score:
    value: float | None  # 0-100
    stderr: float | None = None


@dataclass
class Board:
    """Everything the markdown and the plots show."""

    checkpoints: list[Checkpoint]
    baseline: str  # of the real tasks' tables
    shots: list[int | None]  # shot columns per checkpoint in the main table
    main_labels: list[str] = field(default_factory=list)  # checkpoints with results beside the miniature world's
    mini: dict = field(default_factory=dict)  # the miniature world's table: {"baseline", "columns": {...}}
    norm_avg: dict[tuple[str, int | None], float | None] = field(default_factory=dict)
    targets: dict[str, dict[str, float | None]] = field(default_factory=dict)  # display -> label -> score
    markdown: str = ""

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.checkpoints]


def named_shots(name: str) -> int | None:
    """The shot count a task's name says: its `_<k>shot` suffix, else its YAML's (0; the miniature world's
    8 tasks 1); a group's where its tasks agree. None for names outside the catalog."""
    if name in GROUPS:
        counts = {named_shots(task) for task in GROUPS[name]}
        return counts.pop() if len(counts) == 1 else None
    try:
        info, shots = parse_task_name(name)
    except KeyError:
        return None
    if shots is not None:
        return shots
    return 1 if info in MINI else 0


def run_shots(checkpoint: Checkpoint, name: str) -> int | None:
    """The shot count a task or group ran with: as its results file records it (`lm_eval --num_fewshot`
    overrides the task's own), else as its name says."""
    recorded = checkpoint.shots.get(name)
    return named_shots(name) if recorded is None else recorded


class _Scores:
    """Each checkpoint's results indexed by catalog task and the shot count they ran with (0-shot as None,
    like the names without a count)."""

    def __init__(self, checkpoints: list[Checkpoint]):
        self.by_label: dict[str, dict[tuple[str, int | None], dict]] = {}
        self.other: dict[str, dict[str, dict]] = {}  # label -> tasks not in the catalog
        self.hidden: dict[str, dict[str, str]] = {}  # label -> task not shown -> the task holding its cell
        for checkpoint in checkpoints:
            ours, other, holders, hidden = {}, {}, {}, {}
            for name, metrics in checkpoint.tasks.items():
                try:
                    info, _ = parse_task_name(name)
                except KeyError:
                    other[name] = metrics
                    continue
                shots = run_shots(checkpoint, name)
                key = (info.key, shots or None)
                if key in ours:  # two tasks ran with one shot count: the one named for it keeps the cell
                    if shots != named_shots(name):
                        hidden[name] = holders[key]
                        continue
                    hidden[holders[key]] = name
                ours[key], holders[key] = metrics, name
            self.by_label[checkpoint.label] = ours
            self.other[checkpoint.label] = other
            self.hidden[checkpoint.label] = hidden

    def get(self, label: str, info: TaskInfo, shots: int | None, metric: str | None = None) -> Score:
        metrics = self.by_label[label].get((info.key, shots))
        if metrics is None:
            return Score(None)
        metric = metric or info.metric
        value, stderr, _ = metric_value(metrics, metric)
        scale = info.scale if metric == info.metric else scale_of(metric)
        return Score(None if value is None else value * scale, None if stderr is None else stderr * scale)

    def shots_of(self, infos) -> list[int | None]:
        keys = {info.key for info in infos}
        found = {shots for ours in self.by_label.values() for key, shots in ours if key in keys}
        return sorted(found, key=lambda s: -1 if s is None else s)

    def has(self, info: TaskInfo) -> bool:
        return any(key == info.key for ours in self.by_label.values() for key, _ in ours)


def build(checkpoints: list[Checkpoint], baseline: str | list[str], show_stderr: bool = False,
          generated: datetime | None = None) -> Board:
    """`baseline`: a label, or one per kind of table (e.g. [pretrained, mini_pretrained]): each table takes
    its deltas against the first of them that it holds."""
    baselines = [baseline] if isinstance(baseline, str) else list(baseline)
    # the baselines come first, as the pretrained model does in the papers' tables
    checkpoints = sorted(checkpoints, key=lambda c: baselines.index(c.label) if c.label in baselines else len(baselines))
    scores = _Scores(checkpoints)
    notes: list[str] = []
    for checkpoint in checkpoints:
        notes.extend(f"{checkpoint.label}: {note}" for note in checkpoint.notes)
        notes.extend(_subset_notes(checkpoint))
        notes.extend(_shot_notes(checkpoint, scores.hidden[checkpoint.label]))
        notes.extend(_truncation_notes(checkpoint))
    mini_keys = {info.key for info in (*MINI, MINI_TARGET)}
    main_labels = [label for label, ours in scores.by_label.items()
                   if not ours or any(key not in mini_keys for key, _ in ours) or scores.other[label]]
    main_baseline = next((b for b in baselines if b in main_labels), baselines[0])
    suite_shots = scores.shots_of(SUITE) or scores.shots_of(TARGETS)[:1] or [None]
    board = Board(checkpoints, main_baseline, suite_shots, main_labels)
    sections = [_header(board, generated, baselines)]
    missing: dict[str, list[str]] = {}  # "label k-shot" -> tasks
    if any(scores.has(info) for info in (*MINI, MINI_TARGET)):
        sections.append(mini_table(board, scores, baselines))
    if any(scores.has(info) for info in SUITE + TARGETS):
        sections.append(_main_table(board, scores, show_stderr, notes, missing))
    if any(scores.has(info) for info in TEACH_TWICE):
        sections.append(_teach_twice_tables(board, scores, show_stderr, missing))
    signal = _format_signal_table(board, scores)
    if signal:
        sections.append(signal)
    other = _other_tasks_table(board, scores)
    if other:
        sections.append(other)
    if len(sections) == 1:
        notes.append("no results of fmtspec tasks or other tasks were found")
    count = sum(len(tasks) for tasks in missing.values())
    if count:
        where = "; ".join(f"{column}: {', '.join(tasks)}" for column, tasks in missing.items())
        notes.insert(0, f"{count} result{'s' if count != 1 else ''} missing, shown as {MISSING} "
                        f"(never counted as zero): {where}.")
    if notes:
        sections.append("## Notes\n\n" + "\n".join(f"{i}. {note}" for i, note in enumerate(notes, 1)))
    board.markdown = "\n\n".join(sections) + "\n"
    return board


# ---------------------------------------------------------------------------------------------


def _header(board: Board, generated: datetime | None, baselines: list[str]) -> str:
    generated = generated or datetime.now(timezone.utc)
    rows = []
    for c in board.checkpoints:
        config = c.config
        model_args = config.get("model_args")
        if isinstance(model_args, dict):
            model_args = ",".join(f"{k}={v}" for k, v in model_args.items())
        date = c.info.get("date")
        when = (datetime.fromtimestamp(date, timezone.utc).strftime("%Y-%m-%d %H:%M")
                if isinstance(date, (int, float)) else MISSING)
        label = f"**{_esc(c.label)}** (baseline)" if c.label in baselines else _esc(c.label)
        rows.append([label, _code(config.get("model")), _code(model_args), _esc(c.info.get("lm_eval_version")),
                     when, "<br>".join(_code(_shown_path(f)) for f in c.files),
                     _code(_shown_path(c.run_dir)) if c.run_dir else ""])
    headers = ["Checkpoint", "Model", "Model args", "lm-eval", "Evaluated (UTC)", "Results", "Run folder"]
    if not any(c.run_dir for c in board.checkpoints):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    table = _table(headers, rows)
    against = " or ".join(f"**{_esc(b)}**" for b in baselines if b in board.labels) or f"**{_esc(baselines[0])}**"
    return (f"# fmtspec leaderboard\n\n"
            f"{len(board.checkpoints)} checkpoint{'s' if len(board.checkpoints) != 1 else ''} compared; "
            f"deltas are against {against}{' (each table: the first it holds)' if ' or ' in against else ''}. Built {generated.strftime('%Y-%m-%d %H:%M')} UTC "
            f"by `fmtspec leaderboard`.\n\n{table}\n\n"
            "Scores are on a 0-100 scale: accuracy, exact match, ROUGE and F1 are lm-eval's fractions x100, "
            "BLEU is sacreBLEU's 0-100. Best value per row (per shot count) in **bold**.")


SEED_LABEL = re.compile(r"^(?P<stem>.+)_s(?P<seed>\d+)$")


def seed_stem(label: str) -> str:
    """`finetune_s2` -> `finetune`: the run of a seeded label (other labels are their own)."""
    match = SEED_LABEL.match(label)
    return match["stem"] if match else label


def seed_groups(labels: list[str]) -> dict[str, list[str]]:
    """Labels grouped by run: `finetune_s0`, `finetune_s1` -> {"finetune": [both]}; other labels alone."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(seed_stem(label), []).append(label)
    return groups


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean, and the sample standard deviation where there are two values or more."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mini_table(board: Board, scores: _Scores, baselines: list[str]) -> str:
    """The miniature world: exact match of its 8 tasks (1-shot) and target (0-shot), their mean and the
    True/False share, each as mean ± sd over the seeds of a run; fills board.mini for the plots."""
    labels = [label for label in board.labels
              if any(scores.get(label, info, s).value is not None for info in MINI for s in (1, None))
              or scores.get(label, MINI_TARGET, None).value is not None]
    groups = seed_groups(labels)
    stems = list(groups)
    base = next((stem for b in baselines for stem, members in groups.items() if b in members), stems[0])

    def task_value(label, info, metric=None):
        shots = 1 if scores.get(label, info, 1).value is not None else None
        return scores.get(label, info, shots, metric).value

    per_label = {}
    for label in labels:
        values = [task_value(label, info) for info in MINI]
        shares = [task_value(label, info, FORMAT_SIGNAL) for info in MINI]
        per_label[label] = {
            "mean": None if None in values else math.fsum(values) / len(values),
            "share": None if None in shares else math.fsum(shares) / len(shares),
            "target": task_value(label, MINI_TARGET),
            **{info.key: task_value(label, info) for info in MINI}}
    columns = {}
    for stem, members in groups.items():
        cell = {"labels": members}
        for key in ("mean", "share", "target", *(info.key for info in MINI)):
            values = [per_label[m][key] for m in members]
            cell[key] = None if None in values else _mean_sd(values)
        columns[stem] = cell
    board.mini = {"baseline": base, "columns": columns}

    def text(stat):
        return MISSING if stat is None else fmt(stat[0]) + (f" ± {fmt(stat[1])}" if stat[1] is not None else "")

    def delta(stem, key, relative=False):
        here, there = columns[stem][key], columns[base][key]
        if stem == base or here is None or there is None:
            return ""
        if relative:
            return f" ({fmt(here[0] - there[0], signed=True)}; {fmt(100 * (here[0] / there[0] - 1), signed=True)}%)" \
                if there[0] else f" ({fmt(here[0] - there[0], signed=True)})"
        return f" ({fmt(here[0] - there[0], signed=True)})"

    rows = [["Target (0-shot)"] + [text(columns[stem]["target"]) for stem in stems],
            ["**Mean of 8** (1-shot)"] + [text(columns[stem]["mean"]) + delta(stem, "mean", True) for stem in stems],
            ["**True/False share** x100"] + [text(columns[stem]["share"]) + delta(stem, "share") for stem in stems]]
    rows += [[info.display] + [text(columns[stem][info.key]) for stem in stems] for info in MINI]
    rows.append(["Seeds"] + [str(len(groups[stem])) for stem in stems])
    headers = ["Task (exact match x100)"] + [f"**{_esc(stem)}**" if stem == base else _esc(stem) for stem in stems]
    findings = []
    for stem in stems:
        here, there = columns[stem], columns[base]
        if stem == base or None in (here["mean"], there["mean"], here["share"], there["share"]):
            continue
        change = (f"{fmt(100 * (here['mean'][0] / there['mean'][0] - 1), signed=True)}%" if there["mean"][0]
                  else f"{fmt(here['mean'][0] - there['mean'][0], signed=True)} points")
        findings.append(f"- **{_esc(stem)}**: True/False share {fmt(here['share'][0])} vs {fmt(there['share'][0])} "
                        f"({fmt(here['share'][0] - there['share'][0], signed=True)} points); mean of the 8 tasks "
                        f"{fmt(here['mean'][0])} vs {fmt(there['mean'][0])} ({change}); target "
                        f"{text(here['target'])}.")
    return ("## Miniature world\n\n"
            "The testbed of `harness_tasks/mini_world.py`: a small model pretrained on 8 tasks of different "
            "formats, fine-tuned on a True/False target absent from pretraining. Exact match x100 on the 8 tasks "
            "1-shot (`fmtspec_mini`) and the target 0-shot; runs `<label>_s<seed>` shown as mean ± sample "
            "standard deviation over their seeds, deltas (and relative change) against "
            f"**{_esc(base)}**. `True/False share`: the share of outputs on the 8 tasks whose first word is a "
            "True/False label (one of the 8, is-sorted, answers True/False itself): format specialization "
            "shows as this share rising while the mean falls.\n\n"
            + _table(headers, rows) + ("\n\n" + "\n".join(findings) if findings else ""))


def _main_table(board: Board, scores: _Scores, show_stderr: bool, notes: list[str], missing: dict) -> str:
    shots = board.shots
    columns = [(label, s) for label in board.main_labels for s in shots]
    headers = ["Task", "Metric"] + [f"{_esc(label)} {_shot_name(s)}".rstrip() for label, s in columns]
    rows: list[list[str]] = []
    wins = {column: 0 for column in columns}

    def task_row(title: str, info: TaskInfo, cells: dict[tuple, Score], groups: list[list[tuple]], target=False):
        best = _best(cells, groups)
        for column in best:
            wins[column] += 1
        row = [title, info.metric]
        for column in columns:
            if column not in cells:
                row.append("")
                continue
            score = cells[column]
            if score.value is None:
                row.append(MISSING)
                where = f"{column[0]}" if target else f"{column[0]} {_shot_name(column[1])}".rstrip()
                missing.setdefault(where, []).append(f"{info.display}{' (target)' if target else ''}")
                continue
            text = _score_text(score, show_stderr)
            row.append(f"**{text}**" if column in best else text)
        rows.append(row)

    # Fine-tuning targets (0-shot): one value per checkpoint, in its first shot column.
    for info in TARGETS:
        for target_shots in scores.shots_of([info]):
            placed = {}
            for label in board.main_labels:
                column = (label, target_shots if target_shots in shots else shots[0])
                placed[column] = scores.get(label, info, target_shots)
            board.targets[info.display] = {column[0]: score.value for column, score in placed.items()}
            task_row(f"{info.display} (target, {_shot_name(target_shots or 0)})", info, placed,
                     [list(placed)], target=True)
    norm_row_at = len(rows)
    suite = {(label, s): {info.key: scores.get(label, info, s) for info in SUITE} for label, s in columns}
    shot_groups = [[(label, s) for label in board.main_labels] for s in shots]
    if any(scores.has(info) for info in SUITE):
        for info in SUITE:
            task_row(info.display, info, {column: suite[column][info.key] for column in columns}, shot_groups)
        rows.insert(norm_row_at, _norm_avg_row(board, suite, columns, shot_groups, show_stderr, notes))
    rows.append(["Wins", "rows best"] + [str(wins[column]) for column in columns])
    title = "## Unseen tasks (in-context learning)" if any(scores.has(i) for i in SUITE) else "## Fine-tuning targets"
    intro = ("`Norm. Avg.`: unweighted mean of the 8 unseen tasks' primary metrics (0-100), with the delta "
             f"against {_esc(board.baseline)} in parentheses. Target rows are 0-shot, shown in each checkpoint's "
             "first column. `Wins`: task rows where the column is best.")
    if show_stderr:
        intro += (" `±`: lm-eval's standard error; for `Norm. Avg.` sqrt(sum of se²)/8, the tasks taken as "
                  "independent, where all 8 report one.")
    return f"{title}\n\n{intro}\n\n{_table(headers, rows)}"


def _norm_avg_row(board, suite, columns, shot_groups, show_stderr, notes) -> list[str]:
    averages: dict[tuple, Score] = {}
    for column in columns:
        values = suite[column]
        absent = [info.display for info in SUITE if values[info.key].value is None]
        if absent:
            averages[column] = Score(None)
            label, s = column
            which = "all 8 unseen tasks missing" if len(absent) == len(SUITE) else (
                f"{len(absent)} of the 8 unseen tasks missing ({', '.join(absent)})")
            notes.append(f"{label} {_shot_name(s)}: no Norm. Avg., {which}; an average over fewer tasks "
                         "would not compare.")
            continue
        mean = math.fsum(v.value for v in values.values()) / len(SUITE)
        errors = [v.stderr for v in values.values()]
        stderr = (math.sqrt(math.fsum(e * e for e in errors)) / len(SUITE)
                  if all(e is not None for e in errors) else None)
        averages[column] = Score(mean, stderr)
    for column, score in averages.items():
        board.norm_avg[column] = score.value
        notes.extend(_group_check(board, column, score.value))
    best = _best(averages, shot_groups)
    row = ["**Norm. Avg.**", "mean of 8"]
    for column in columns:
        score = averages[column]
        if score.value is None:
            row.append(MISSING)
            continue
        text = _score_text(score, show_stderr)
        text = f"**{text}**" if column in best else text
        base = averages.get((board.baseline, column[1]))
        if column[0] != board.baseline and base is not None and base.value is not None:
            text += f" ({fmt(score.value - base.value, signed=True)})"
        row.append(text)
    for s in board.shots:
        base = averages.get((board.baseline, s))
        if base is not None and base.value is None and any(
                averages[(label, s)].value is not None for label in board.main_labels):
            notes.append(f"{board.baseline} {_shot_name(s)} has no Norm. Avg., so that column shows no deltas.")
    return row


def _group_check(board: Board, column: tuple, mean: float | None) -> list[str]:
    """Where the results carry the suite group's own `norm_avg`, say if it disagrees with the board's."""
    label, s = column
    checkpoint = next(c for c in board.checkpoints if c.label == label)
    # the group that ran with the column's shot count; the one named for it first, as its tasks hold the cells
    ran = [name for name in SUITE_GROUPS if name in checkpoint.groups and (run_shots(checkpoint, name) or None) == s]
    ran.sort(key=lambda name: named_shots(name) != run_shots(checkpoint, name))
    group = checkpoint.groups[ran[0]] if ran else None
    reported = metric_value(group, "norm_avg")[0] if group else None
    if mean is None or reported is None or min(abs(reported - mean), abs(reported * 100 - mean)) <= 0.01:
        return []
    return [f"{label} {_shot_name(s)}: the results' group reports norm_avg {reported:.4f}, the board computes "
            f"{fmt(mean)} from the 8 tasks; the table shows the board's."]


def _teach_twice_tables(board: Board, scores: _Scores, show_stderr: bool, missing: dict) -> str:
    parts = ["## Teach-twice tasks\n\nOne row per checkpoint, as in the teach-twice paper's Tables 1-5 "
             "(its ROUGE fractions appear here x100)."]
    for info in TEACH_TWICE:
        metrics = TEACH_TWICE_METRICS[info.key]
        for s in scores.shots_of([info]):
            task = f"fmtspec_{info.key}" + (f"_{s}shot" if s else "")
            cells = {(label, m): scores.get(label, info, s, m) for label in board.main_labels for m in metrics}
            best = set()
            for m in metrics:
                best |= _best(cells, [[(label, m) for label in board.main_labels]])
            rows = []
            for label in board.main_labels:
                row = [_esc(label)]
                for m in metrics:
                    score = cells[(label, m)]
                    if score.value is None:
                        row.append(MISSING)
                        missing.setdefault(label, []).append(f"{info.display} {METRIC_NAMES.get(m, m)}")
                        continue
                    text = _score_text(score, show_stderr)
                    row.append(f"**{text}**" if (label, m) in best else text)
                rows.append(row)
            headers = ["Checkpoint"] + [METRIC_NAMES.get(m, m) for m in metrics]
            parts.append(f"### {info.display} (`{task}`)\n\n{_table(headers, rows)}")
    return "\n\n".join(parts)


def _format_signal_table(board: Board, scores: _Scores) -> str | None:
    """fmt_label_share per task and checkpoint, where the tasks report it."""
    columns = [(label, s) for label in board.main_labels for s in board.shots]
    rows, sums = [], {column: [] for column in columns}
    for info in SUITE + TARGETS + TEACH_TWICE:
        found = scores.shots_of([info])
        # one row per task: its shot counts of the main table side by side, other shot counts (0-shot
        # targets) in the checkpoint's first column of a row of their own
        in_columns = [s for s in found if s in board.shots]
        row_shots = ([(info.display, in_columns)] if in_columns else []) + [
            (f"{info.display} ({_shot_name(s or 0)})", [s]) for s in found if s not in board.shots]
        for title, shot_list in row_shots:
            cells = {}
            for s in shot_list:
                for label in board.main_labels:
                    column = (label, s if s in board.shots else board.shots[0])
                    score = scores.get(label, info, s, FORMAT_SIGNAL)
                    if score.value is not None:
                        cells[column] = score.value
                        if info in SUITE:
                            sums[column].append(score.value)
            if cells:
                rows.append([title] + [fmt(cells[c]) if c in cells else MISSING for c in columns])
    if not rows:
        return None
    if any(sums.values()):
        rows.append(["**Mean, unseen tasks**"] + [f"{fmt(math.fsum(v) / len(v))} (of {len(v)})" if v else MISSING
                                                  for v in sums.values()])
    headers = ["Task"] + [f"{_esc(label)} {_shot_name(s)}".rstrip() for label, s in columns]
    return ("## Format specialization\n\n`fmt_label_share` x100 as the tasks report it: the share of outputs "
            "whose first word is a classification label (True/False/Neither), the signal of the ProMoT paper's "
            "Figure 2. On generation tasks, higher means more of the fine-tuning format leaking in.\n\n"
            + _table(headers, rows))


def _other_tasks_table(board: Board, scores: _Scores) -> str | None:
    names = sorted({name for other in scores.other.values() for name in other})
    rows = []
    for name in names:
        keys = []
        for other in scores.other.values():
            for key in other.get(name, {}):
                if "," in key and "_stderr," not in key and key not in keys:
                    keys.append(key)
        for key in keys:
            row = [f"`{name}`", f"`{key}`"]
            for label in board.labels:
                value = scores.other[label].get(name, {}).get(key)
                row.append(f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool)
                           else MISSING)
            rows.append(row)
    if not rows:
        return None
    return ("## Other tasks\n\nTasks outside the fmtspec catalog, with every metric as lm-eval reports it "
            "(not rescaled).\n\n" + _table(["Task", "Metric"] + [_esc(label) for label in board.labels], rows))


# ---------------------------------------------------------------------------------------------


def _best(cells: dict, groups: list[list]) -> set:
    """Columns holding the best (rounded) value of their group; none where fewer than two compete or all tie."""
    best = set()
    for group in groups:
        present = {c: rounded(cells[c].value) for c in group if c in cells and cells[c].value is not None}
        if len(present) < 2:
            continue
        top = max(present.values())
        if top == min(present.values()):
            continue
        best |= {c for c, v in present.items() if v == top}
    return best


def _score_text(score: Score, show_stderr: bool) -> str:
    text = fmt(score.value)
    if show_stderr and score.stderr is not None:
        text += f" ± {fmt(score.stderr)}"
    return text


def _subset_notes(checkpoint: Checkpoint) -> list[str]:
    notes = []
    limit = checkpoint.config.get("limit")
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    if limit is not None:
        notes.append(f"{checkpoint.label}: evaluated with --limit {limit}: scores on a subset do not compare "
                     "with full evaluations.")
    short = [task for task, n in (checkpoint.info.get("n-samples") or {}).items()
             if isinstance(n, dict) and isinstance(n.get("effective"), int)
             and isinstance(n.get("original"), int) and n["effective"] < n["original"]]
    if short and limit is None:
        notes.append(f"{checkpoint.label}: {len(short)} task(s) scored on fewer documents than the split has "
                     f"({', '.join(sorted(short))}).")
    return notes


def _shot_notes(checkpoint: Checkpoint, hidden: dict[str, str]) -> list[str]:
    """Tasks and groups that ran with another shot count than their names say (`--num_fewshot`)."""
    by_counts: dict[tuple[int, int], list[str]] = {}  # (named, ran) -> names
    for name, ran in sorted(checkpoint.shots.items()):
        named = named_shots(name)
        if named is None or named == ran:
            continue
        item = name + (" (group)" if name in checkpoint.groups else "")
        if name in hidden:
            item += f" (not shown: {hidden[name]} holds its cell)"
        by_counts.setdefault((named, ran), []).append(item)
    if not by_counts:
        return []
    parts = "; ".join(f"named {_shot_name(named)}, ran {_shot_name(ran)}: {', '.join(items)}"
                      for (named, ran), items in by_counts.items())
    return [f"{checkpoint.label}: shot counts other than the task names say, each result shown in the column "
            f"of the count it ran with; {parts}."]


def _truncation_notes(checkpoint: Checkpoint) -> list[str]:
    """Tasks whose requests promot_hf truncated to fit the model: those scores are on cut prompts."""
    items = []
    for task, count in sorted(checkpoint.truncated.items()):
        if count:
            total = checkpoint.requests.get(task)
            items.append(f"{task} {count}" + (f" of {total}" if total is not None else ""))
    if not items:
        return []
    return [f"{checkpoint.label}: requests whose context was truncated to fit the model: {', '.join(items)}."]


def _shot_name(shots: int | None) -> str:
    return "" if shots is None else f"{shots}-shot"


def _shown_path(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _esc(text) -> str:
    return MISSING if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def _code(text) -> str:
    return MISSING if text in (None, "") else f"`{_esc(text)}`"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
