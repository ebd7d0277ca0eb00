"""`fmtspec leaderboard` and `python -m leaderboards`: files written, plots rendered, one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from fmtspec.cli import main
from test_leaderboards import TABLE_5_3, paper_tasks, row_cells, write_results


def make_experiment(root, with_runs=True):
    """Pretrained + two run folders (metrics.jsonl) with the results of ProMoT Table 5.3's first columns."""
    for i, label in enumerate(["pretrained", "finetune", "promot"]):
        folder = root / label
        folder.mkdir(parents=True)
        if i and with_runs:
            (folder / "run.json").write_text(json.dumps(
                {"format": "fmtspec-run/1", "method": label, "base_model": "google/mt5-xxl", "model": "model"}))
            rows = []  # as trainers/trainer.py logs them: training rows, and validation rows every 100 steps
            for step in range(10, 501, 10):
                rows.append({"step": step, "stage": 1, "loss": 3 * math.exp(-step / (100 * i)) + 0.5, "lr": 1e-3,
                             "tokens_per_s": 1000.0})
                if step % 100 == 0:
                    bleu = 20 + 10 * i * (1 - math.exp(-step / 200))
                    rows.append({"step": step, "stage": 1, "val_bleu": bleu, "val_score": bleu,
                                 "val_fmt_label_share": 0.0})
            (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        tasks = paper_tasks(TABLE_5_3["tasks"], i, (1, 4), TABLE_5_3["targets"])
        tasks["fmtspec_wmt14_en_fr"]["bleu_stderr"] = 0.5
        write_results(folder / "eval", tasks, model_args=f"pretrained={folder / 'model'}")
    return root


def test_cli_board_and_plots(tmp_path, capsys):
    from PIL import Image

    experiment = make_experiment(tmp_path / "exp")
    out, plots = tmp_path / "board" / "board.md", tmp_path / "plots"
    rc = main(["leaderboard", str(experiment), "--baseline", "pretrained", "--output", str(out),
               "--plots", str(plots), "--stderr"])
    assert rc == 0
    markdown = out.read_text()
    assert row_cells(markdown, "**Norm. Avg.**")[1:5] == ["17.52", "18.75", "9.15 (-8.37)", "11.67 (-7.07)"]
    assert row_cells(markdown, "WMT14 En-Fr (target, 0-shot)")[1:4:2] == ["1.98 ± 0.50", "**41.80 ± 0.50**"]
    # run folders found from model_args (pretrained=RUN_DIR/model); the pretrained results have none
    assert f"`{experiment / 'finetune'}` |" in row_cells(markdown, "finetune")[-1] + " |"
    assert row_cells(markdown, "**pretrained** (baseline)")[-1] == ""
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"wrote {out}"
    sizes = {}
    for name in ("norm_avg.png", "tradeoff.png", "training_loss.png"):
        assert f"wrote {plots / name}" in printed
        with Image.open(plots / name) as image:
            assert image.format == "PNG"
            sizes[name] = image.size
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20  # something was drawn
    # figure inches x 150 dpi: 3 checkpoints -> 6 x 4.2 in; one target panel; loss + validation panels
    assert sizes == {"norm_avg.png": (900, 630), "tradeoff.png": (780, 660), "training_loss.png": (1950, 630)}


def test_no_training_curves_without_run_folders(tmp_path):
    experiment = make_experiment(tmp_path / "exp", with_runs=False)
    assert main(["leaderboard", str(experiment), "--baseline", "pretrained", "--output",
                 str(tmp_path / "b.md"), "--plots", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["norm_avg.png", "tradeoff.png"]


@pytest.mark.parametrize("case, message", [
    ("unknown_baseline", "unknown baseline label 'pre'; the labels are: a, b"),
    ("same_label", "two PATHs have the label 'a'"),
    ("not_results", "is not an lm-eval results file: it has no 'results' key"),
    ("no_such_path", "nowhere: no such file or folder"),
    ("empty_folder", "no lm-eval results files (results_*.json) under"),
])
def test_bad_input_fails_with_one_line(tmp_path, capsys, case, message):
    a = write_results(tmp_path / "a", {"fmtspec_cb_1shot": {"acc": 0.5}}, model_args="pretrained=a")
    b = write_results(tmp_path / "b", {"fmtspec_cb_1shot": {"acc": 0.6}}, model_args="pretrained=b")
    (tmp_path / "run.json").write_text('{"format": "fmtspec-run/1"}')
    (tmp_path / "empty").mkdir()
    paths, baseline = {
        "unknown_baseline": ([f"a={a}", f"b={b}"], "pre"),
        "same_label": ([f"a={a}", f"a={b}"], "a"),
        "not_results": ([f"a={a}", f"b={tmp_path / 'run.json'}"], "a"),
        "no_such_path": ([f"a={a}", f"b={tmp_path / 'nowhere'}"], "a"),
        "empty_folder": ([f"a={a}", f"b={tmp_path / 'empty'}"], "a"),
    }[case]
    out = tmp_path / "board.md"
    assert main(["leaderboard", *paths, "--baseline", baseline, "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fmtspec leaderboard: ") and message in err
    assert not out.exists()


def run_module(*args, cwd):
    return subprocess.run([sys.executable, "-m", "leaderboards", *args], capture_output=True, text=True, cwd=cwd)


def test_python_dash_m(tmp_path):
    a = write_results(tmp_path / "a", {"fmtspec_cb_1shot": {"acc": 0.5}})
    usage = run_module(str(a), "--output", "x.md", cwd=tmp_path)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1 and "--baseline" in usage.stderr
    bad = run_module(f"a={a}", "--baseline", "b", "--output", "x.md", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr == "leaderboard: unknown baseline label 'b'; the labels are: a\n"
    good = run_module(f"a={a}", "--baseline", "a", "--output", "x.md", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert row_cells((tmp_path / "x.md").read_text(), "CB") == ["acc", "50.00"]


def test_cli_module_is_import_light():
    code = ("import sys, leaderboards.cli, leaderboards.board, leaderboards.results\n"
            "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'matplotlib', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
