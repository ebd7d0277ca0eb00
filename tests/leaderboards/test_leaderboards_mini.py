"""The miniature world on the board: runs `<label>_s<seed>` as mean ± sd over seeds, deltas against the
mini baseline, one board beside the real suite's table (the demo), and the Figures 1-2 curves per method."""

from __future__ import annotations

import statistics

import pytest

from harness_tasks.catalog import MINI
from leaderboards.board import build, fmt, seed_groups
from leaderboards.results import load_checkpoints
from test_leaderboards import row_cells, write_results

PNG = b"\x89PNG\r\n\x1a\n"


def mini_tasks(score: float, share: float, target: float) -> dict:
    """Every mini task at exact match `score` (its fmt_label_share `share`), the target at `target`."""
    tasks = {f"fmtspec_{info.key}": {"exact_match": score, "fmt_label_share": share} for info in MINI}
    tasks["fmtspec_mini_target"] = {"exact_match": target, "fmt_label_share": 1.0}
    return tasks


@pytest.fixture
def mini_board(tmp_path):
    runs = {"mini_pretrained": (0.40, 0.125, 0.10), "mini_finetune_s0": (0.20, 0.60, 0.95),
            "mini_finetune_s1": (0.10, 0.80, 0.99), "mini_promot_s0": (0.35, 0.15, 0.90),
            "mini_promot_s1": (0.30, 0.25, 0.80)}
    specs = []
    for label, values in runs.items():
        write_results(tmp_path / label, mini_tasks(*values), model_args=f"pretrained=/runs/{label}")
        specs.append(f"{label}={tmp_path / label}")
    write_results(tmp_path / "pretrained", {"fmtspec_rte": {"acc": 0.5}, "fmtspec_cb_1shot": {"acc": 0.25}},
                  model_args="pretrained=/models/mt5")
    specs.append(f"pretrained={tmp_path / 'pretrained'}")
    return build(load_checkpoints(specs), ["pretrained", "mini_pretrained"]), runs, specs


def test_seed_groups():
    assert seed_groups(["pretrained", "ft_s0", "ft_s1", "pt_s2", "x_sy"]) == {
        "pretrained": ["pretrained"], "ft": ["ft_s0", "ft_s1"], "pt": ["pt_s2"], "x_sy": ["x_sy"]}


def test_mini_table_shows_mean_and_spread_over_seeds(mini_board):
    board, runs, _ = mini_board
    md = board.markdown
    assert "## Miniature world" in md
    header = next(line for line in md.splitlines() if line.startswith("| Task (exact match x100)"))
    assert header == "| Task (exact match x100) | **mini_pretrained** | mini_finetune | mini_promot |"
    ft = [runs["mini_finetune_s0"], runs["mini_finetune_s1"]]
    mean = statistics.mean(100 * r[0] for r in ft)
    sd = statistics.stdev(100 * r[0] for r in ft)
    change = 100 * (mean / 40 - 1)
    assert row_cells(md, "**Mean of 8** (1-shot)") == [
        "40.00", f"{fmt(mean)} ± {fmt(sd)} ({fmt(mean - 40, signed=True)}; {fmt(change, signed=True)}%)",
        "32.50 ± 3.54 (-7.50; -18.75%)"]
    share = statistics.mean(100 * r[1] for r in ft)
    assert row_cells(md, "**True/False share** x100") == [
        "12.50", f"{fmt(share)} ± {fmt(statistics.stdev(100 * r[1] for r in ft))} ({fmt(share - 12.5, signed=True)})",
        "20.00 ± 7.07 (+7.50)"]
    assert row_cells(md, "Target (0-shot)") == ["10.00", "97.00 ± 2.83", "85.00 ± 7.07"]
    assert row_cells(md, "Seeds") == ["1", "2", "2"]
    assert "- **mini_finetune**: True/False share 70.00 vs 12.50 (+57.50 points); mean of the 8 tasks 15.00 vs " \
           "40.00 (-62.50%)" in md
    assert board.mini["baseline"] == "mini_pretrained"
    assert board.mini["columns"]["mini_finetune"]["labels"] == ["mini_finetune_s0", "mini_finetune_s1"]


def test_mini_runs_stay_out_of_the_real_suite_tables(mini_board):
    board, _, _ = mini_board
    assert board.baseline == "pretrained" and board.main_labels == ["pretrained"]
    targets = next(line for line in board.markdown.splitlines() if line.startswith("| Task | Metric"))
    assert "mini" not in targets
    assert "deltas are against **pretrained** or **mini_pretrained** (each table: the first it holds)" in board.markdown


def test_mini_plots_and_curves(mini_board, tmp_path):
    from leaderboards.plots import write_curves, write_plots

    board, _, _ = mini_board
    written = write_plots(board, tmp_path / "plots")
    assert tmp_path / "plots" / "mini_tradeoff.png" in written

    def table(shares, means):
        rows = [{"step": step, "label_share_other_formats": s, "unseen_mean": m,
                 "tasks": {"fmtspec_mini_copy": {}}} for step, s, m in zip((0, 100, 200), shares, means)]
        return {"steps": rows}

    curves = {"mini_finetune_s0": table([0.1, 0.5, 0.7], [40, 20, 10]),
              "mini_finetune_s1": table([0.1, 0.4, 0.9], [40, 25, 15]),
              "mini_promot_s0": table([0.1, 0.1, 0.2], [40, 38, 35])}
    (path,) = write_curves(curves, tmp_path / "plots")
    assert path.name == "mini_format_specialization.png" and path.read_bytes()[:8] == PNG
    assert write_curves({}, tmp_path / "plots") == []


def test_cli_takes_a_baseline_per_world(mini_board, tmp_path):
    from fmtspec.cli import main

    board, _, specs = mini_board
    out = tmp_path / "board.md"
    assert main(["leaderboard", *specs, "--baseline", "pretrained", "--baseline", "mini_pretrained",
                 "--output", str(out)]) == 0
    text = out.read_text()
    assert text.split("Built")[1].split("\n", 1)[1] == board.markdown.split("Built")[1].split("\n", 1)[1]
    assert "**mini_pretrained** (baseline)" in text and "**pretrained** (baseline)" in text
