"""fmtspec.lm_eval_batch: several stock `lm_eval` command lines in one process give the results files the
command gives one by one, and `fmtspec experiment` reads each job's log and failure from the batch."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fmtspec.errors import FmtspecError

LM_EVAL = str(Path(sys.executable).parent / "lm_eval")
DROP = {"date", "total_evaluation_time_seconds", "start_time", "end_time", "pretty_env_info", "git_hash",
        "transformers_version", "lm_eval_version", "upper_git_hash", "model_name_sanitized", "task_hashes"}


def argv(model: Path, out: Path, tasks="fmtspec_rte,fmtspec_cb_1shot") -> list[str]:
    return ["--model", "promot_hf", "--model_args", f"pretrained={model}", "--tasks", tasks, "--limit", "2",
            "--batch_size", "4", "--gen_kwargs", "max_gen_toks=8", "--output_path", str(out)]


def results(out: Path) -> dict:
    """The results file without what differs between two runs of one command (times, function addresses)."""
    (path,) = out.rglob("results_*.json")
    data = json.loads(re.sub(r" at 0x[0-9a-f]+>", " at ADDRESS>", path.read_text()))
    return {k: v for k, v in data.items() if k not in DROP}


@pytest.mark.slow
def test_batch_gives_the_results_of_the_stock_command(tiny_models, offline_data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    models = [tiny_models["mt5"], tiny_models["gpt2"]]
    for i, model in enumerate(models):
        proc = subprocess.run([LM_EVAL, *argv(model, tmp_path / f"cli{i}")], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([argv(model, tmp_path / f"batch{i}") for i, model in enumerate(models)]))
    proc = subprocess.run([sys.executable, "-m", "fmtspec.lm_eval_batch", str(jobs)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if line.endswith(" done")] == \
        ["fmtspec-batch: job 0 done", "fmtspec-batch: job 1 done"]
    for i in range(len(models)):
        cli, batch = results(tmp_path / f"cli{i}"), results(tmp_path / f"batch{i}")
        assert batch["results"]["fmtspec_rte"] == cli["results"]["fmtspec_rte"]
        assert batch == cli


def test_a_bad_job_file_is_one_line(tmp_path):
    bad = tmp_path / "jobs.json"
    bad.write_text('{"not": "a list"}')
    proc = subprocess.run([sys.executable, "-m", "fmtspec.lm_eval_batch", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"fmtspec: {bad} must hold a list of lm_eval argument lists"


@pytest.mark.slow
def test_experiment_scores_split_logs_and_name_the_failed_job(tiny_models, offline_data, tmp_path):
    from fmtspec.experiment import run_scores, score_job

    settings = {"batch_size": 4, "limit": 1, "gen_kwargs": "max_gen_toks=4"}
    good = score_job({"pretrained": tiny_models["mt5"]}, ["fmtspec_rte"], tmp_path / "good", settings,
                     tmp_path / "logs" / "good.log", what="lm_eval on good")
    bad = score_job({"pretrained": tmp_path / "missing"}, ["fmtspec_rte"], tmp_path / "bad", settings,
                    tmp_path / "logs" / "bad.log", what="lm_eval on bad")
    with pytest.raises(FmtspecError) as err:
        run_scores([good, bad])
    message = str(err.value)
    assert message.startswith("lm_eval on bad failed (exit 1): ") and str(tmp_path / "logs" / "bad.log") in message
    assert "\n" not in message
    # the job before the failure is done and marked; each log holds its own command and output only
    assert good.ran and good.results.is_file() and (tmp_path / "good" / "score.json").is_file()
    assert bad.results is None and not (tmp_path / "bad" / "score.json").exists()
    good_log, bad_log = (tmp_path / "logs" / "good.log").read_text(), (tmp_path / "logs" / "bad.log").read_text()
    assert good_log.startswith("$ lm_eval --model promot_hf") and "fmtspec_rte" in good_log and "missing" not in good_log
    assert bad_log.startswith("$ lm_eval --model promot_hf") and "missing" in bad_log
    # a second call finds the good score done and runs only what is left
    again = score_job({"pretrained": tiny_models["mt5"]}, ["fmtspec_rte"], tmp_path / "good", settings,
                      tmp_path / "logs" / "good.log", what="lm_eval on good")
    assert again.results == good.results
    run_scores([again])
    assert not again.ran
