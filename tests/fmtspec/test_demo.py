"""`fmtspec demo` (= `make demo`): the wiring around experiments/demo_tiny.yaml and experiments/demo_mini.yaml.
The full demo takes minutes; tests/fmtspec/test_experiment.py runs the same machinery end to end on a smaller
experiment, and the demo itself is run by hand and by `make demo` (README)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_KEYS = ("FMTSPEC_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Replace the experiments' work by recorders of what the demo asked for and the environment it set."""
    import fmtspec.bases as bases
    import fmtspec.experiment as experiment

    seen = {"runs": [], "boards": []}

    def fake_run(exp, stream=False, board=True):
        seen["runs"].append((exp, {k: os.environ.get(k) for k in ENV_KEYS}, board))
        return {"leaderboard": None, "plots": [], "diagnostics": []}

    def fake_start(exp, model):
        seen["pretrain"] = (exp.name, model, os.environ.get("FMTSPEC_DATA_DIR"))
        return None

    def fake_board(output, experiments):
        seen["boards"].append((output, [e.name for e in experiments]))
        return [output / "leaderboard.md"]

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    monkeypatch.setattr(bases, "start_pretraining", fake_start)
    monkeypatch.setattr(experiment, "write_leaderboard", fake_board)
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FMTSPEC_CACHE", str(tmp_path / "cache"))
    return seen


def test_demo_runs_the_tiny_and_the_miniature_experiments_offline(captured, tmp_path, capsys):
    from fmtspec.cli import main
    from fmtspec.experiment_file import PRETRAINED
    from harness_tasks.mini_world import default_world
    from trainers.methods import FINETUNE_METHODS

    assert main(["demo", "--output", str(tmp_path / "demo_out"), "--limit", "3"]) == 0
    (tiny, tiny_env, tiny_board), (mini, mini_env, mini_board) = captured["runs"]
    out = (tmp_path / "demo_out").resolve()
    # the real suite on the tiny mT5 and the fixtures: a row for every method
    assert tiny.source == REPO / "experiments" / "demo_tiny.yaml" and tiny.output == out
    assert tiny.run_dir("promot") == out / "runs" / "promot"
    assert {r.method for r in tiny.runs} == {PRETRAINED, *FINETUNE_METHODS}
    assert tiny.base_model == "tiny:mt5" and {"fmtspec_suite", "fmtspec_targets"} <= set(tiny.tasks)
    # the miniature world: pretrained, prompt tuning, fine-tuning, ProMoT, 2 seeds, into the same folder
    assert mini.source == REPO / "experiments" / "demo_mini.yaml" and mini.output == out
    labels = [r.label for r in mini.runs]
    assert "mini_pretrained" in labels and mini.baseline == "mini_pretrained"
    for method in ("prompt_tuning", "finetune", "promot"):
        for seed in (0, 1):
            assert mini.run_dir(f"mini_{method}_s{seed}") == out / "runs" / f"mini_{method}_s{seed}"
            assert mini.run(f"mini_{method}_s{seed}").method == method
    assert mini.base_model == str(REPO / "models" / "mini_pretrained" / "model")  # the shipped base
    assert {"fmtspec_mini", "fmtspec_mini_target"} <= set(mini.tasks)
    # fine-tuning and ProMoT's stage 2 share their settings, as in the paper; ProMoT's stage 1 is the
    # prompt-tuning run of its seed (the same training, not done twice)
    ft, pm = mini.run("mini_finetune_s0").raw_config, mini.run("mini_promot_s0").raw_config
    assert ft["model_training"] == pm["model_training"] and ft["batch_size"] == pm["batch_size"]
    for seed in (0, 1):
        assert mini.run(f"mini_promot_s{seed}").raw_config["stage1_from"] == str(out / "runs" /
                                                                                f"mini_prompt_tuning_s{seed}")
    assert tiny.lm_eval["limit"] == mini.lm_eval["limit"] == 3
    # each reads its own data, offline; one board over both
    fixtures = str(REPO / "harness_tasks" / "fixtures")
    assert tiny_env == {"FMTSPEC_DATA_DIR": fixtures, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1"}
    assert mini_env["FMTSPEC_DATA_DIR"] == str(default_world()) != fixtures
    assert tiny.env["FMTSPEC_DATA_DIR"] == fixtures and mini.env["FMTSPEC_DATA_DIR"] == str(default_world())
    assert "pretrain" not in captured  # nothing to pretrain: the base ships with the checkout
    assert not tiny_board and not mini_board and captured["boards"] == [(out, ["demo_tiny", "demo_mini"])]
    printed = capsys.readouterr().out
    assert f"leaderboard   {out / 'leaderboard.md'}" in printed and "mini_<method>_s<seed>" in printed


def test_demo_bad_limit_is_one_line(captured, tmp_path, capsys):
    from fmtspec.cli import main

    assert main(["demo", "--output", str(tmp_path / "d"), "--limit", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fmtspec demo: --limit must be at least 1, got 0"]
    assert not captured["runs"]
