"""`fmtspec demo` (= `make demo`): the wiring around `fmtspec experiment experiments/demo_tiny.yaml`.
The full demo takes minutes; tests/test_experiment.py runs the same machinery end to end on a smaller
experiment, and the demo itself is run by hand (README)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def captured(monkeypatch):
    """Replace the experiment run by a recorder of what the demo asked for and the environment it set."""
    import fmtspec.experiment as experiment

    seen = {}

    def fake_run(exp, stream=False):
        seen.update(exp=exp, env={k: os.environ.get(k) for k in ("FMTSPEC_DATA_DIR", "HF_HUB_OFFLINE",
                                                                 "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")})
        return {"leaderboard": exp.output / "leaderboard.md", "plots": [], "diagnostics": []}

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    for key in ("FMTSPEC_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    return seen


def test_demo_runs_the_tiny_experiment_offline(captured, tmp_path, capsys):
    from fmtspec.cli import main
    from fmtspec.experiment import PRETRAINED
    from trainers.config import FINETUNE_METHODS

    assert main(["demo", "--output", str(tmp_path / "demo_out"), "--limit", "3"]) == 0
    exp = captured["exp"]
    assert exp.source == REPO / "experiments" / "demo_tiny.yaml"
    assert exp.output == (tmp_path / "demo_out").resolve()
    assert exp.run_dir("promot") == exp.output / "runs" / "promot"
    assert exp.lm_eval["limit"] == 3
    assert {r.method for r in exp.runs} == {PRETRAINED, *FINETUNE_METHODS}  # a row for every method
    assert exp.base_model == "tiny:mt5" and {"fmtspec_suite", "fmtspec_targets"} <= set(exp.tasks)
    assert captured["env"] == {"FMTSPEC_DATA_DIR": str(REPO / "harness_tasks" / "fixtures"), "HF_HUB_OFFLINE": "1",
                               "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    printed = capsys.readouterr().out
    assert f"leaderboard   {exp.output / 'leaderboard.md'}" in printed and "plots" in printed


def test_demo_bad_limit_is_one_line(captured, tmp_path, capsys):
    from fmtspec.cli import main

    assert main(["demo", "--output", str(tmp_path / "d"), "--limit", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fmtspec demo: --limit must be at least 1, got 0"]
    assert "exp" not in captured
