"""The leaderboard (`fmtspec leaderboard`): hand-made and real lm-eval results files in, markdown out.

The paper tests rebuild ProMoT Tables 5.2, 5.3 and 2 and the teach-twice Tables 1 and 3 from their
per-task numbers and compare the printed Norm. Avg., deltas and bold cells with the papers'.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError
from harness_tasks.catalog import GROUPS, SUITE, TARGETS
from leaderboards.board import build, fmt
from leaderboards.results import load_checkpoints, load_results_file

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "leaderboards"
REAL_RESULTS = ASSETS / "real_results"
TASK_YAMLS = {path.stem: path for path in (Path(__file__).resolve().parents[2] / "harness_tasks").rglob("*.yaml")}


# ------------------------------------------------------------------------------------------------
# Hand-made results files, shaped like the real one in assets/leaderboards/real_results/


def shots_run(name: str, num_fewshot: int | None = None) -> int | None:
    """The shot count lm-eval records for a task: its YAML's `num_fewshot` (0 outside fmtspec), which
    `--num_fewshot` overrides unless it is 0; a group's where its tasks agree, else None (none recorded)."""
    if name in GROUPS:
        counts = {shots_run(task, num_fewshot) for task in GROUPS[name]}
        return counts.pop() if len(counts) == 1 else None
    found = name in TASK_YAMLS and re.search(r"^num_fewshot: (\d+)$", TASK_YAMLS[name].read_text(), re.M)
    own = int(found.group(1)) if found else 0
    return own if num_fewshot is None or own == 0 else num_fewshot


def results_json(tasks: dict[str, dict[str, float]], model_args: str = "pretrained=google/mt5-xxl",
                 date: float = 1_700_000_000.0, filter_name: str = "none", limit=None, num_fewshot=None,
                 truncated: dict[str, int] | None = None) -> dict:
    """{task: {metric: value}} -> a results object as lm-eval 0.4.13's simple_evaluate writes it.
    A metric may carry its own filter ("acc,paper"); "<metric>_stderr" entries are written as given.
    `num_fewshot`: as `lm_eval --num_fewshot` (overrides every task's own count). `truncated`: the run was
    `--model promot_hf`, which counts the requests whose context it truncated."""
    results, higher, shots, samples, configs = {}, {}, {}, {}, {}
    for task, metrics in tasks.items():
        entry = {"name": task, "alias": task, "sample_len": 100}
        for metric, value in metrics.items():
            entry[metric if "," in metric else f"{metric},{filter_name}"] = value
        results[task] = entry
        higher[task] = {m.split(",")[0]: True for m in metrics if "_stderr" not in m}
        if shots_run(task, num_fewshot) is not None:
            shots[task] = shots_run(task, num_fewshot)
        if task not in GROUPS:  # lm-eval keeps configs and sample counts for tasks, not for groups
            configs[task] = {"task": task, "num_fewshot": shots[task],
                             "output_type": "generate_until" if task.startswith("fmtspec_") else "multiple_choice"}
            samples[task] = {"original": 100, "effective": 100 if limit is None else limit}
    model_name = model_args.split("pretrained=")[-1].split(",")[0]
    config = {"model": "hf", "model_args": model_args, "batch_size": 1, "limit": limit}
    if truncated is not None:
        config["model"] = "promot_hf"
        config["promot_hf"] = {"prompt": "auto", "sentinel": False, "run_folder": None, "prompt_tasks": {},
                               "task_prompts": {task: None for task in configs}, "truncated_requests": truncated}
    return {
        "results": results, "group_subtasks": {}, "configs": configs,
        "versions": {task: 1.0 for task in tasks}, "n-shot": shots, "higher_is_better": higher,
        "n-samples": samples, "config": config,
        "git_hash": None, "date": date, "lm_eval_version": "0.4.13", "model_source": config["model"],
        "model_name": model_name, "model_name_sanitized": re.sub(r"[\"<>:/|\\?*\[\]]+", "__", model_name),
    }


def write_results(output_path: Path, tasks: dict, stamp: str = "2026-01-01T10-00-00.000000", **kwargs) -> Path:
    """Where `lm_eval --output_path OUTPUT_PATH` writes: <output_path>/<model>/results_<stamp>.json."""
    data = results_json(tasks, **kwargs)
    path = Path(output_path) / data["model_name_sanitized"] / f"results_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


BY_DISPLAY = {info.display: info for info in SUITE + TARGETS}


def paper_tasks(table: dict[str, list[float]], column: int, shots=(1, 4), targets=None) -> dict:
    """One checkpoint of a paper table printed on the 0-100 scale -> {task: {metric: lm-eval value}}."""
    tasks = {}
    for i, n in enumerate(shots):
        for display, values in table.items():
            info = BY_DISPLAY[display]
            tasks[f"fmtspec_{info.key}_{n}shot"] = {info.metric: values[column * len(shots) + i] / info.scale}
    for display, values in (targets or {}).items():
        info = BY_DISPLAY[display]
        tasks[f"fmtspec_{info.key}"] = {info.metric: values[column] / info.scale}
    return tasks


def row_cells(markdown: str, first_cell: str) -> list[str]:
    """The cells after the first one of the first table row that starts with `first_cell`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no row {first_cell!r} in:\n{markdown}")


def number_and_delta(cell: str) -> tuple[float | None, float | None]:
    """'**20.10** (+2.58)' -> (20.10, 2.58); '—' -> (None, None)."""
    match = re.fullmatch(r"\**([\d.]+)\**(?: ± [\d.]+)?(?: \(([+-][\d.]+)\))?", cell)
    assert match or cell == "—", cell
    if not match:
        return None, None
    return float(match.group(1)), (float(match.group(2)) if match.group(2) else None)


def board_of(tmp_path: Path, checkpoints: dict[str, dict], baseline: str, **kwargs) -> str:
    specs = []
    for i, (label, tasks) in enumerate(checkpoints.items()):
        write_results(tmp_path / f"out{i}", tasks, model_args=f"pretrained=ckpt{i}")
        specs.append(f"{label}={tmp_path / f'out{i}'}")
    return build(load_checkpoints(specs), baseline, **kwargs).markdown


# ------------------------------------------------------------------------------------------------
# The papers' tables


# ProMoT (seed 002) Table 5.2: mT5 XXL fine-tuned on RTE. Columns: Pretrained, Standard fine-tuning,
# ProMoT, ProMoT + 1-shot; each 1-shot then 4-shot.
TABLE_5_2 = {
    "labels": ["Pretrained", "Fine-tuning", "ProMoT", "ProMoT + 1-shot"],
    "targets": {"RTE": [47.653, 92.06, 92.78, 93.86]},
    "tasks": {
        "CB": [46.43, 51.79, 73.21, 82.14, 66.07, 67.86, 83.93, 82.14],
        "WiC": [49.69, 49.69, 50.00, 50.16, 51.41, 53.61, 51.25, 50.63],
        "TriviaQA": [17.58, 19.02, 0.15, 0.11, 17.64, 18.66, 17.82, 19.62],
        "WebQuestions": [9.70, 13.04, 0.05, 0.05, 11.07, 13.19, 10.14, 12.11],
        "WMT16 En-De": [3.97, 8.83, 0.00, 0.00, 2.02, 3.69, 2.26, 4.89],
        "WMT16 En-Ro": [1.82, 3.92, 0.00, 0.00, 0.70, 0.96, 0.87, 1.87],
        "XSum": [6.41, 2.35, 0.00, 0.00, 7.02, 7.01, 6.94, 3.93],
        "WikiLingua-en": [4.59, 1.33, 0.00, 0.00, 4.84, 4.90, 4.87, 3.43],
    },
    "shots": (1, 4),
    "norm_avg": [17.52, 18.75, 15.43, 16.56, 20.10, 21.24, 22.26, 22.33],
    "deltas": [None, None, -2.10, -2.19, +2.58, +2.49, +4.74, +3.58],
    # The paper's averages came from unrounded per-task scores; from the printed ones the mean is
    # 20.09625 - 17.52375 = +2.5725 -> +2.57 for ProMoT 1-shot.
    "rounding": {("ProMoT", 1, "delta"): 2.57},
}
# ProMoT Table 5.3: fine-tuned on WMT14 En-Fr, same columns.
TABLE_5_3 = {
    "labels": ["Pretrained", "Fine-tuning", "ProMoT", "ProMoT + 1-shot"],
    "targets": {"WMT14 En-Fr": [1.98, 41.80, 41.30, 41.19]},
    "tasks": {
        "CB": [46.43, 51.79, 16.07, 32.14, 41.07, 57.14, 41.07, 53.57],
        "WiC": [49.69, 49.69, 50.63, 49.06, 50.16, 50.31, 49.84, 50.63],
        "TriviaQA": [17.58, 19.02, 3.20, 3.15, 13.63, 15.20, 16.93, 18.19],
        "WebQuestions": [9.70, 13.04, 0.89, 6.15, 9.40, 7.92, 10.14, 12.01],
        "WMT16 En-De": [3.97, 8.83, 0.81, 0.18, 15.52, 15.55, 16.14, 15.63],
        "WMT16 En-Ro": [1.82, 3.92, 1.53, 0.42, 18.54, 17.80, 17.57, 16.81],
        "XSum": [6.41, 2.35, 0.05, 1.86, 1.49, 0.65, 3.41, 4.36],
        "WikiLingua-en": [4.59, 1.33, 0.03, 0.43, 1.14, 0.52, 4.22, 4.73],
    },
    "shots": (1, 4),
    "norm_avg": [17.52, 18.75, 9.15, 11.67, 18.87, 20.64, 19.91, 21.99],
    "deltas": [None, None, -8.37, -7.07, +1.35, +1.89, +2.39, +3.24],
    # From the printed per-task scores: ProMoT + 1-shot 1-shot mean is 19.915 exactly (-> 19.92), and
    # its 4-shot delta 21.99125 - 18.74625 = 3.245 (-> +3.25).
    "rounding": {("ProMoT + 1-shot", 1, "avg"): 19.92, ("ProMoT + 1-shot", 4, "delta"): 3.25},
}
# ProMoT Table 2: multi-task RTE + WMT14 En-Fr, 1-shot only, two target rows.
TABLE_2 = {
    "labels": ["Pretrained", "multi-task FT", "Multi ProMoT", "multi-task FT + 1-shot", "Multi-ProMoT + 1-shot"],
    "targets": {"RTE": [47.65, 90.25, 91.34, 91.70, 93.14], "WMT14 En-Fr": [1.982, 41.34, 40.73, 40.87, 40.55]},
    "tasks": {
        "CB": [46.43, 80.36, 83.93, 87.50, 85.71],
        "WiC": [49.69, 51.10, 51.41, 53.29, 52.04],
        "TriviaQA": [17.58, 15.76, 16.99, 16.53, 17.18],
        "WebQuestions": [9.70, 9.70, 10.04, 9.40, 10.38],
        "WMT16 En-De": [3.97, 0.88, 18.83, 2.50, 17.57],
        "WMT16 En-Ro": [1.82, 1.52, 18.41, 5.62, 18.57],
        "XSum": [6.41, 0.44, 4.50, 1.82, 4.32],
        "WikiLingua-en": [4.59, 0.72, 2.89, 4.33, 3.56],
    },
    "shots": (1,),
    "norm_avg": [17.52, 20.06, 25.88, 22.62, 26.17],
    "deltas": [None, +2.54, +8.35, +5.10, +8.65],
    # 26.16625 - 17.52375 = 8.6425 -> +8.64 (the paper subtracted its rounded averages).
    "rounding": {("Multi-ProMoT + 1-shot", 1, "delta"): 8.64},
}


@pytest.mark.parametrize("table", [TABLE_5_2, TABLE_5_3, TABLE_2], ids=["table5.2", "table5.3", "table2"])
def test_paper_tables_norm_avg_and_deltas(tmp_path, table):
    checkpoints = {label: paper_tasks(table["tasks"], i, table["shots"], table["targets"])
                   for i, label in enumerate(table["labels"])}
    markdown = board_of(tmp_path, checkpoints, baseline="Pretrained")
    printed = [number_and_delta(cell) for cell in row_cells(markdown, "**Norm. Avg.**")[1:]]
    columns = [(label, n) for label in table["labels"] for n in table["shots"]]
    assert len(printed) == len(columns)
    for (label, n), (avg, delta), paper_avg, paper_delta in zip(columns, printed, table["norm_avg"], table["deltas"]):
        expected_avg = table["rounding"].get((label, n, "avg"), paper_avg)
        expected_delta = table["rounding"].get((label, n, "delta"), paper_delta)
        assert avg == pytest.approx(expected_avg, abs=1e-9), (label, n)
        assert avg == pytest.approx(paper_avg, abs=0.01 + 1e-9)
        if paper_delta is None:
            assert delta is None  # the baseline shows no delta against itself
        else:
            assert delta == pytest.approx(expected_delta, abs=1e-9), (label, n)
            assert delta == pytest.approx(paper_delta, abs=0.01 + 1e-9)
    # every per-task number comes back as printed (two decimals), the targets' too
    for display, values in table["tasks"].items():
        assert [number_and_delta(c)[0] for c in row_cells(markdown, display)[1:]] == values
    for display, values in table["targets"].items():
        cells = row_cells(markdown, f"{display} (target, 0-shot)")[1:]
        firsts = cells[::len(table["shots"])]
        assert [number_and_delta(c)[0] for c in firsts] == [float(fmt(v)) for v in values]
        assert all(c == "" for i, c in enumerate(cells) if i % len(table["shots"]))


def test_table_5_2_bold_and_wins(tmp_path):
    checkpoints = {label: paper_tasks(TABLE_5_2["tasks"], i, (1, 4), TABLE_5_2["targets"])
                   for i, label in enumerate(TABLE_5_2["labels"])}
    markdown = board_of(tmp_path, checkpoints, baseline="Pretrained")
    # CB 1-shot: ProMoT + 1-shot (83.93) is best; 4-shot: Fine-tuning and ProMoT + 1-shot tie at 82.14
    assert row_cells(markdown, "CB")[1:] == ["46.43", "51.79", "73.21", "**82.14**", "66.07", "67.86",
                                             "**83.93**", "**82.14**"]
    assert row_cells(markdown, "RTE (target, 0-shot)")[1:] == ["47.65", "", "92.06", "", "92.78", "",
                                                               "**93.86**", ""]
    norm = row_cells(markdown, "**Norm. Avg.**")[1:]
    assert norm[6] == "**22.26** (+4.74)" and norm[7] == "**22.33** (+3.58)"
    # Wins: count bold task cells per column (9 rows: target + 8 unseen tasks)
    wins = [int(w) for w in row_cells(markdown, "Wins")[1:]]
    bold = [0] * 8
    for display in ["RTE (target, 0-shot)", *TABLE_5_2["tasks"]]:
        for i, cell in enumerate(row_cells(markdown, display)[1:]):
            bold[i] += cell.startswith("**")
    assert wins == bold
    assert wins[6] == 4  # ProMoT + 1-shot 1-shot: RTE, CB, TriviaQA, WMT16 En-De


# Teach-twice (seed 001) Table 1 (A2T) and Table 3 (reviews): rouge/acc as fractions, sacreBLEU 0-100.
A2T = {"A2T": (11.5420, 0.3701, 0.4067, 0.2304), "res -> A2T": (11.6576, 0.3708, 0.4120, 0.2306),
       "trans -> A2T": (11.1662, 0.3675, 0.4054, 0.2263)}
REVIEWS = {"A2T": (0.3717, 0.4742), "res -> A2T": (0.3717, 0.4751), "trans -> A2T": (0.3926, 0.4701)}


def test_teach_twice_tables(tmp_path):
    checkpoints = {}
    for label, (bleu, rouge_l, rouge1, rouge2) in A2T.items():
        acc, f1 = REVIEWS[label]
        checkpoints[label] = {
            "fmtspec_a2t": {"bleu,paper": bleu, "rougeL,paper": rouge_l, "rouge1,paper": rouge1,
                            "rouge2,paper": rouge2},
            "fmtspec_mcd_reviews": {"acc": acc, "f1": f1},
        }
    markdown = board_of(tmp_path, checkpoints, baseline="A2T")
    assert "### Abstract to title (`fmtspec_a2t`)" in markdown
    assert "| Checkpoint | sacreBLEU | ROUGE-L | ROUGE-1 | ROUGE-2 |" in markdown
    # The paper bolds `res -> A2T` in every column of Table 1.
    a2t = markdown[markdown.index("### Abstract to title"):]
    assert row_cells(a2t, "res -> A2T") == ["**11.66**", "**37.08**", "**41.20**", "**23.06**"]
    assert row_cells(a2t, "A2T") == ["11.54", "37.01", "40.67", "23.04"]
    reviews = markdown[markdown.index("McDonald's reviews"):]
    # Table 3: trans -> res has the best accuracy, A2T -> res the best F1
    assert row_cells(reviews, "trans -> A2T") == ["**39.26**", "47.01"]
    assert row_cells(reviews, "res -> A2T") == ["37.17", "**47.51**"]
    assert "ALT En-Zh" not in markdown  # absent tasks get no table
    assert "Unseen tasks" not in markdown


# ------------------------------------------------------------------------------------------------
# Reading lm-eval's real files


def test_real_lm_eval_results_file(tmp_path):
    (path,) = REAL_RESULTS.glob("*/results_*.json")
    data = json.loads(path.read_text())
    checkpoints = load_checkpoints([f"dummy={REAL_RESULTS}"])
    assert [c.label for c in checkpoints] == ["dummy"]
    assert set(checkpoints[0].tasks) == {"fmtspec_cb_1shot", "fmtspec_triviaqa_1shot", "fmtspec_rte"}  # no group
    markdown = build(checkpoints, "dummy").markdown
    cb = data["results"]["fmtspec_cb_1shot"]["acc,none"]
    assert row_cells(markdown, "CB") == ["acc", fmt(cb * 100)]
    em = data["results"]["fmtspec_triviaqa_1shot"]["exact_match,paper"]  # read under the `paper` filter
    assert row_cells(markdown, "TriviaQA") == ["exact_match", fmt(em * 100)]
    assert row_cells(markdown, "RTE (target, 0-shot)") == ["acc", fmt(data["results"]["fmtspec_rte"]["acc,none"] * 100)]
    assert row_cells(markdown, "**Norm. Avg.**") == ["mean of 8", "—"]
    assert "6 of the 8 unseen tasks missing" in markdown
    assert "`pretrained=dummy-model`" in markdown and "| 0.4.13 |" in markdown
    stderr = build(checkpoints, "dummy", show_stderr=True).markdown
    se = data["results"]["fmtspec_rte"]["acc_stderr,none"]
    assert row_cells(stderr, "RTE (target, 0-shot)")[1] == f"{fmt(50.0)} ± {fmt(se * 100)}"


def test_real_fmtspec_tasks_results_file():
    """`lm_eval --model hf --tasks fmtspec_suite_1shot,fmtspec_rte,fmtspec_a2t --limit 3` on a tiny GPT-2
    (fixture data): model_args as a dict, BLEU stderr "N/A", the group's own norm_avg beside the tasks."""
    (path,) = (ASSETS / "real_results_fmtspec").glob("*/results_*.json")
    results = json.loads(path.read_text())["results"]
    (checkpoint,) = load_checkpoints([str(path)])
    markdown = build([checkpoint], checkpoint.label, show_stderr=True).markdown
    for info in SUITE:
        metrics = results[f"fmtspec_{info.key}_1shot"]
        value, stderr = metrics[f"{info.metric},none"], metrics[f"{info.metric}_stderr,none"]
        expected = fmt(value * info.scale) + ("" if stderr == "N/A" else f" ± {fmt(stderr * info.scale)}")
        assert row_cells(markdown, info.display) == [info.metric, expected]
    mean = sum(results[f"fmtspec_{i.key}_1shot"][f"{i.metric},none"] * i.scale for i in SUITE) / 8
    assert row_cells(markdown, "**Norm. Avg.**") == ["mean of 8", fmt(mean)]
    assert "fmtspec_suite_1shot" in checkpoint.groups and "fmtspec_suite_1shot" not in checkpoint.tasks
    assert "group reports norm_avg" not in markdown  # the tasks' own group average agrees with the board
    assert "evaluated with --limit 3: scores on a subset" in markdown
    assert "`pretrained=/tmp/lbe/gpt2`" in markdown  # lm-eval's CLI stores model_args as a dict
    a2t = results["fmtspec_a2t"]
    assert row_cells(markdown[markdown.index("### Abstract"):], checkpoint.label)[0] == fmt(a2t["bleu,none"])


@pytest.mark.slow
def test_live_lm_eval_run_with_dummy_model(tmp_path):
    """The reader keeps up with what the installed lm-eval writes today (dummy model, tiny local tasks)."""
    generator = runpy.run_path(str(ASSETS / "make_real_results.py"))
    written = generator["write_results"](tmp_path / "out")
    assert written.parent.parent == tmp_path / "out" and written.name.startswith("results_")
    data = load_results_file(written)
    (checkpoint,) = load_checkpoints([str(tmp_path / "out")])
    assert checkpoint.label == "out" and checkpoint.files == [written]
    markdown = build([checkpoint], "out").markdown
    assert row_cells(markdown, "CB")[1] == fmt(data["results"]["fmtspec_cb_1shot"]["acc,none"] * 100)
    assert "fmt_label_share" in markdown


def test_filters_scales_and_missing_results(tmp_path):
    full = {f"fmtspec_{info.key}_1shot": {f"{info.metric},paper": 0.5 if info.scale == 100 else 20.0}
            for info in SUITE}
    partial = {name: metrics for name, metrics in full.items() if "xsum" not in name}
    partial["fmtspec_cb_1shot"] = {"acc,none": 0.75}
    markdown = board_of(tmp_path, {"base": full, "ft": partial}, baseline="base")
    assert row_cells(markdown, "WMT16 En-De") == ["bleu", "20.00", "20.00"]  # BLEU is not rescaled
    assert row_cells(markdown, "CB") == ["acc", "50.00", "**75.00**"]
    assert row_cells(markdown, "XSum") == ["rouge2", "50.00", "—"]  # missing, never a zero
    assert row_cells(markdown, "**Norm. Avg.**") == ["mean of 8", fmt((6 * 50 + 2 * 20) / 8), "—"]
    assert "1 result missing, shown as — (never counted as zero): ft 1-shot: XSum." in markdown
    assert "ft 1-shot: no Norm. Avg., 1 of the 8 unseen tasks missing (XSum)" in markdown


@pytest.mark.parametrize("reported, agrees", [(35.0, True), (0.35, True), (36.0, False)])
def test_suite_group_norm_avg_is_cross_checked(tmp_path, reported, agrees):
    tasks = {f"fmtspec_{info.key}_1shot": {info.metric: 0.35 if info.scale == 100 else 35.0} for info in SUITE}
    tasks["fmtspec_suite_1shot"] = {"norm_avg": reported}  # a group entry, as the fmtspec groups report it
    markdown = board_of(tmp_path, {"a": tasks}, baseline="a")
    assert row_cells(markdown, "**Norm. Avg.**") == ["mean of 8", "35.00"]
    assert "fmtspec_suite_1shot" not in markdown  # a group is not an "other task"
    assert ("the results' group reports norm_avg" not in markdown) == agrees


def test_stderr_column_and_norm_avg_stderr(tmp_path):
    tasks = {f"fmtspec_{info.key}_1shot": {info.metric: 0.5 if info.scale == 100 else 50.0,
                                            f"{info.metric}_stderr": 0.01 if info.scale == 100 else 1.0}
             for info in SUITE}
    markdown = board_of(tmp_path, {"a": tasks}, baseline="a", show_stderr=True)
    assert row_cells(markdown, "WiC") == ["acc", "50.00 ± 1.00"]
    assert row_cells(markdown, "WMT16 En-Ro") == ["bleu", "50.00 ± 1.00"]
    assert row_cells(markdown, "**Norm. Avg.**") == ["mean of 8", "50.00 ± 0.35"]  # sqrt(8 * 1²) / 8
    tasks["fmtspec_xsum_1shot"]["rouge2_stderr"] = "N/A"  # lm-eval's marker for "not computed"
    markdown = board_of(tmp_path / "b", {"a": tasks}, baseline="a", show_stderr=True)
    assert row_cells(markdown, "XSum") == ["rouge2", "50.00"]
    assert row_cells(markdown, "**Norm. Avg.**") == ["mean of 8", "50.00"]
    assert "±" not in board_of(tmp_path / "c", {"a": tasks}, baseline="a").split("## Unseen")[1]


def test_format_signal_and_other_tasks(tmp_path):
    tasks = {"fmtspec_cb_1shot": {"acc": 0.5, "fmt_label_share": 0.25},
             "fmtspec_xsum_1shot": {"rouge2": 0.1, "fmt_label_share": 0.75},
             "arc_easy": {"acc": 0.61234, "acc_norm": 0.6}}
    markdown = board_of(tmp_path, {"a": tasks, "b": {"fmtspec_cb_1shot": {"acc": 0.4}}}, baseline="a")
    signal = markdown[markdown.index("## Format specialization"):]
    assert row_cells(signal, "CB") == ["25.00", "—"]
    assert row_cells(signal, "**Mean, unseen tasks**") == ["50.00 (of 2)", "—"]
    other = markdown[markdown.index("## Other tasks"):]
    assert row_cells(other, "`arc_easy`") == ["`acc,none`", "0.6123", "—"]


def test_newest_results_per_task_and_foreign_model_args(tmp_path):
    out = tmp_path / "out"
    write_results(out, {"fmtspec_cb_1shot": {"acc": 0.1}, "fmtspec_wic_1shot": {"acc": 0.2}},
                  stamp="2026-01-01T10-00-00.000000")
    write_results(out, {"fmtspec_cb_1shot": {"acc": 0.3}}, stamp="2026-01-02T10-00-00.000000")
    stranger = write_results(out, {"fmtspec_wic_1shot": {"acc": 0.9}}, stamp="2025-12-01T10-00-00.000000",
                             model_args="pretrained=google/mt5-xxl,dtype=float32")
    (checkpoint,) = load_checkpoints([f"x={out}"])
    assert checkpoint.tasks["fmtspec_cb_1shot"]["acc,none"] == 0.3  # newest file wins
    assert checkpoint.tasks["fmtspec_wic_1shot"]["acc,none"] == 0.2  # older file fills the gap
    assert any(str(stranger) in note for note in checkpoint.notes)


def test_experiment_folder_and_run_folder_labels(tmp_path):
    experiment = tmp_path / "exp"
    write_results(experiment / "pretrained", {"fmtspec_cb_1shot": {"acc": 0.5}})
    run = experiment / "rte_promot"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"format": "fmtspec-run/1", "method": "promot",
                                              "base_model": "google/mt5-xxl", "model": "model"}))
    write_results(run / "eval", {"fmtspec_cb_1shot": {"acc": 0.6}}, model_args=f"pretrained={run / 'model'}")
    checkpoints = load_checkpoints([str(experiment)])
    assert sorted(c.label for c in checkpoints) == ["pretrained", "rte_promot"]
    assert {c.label: c.run_dir for c in checkpoints}["rte_promot"] == run
    # a run's intermediate checkpoint, evaluated into its own output folder
    write_results(tmp_path / "step500", {"fmtspec_cb_1shot": {"acc": 0.7}},
                  model_args=f"pretrained={run / 'checkpoints' / 'step-500'}")
    (step,) = load_checkpoints([str(tmp_path / "step500")])
    assert step.label == "rte_promot/step-500" and step.run_dir == run
    with pytest.raises(FmtspecError, match=r"holds the results of 2 models"):
        load_checkpoints([f"all={experiment}"])
    # a single results file: labelled by the folder above lm-eval's model folder
    (file,) = (experiment / "pretrained").rglob("results_*.json")
    assert load_checkpoints([str(file)])[0].label == "pretrained"


def test_minimal_results_file_is_accepted(tmp_path):
    """Only `results` with lm-eval's "metric,filter" keys: enough to tell an lm-eval file."""
    path = tmp_path / "results_2026-01-01T00-00-00.json"
    path.write_text('{"results": {"fmtspec_cb_1shot": {"acc,none": 0.5}}}')
    (checkpoint,) = load_checkpoints([f"a={path}"])
    assert row_cells(build([checkpoint], "a").markdown, "CB") == ["acc", "50.00"]


@pytest.mark.parametrize("content, message", [
    ('{"format": "fmtspec-run/1"}', "is not an lm-eval results file: it has no 'results' key"),
    ('{"results": {"cb": {"acc": 0.5}}}', "no 'metric,filter' scores and none of lm-eval's keys"),
    ('{"results": {}, "versions": {}}', "'results' is not a {task: {metric: value}} map"),
    ('{"step": 1, "loss": 2.0}\n{"step": 2}', "is not an lm-eval results file: invalid JSON"),
    ('[1, 2]', "is not an lm-eval results file: a JSON list, not an object"),
    ('{"results": {"cb": 0.5}, "versions": {}, "n-shot": {}}', "'results' is not a {task: {metric: value}} map"),
])
def test_not_an_lm_eval_results_file(tmp_path, content, message):
    path = tmp_path / "results_2026-01-01T00-00-00.json"
    path.write_text(content)
    with pytest.raises(FmtspecError, match=re.escape(message)):
        load_checkpoints([f"a={path}"])


def test_format_signal_has_one_row_per_task_with_both_shot_counts(tmp_path):
    tasks = {"fmtspec_cb_1shot": {"acc": 0.5, "fmt_label_share": 0.25},
             "fmtspec_cb_4shot": {"acc": 0.5, "fmt_label_share": 0.5},
             "fmtspec_rte": {"acc": 0.9, "fmt_label_share": 1.0}}
    markdown = board_of(tmp_path, {"a": tasks}, baseline="a")
    signal = markdown[markdown.index("## Format specialization"):]
    assert [line.split("|")[1].strip() for line in signal.splitlines() if line.startswith("| CB")] == ["CB"]
    assert row_cells(signal, "CB") == ["25.00", "50.00"]
    assert row_cells(signal, "RTE (0-shot)") == ["100.00", "—"]


# ------------------------------------------------------------------------------------------------
# Shot counts and truncation as the results files record them


def suite_tasks(shots: int, value: float, **extra) -> dict:
    """The 8 unseen tasks named for `shots`, each at `value` on the 0-100 scale."""
    return {f"fmtspec_{info.key}_{shots}shot": {info.metric: value / info.scale, **extra} for info in SUITE}


def notes_of(markdown: str) -> str:
    return markdown.split("## Notes", 1)[1] if "## Notes" in markdown else ""


def test_shot_count_comes_from_the_results_file(tmp_path):
    """`lm_eval --num_fewshot 4 --tasks fmtspec_suite_1shot`: 4-shot results, in the 4-shot column."""
    write_results(tmp_path / "base", suite_tasks(4, 20.0), model_args="pretrained=base")
    odd = suite_tasks(1, 30.0)
    odd["fmtspec_suite_1shot"] = {"norm_avg": 31.0}  # the group's own average, which the board cross-checks
    path = write_results(tmp_path / "odd", odd, model_args="pretrained=odd", num_fewshot=4)
    data = json.loads(path.read_text())
    assert data["n-shot"]["fmtspec_cb_1shot"] == 4 and data["n-shot"]["fmtspec_suite_1shot"] == 4
    board = build(load_checkpoints([f"base={tmp_path / 'base'}", f"odd={tmp_path / 'odd'}"]), "base")
    assert board.shots == [4]
    header = next(line for line in board.markdown.splitlines() if line.startswith("| Task | Metric"))
    assert header == "| Task | Metric | base 4-shot | odd 4-shot |"
    assert row_cells(board.markdown, "CB") == ["acc", "20.00", "**30.00**"]
    assert row_cells(board.markdown, "**Norm. Avg.**") == ["mean of 8", "20.00", "**30.00** (+10.00)"]
    assert board.norm_avg == {("base", 4): 20.0, ("odd", 4): 30.0}
    (line,) = [line for line in notes_of(board.markdown).splitlines() if "shot counts other than" in line]
    assert line.split(". ", 1)[1].startswith("odd: shot counts other than the task names say")
    listed = line.split("named 1-shot, ran 4-shot: ")[1].rstrip(".").split(", ")
    assert sorted(listed) == sorted([*(f"fmtspec_{info.key}_1shot" for info in SUITE), "fmtspec_suite_1shot (group)"])
    notes = notes_of(board.markdown)
    # the group's norm_avg is checked against the column its tasks ran in
    assert "odd 4-shot: the results' group reports norm_avg 31.0000, the board computes 30.00" in notes
    assert "base: shot counts" not in notes  # the consistent file gets no note


@pytest.mark.parametrize("drop, column", [
    (("n-shot",), "4-shot"),  # files without `n-shot`: the task's config says
    (("n-shot", "configs"), "1-shot"),  # neither: the task's name says
])
def test_shot_count_fallbacks(tmp_path, drop, column):
    path = write_results(tmp_path / "out", suite_tasks(1, 30.0), num_fewshot=4)
    data = json.loads(path.read_text())
    for key in drop:
        del data[key]
    path.write_text(json.dumps(data))
    board = build(load_checkpoints([f"a={tmp_path / 'out'}"]), "a")
    header = next(line for line in board.markdown.splitlines() if line.startswith("| Task | Metric"))
    assert header == f"| Task | Metric | a {column} |"
    assert row_cells(board.markdown, "**Norm. Avg.**") == ["mean of 8", "30.00"]
    assert ("a: shot counts other than the task names say" in board.markdown) == (column == "4-shot")


def test_two_tasks_run_with_one_shot_count(tmp_path):
    """`--tasks fmtspec_cb_1shot,fmtspec_cb_4shot --num_fewshot 4`: the 4shot task keeps the 4-shot cell."""
    write_results(tmp_path / "out", {"fmtspec_cb_1shot": {"acc": 0.1}, "fmtspec_cb_4shot": {"acc": 0.4}},
                  num_fewshot=4)
    markdown = build(load_checkpoints([f"a={tmp_path / 'out'}"]), "a").markdown
    assert row_cells(markdown, "CB") == ["acc", "40.00"]
    assert ("named 1-shot, ran 4-shot: fmtspec_cb_1shot (not shown: fmtspec_cb_4shot holds its cell)."
            in notes_of(markdown))


def test_name_rule_agrees_with_the_task_yamls():
    """The count a name says (for names without one: the YAML's) is what lm-eval runs the task with."""
    from leaderboards.board import named_shots

    tasks = [name for name in TASK_YAMLS if name.startswith("fmtspec_") and name not in GROUPS]
    assert len(tasks) > 30
    for name in [*tasks, *GROUPS]:
        assert named_shots(name) == shots_run(name), name


def test_truncated_requests_are_noted(tmp_path):
    tasks = {**suite_tasks(1, 30.0), "arc_easy": {"acc": 0.5}}
    truncated = {"fmtspec_xsum_1shot": 12, "fmtspec_cb_1shot": 0, "arc_easy": 3}
    path = write_results(tmp_path / "p", tasks, model_args="pretrained=p", limit=20, truncated=truncated)
    write_results(tmp_path / "hf", tasks, model_args="pretrained=hf")  # stock `hf` results: no such key
    zeros = write_results(tmp_path / "z", tasks, model_args="pretrained=z", truncated={"fmtspec_xsum_1shot": 0})
    data = json.loads(path.read_text())
    documents = data["n-samples"]["fmtspec_xsum_1shot"]["effective"]
    markdown = build(load_checkpoints([f"p={path}", f"hf={tmp_path / 'hf'}", f"z={zeros}"]), "hf").markdown
    (line,) = [line for line in notes_of(markdown).splitlines() if "truncated" in line]
    assert line.split(". ", 1)[1].startswith("p: requests whose context was truncated to fit the model: ")
    assert f"fmtspec_xsum_1shot 12 of {documents}" in line  # generation tasks: one request per document
    assert line.endswith("arc_easy 3, fmtspec_xsum_1shot 12 of 20.")  # multiple choice: no request total
    assert "fmtspec_cb_1shot" not in line  # 0 truncated: nothing to say


def test_truncation_goes_with_the_file_that_supplied_the_result(tmp_path):
    out = tmp_path / "out"
    write_results(out, {"fmtspec_xsum_1shot": {"rouge2": 0.1}, "fmtspec_cb_1shot": {"acc": 0.5}},
                  stamp="2026-01-01T10-00-00.000000", truncated={"fmtspec_xsum_1shot": 5, "fmtspec_cb_1shot": 2})
    write_results(out, {"fmtspec_xsum_1shot": {"rouge2": 0.2}}, stamp="2026-01-02T10-00-00.000000",
                  truncated={"fmtspec_xsum_1shot": 0})  # rerun with room for the whole context
    markdown = build(load_checkpoints([f"a={out}"]), "a").markdown
    assert "a: requests whose context was truncated to fit the model: fmtspec_cb_1shot 2 of 100." in markdown
