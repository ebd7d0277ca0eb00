"""fmtspec.lm_eval_batch: several stock `lm_eval` command lines in one process give the results files the
command gives one by one, and `fmtspec experiment` reads each job's log and failure from the batch."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fmtspec.core.errors import FmtspecError
from fmtspec.core.lm_eval_plugin import tasks_dir
from fmtspec.lm_eval_batch import DONE, _reuse_task_index, run_jobs

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
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([argv(model, tmp_path / f"batch{i}") for i, model in enumerate(models)]))
    # the two stock commands and the batch side by side (independent processes; their start-up is the cost)
    commands = [[LM_EVAL, *argv(model, tmp_path / f"cli{i}")] for i, model in enumerate(models)]
    commands.append([sys.executable, "-m", "fmtspec.lm_eval_batch", str(jobs)])
    logs = [(tmp_path / f"out{i}.log", tmp_path / f"err{i}.log") for i in range(len(commands))]
    procs = [subprocess.Popen(cmd, stdout=out.open("w"), stderr=err.open("w"), env=env)
             for cmd, (out, err) in zip(commands, logs)]
    for proc, (_, err) in zip(procs, logs):
        assert proc.wait(timeout=300) == 0, err.read_text()[-2000:]
    assert [line for line in logs[-1][0].read_text().splitlines() if line.endswith(" done")] == \
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
    from fmtspec.scoring import run_scores, score_job

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


def test_the_task_index_is_built_once_per_set_of_folders(monkeypatch):
    from lm_eval.tasks import _index

    calls = []

    def build(paths, *, resolve_includes=True):
        calls.append((list(paths), resolve_includes))
        return {"fmtspec_rte": "entry"}

    monkeypatch.setattr(_index.TaskIndex, "build", staticmethod(build))  # put back after the memo replaced it
    _reuse_task_index()
    first = _index.TaskIndex.build([Path("a")])
    first["mine"] = "added"  # a TaskManager adds to its own copy
    assert _index.TaskIndex.build([Path("a")]) == {"fmtspec_rte": "entry"}
    _index.TaskIndex.build([Path("a")], resolve_includes=False)
    assert calls == [([Path("a")], True), ([Path("a")], False)]


def test_a_task_index_build_of_another_signature_is_left_alone(monkeypatch):
    from lm_eval.tasks import _index

    def build(paths, *, resolve_includes=True, workers=1):
        return {}

    monkeypatch.setattr(_index.TaskIndex, "build", staticmethod(build))
    _reuse_task_index()
    assert _index.TaskIndex.build is build


def test_jobs_run_when_lm_evals_private_task_index_has_moved(tiny_models, offline_data, tmp_path, monkeypatch,
                                                              capsys):
    """No memo to install: each job indexes its task folders again, and both jobs write their results."""
    import lm_eval.tasks
    import lm_eval.utils
    from lm_eval.tasks import manager

    builtin = Path(manager.__file__).parent
    build = manager.TaskIndex.build
    indexed = []

    def fmtspec_only(paths, *, resolve_includes=True):  # the built-in tasks left out: 7 s less per job
        paths = [p for p in paths if Path(p) != builtin]
        indexed.append(paths)
        return build(paths, resolve_includes=resolve_includes)

    monkeypatch.setattr(manager.TaskIndex, "build", staticmethod(fmtspec_only))
    monkeypatch.setattr(lm_eval.tasks, "_index", SimpleNamespace())  # where the memo looks: no TaskIndex there
    monkeypatch.setattr(lm_eval.utils, "setup_logging", lambda: None)  # this process's logging stays pytest's
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv("RANK", raising=False)
    outs = [tmp_path / "job0", tmp_path / "job1"]
    run_jobs([argv(tiny_models["gpt2"], out, tasks="fmtspec_rte") for out in outs])
    assert [line for line in capsys.readouterr().out.splitlines() if line.endswith(" done")] == \
        [DONE.format(0), DONE.format(1)]
    for out in outs:
        assert "fmtspec_rte" in results(out)["results"]
    assert [paths for paths in indexed if paths] == [[Path(tasks_dir())]] * 2
