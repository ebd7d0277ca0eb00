"""`fmtspec experiment`: the schema's one-line errors, the shipped experiment files, and one small experiment
run end to end on the tiny mT5 and the fixtures (train two methods, score them with the stock lm_eval CLI,
score the checkpoints, write the leaderboard, the plots and the diagnostics), then run again (nothing is
redone) and after an interrupted run (training resumes)."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
PNG = b"\x89PNG\r\n\x1a\n"

SMALL = """\
name: small
base_model: {model}
tasks: [fmtspec_rte, fmtspec_cb_1shot]
checkpoint_tasks: [fmtspec_triviaqa_1shot]
baseline: finetune
lm_eval: {{batch_size: 4, limit: 2}}
train:
  tasks: [fmtspec_rte]
  prompt: {{length: 4}}
  prompt_training: {{steps: 2, eval_every: 2, lr: 0.3}}
  model_training: {{steps: 4, eval_every: 2, lr: 3.0e-3}}
  batch_size: 4
  max_input_length: 96
  max_target_length: 12
  data: {{limit: 8}}
  eval: {{limit: 2, max_new_tokens: 4, batch_size: 4}}
runs:
  - {{label: finetune, method: finetune, checkpoints: all}}
  - {{label: prompt_tuning, config: configs/tiny/prompt_tuning.yaml}}
alignment: {{runs: [finetune], steps: [0, 2, final], batches: 1, batch_size: 4}}
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---- the schema ------------------------------------------------------------------------------------

BASE = """\
name: x
base_model: some/model
tasks: [fmtspec_rte]
runs:
  - {label: pretrained, method: pretrained}
  - {label: ft, method: finetune, train: {tasks: [fmtspec_rte]}}
"""


@pytest.mark.parametrize("text, message", [
    (BASE + "taks: [fmtspec_rte]\n", "unknown key 'taks' (did you mean 'tasks'?)"),
    (BASE + "lm_eval: {batchsize: 4}\n", "unknown key 'lm_eval.batchsize' (did you mean 'batch_size'?)"),
    (BASE + "  - {label: b, method: finetune, checkpoint: all}\n",
     "unknown key 'runs[2].checkpoint' (did you mean 'checkpoints'?)"),
    (BASE + "  - {label: b, method: fintune}\n", "unknown method 'fintune' (did you mean 'finetune'?)"),
    (BASE + "  - {label: b, method: finetune, init_from: fx}\n",
     "init_from 'fx' is not the label of an earlier trained run (did you mean 'ft'?)"),
    (BASE + "  - {label: ft, method: finetune}\n", "two runs have the label 'ft'"),
    (BASE + "baseline: pretraind\n", "baseline 'pretraind' is not a run label (did you mean 'pretrained'?)"),
    (BASE.replace("tasks: [fmtspec_rte]\nruns", "tasks: [fmtspec_rtee]\nruns"),
     "unknown task 'fmtspec_rtee' in 'tasks' (did you mean 'fmtspec_rte'?)"),
    (BASE + "  - {label: b, method: finetune, train: {model_training: {stepz: 3}}}\n",
     "run 'b': unknown config key 'model_training.stepz' (did you mean 'model_training.steps'?)"),
    (BASE + "  - {label: b, config: nowhere.yaml}\n", "file not found: nowhere.yaml"),
    (BASE + "  - {label: b, method: pretrained, init_from: ft}\n",
     "a pretrained run is only scored; remove 'init_from'"),
    (BASE + "jobs: 0\n", "'jobs' must be an integer >= 1, got 0"),
    (BASE + "  - {label: b, method: promot, stage1_from: ft}\n",
     "stage1_from 'ft' is not the label of an earlier prompt_tuning run"),
])
def test_bad_experiments_fail_with_one_line(tmp_path, capsys, text, message):
    from fmtspec.cli import main

    path = write(tmp_path, text)
    with pytest.raises(FmtspecError) as err:
        from fmtspec.experiment_file import load_experiment

        load_experiment(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert main(["experiment", str(path), "--check"]) == 1  # the CLI: one line on stderr, exit 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and message in err_lines[0]


def test_shipped_experiments_are_valid(tmp_path):
    """experiments/*.yaml (the papers' tables, for GPUs, and the demo) load with every run's config checked."""
    from fmtspec.experiment_file import PRETRAINED, load_experiment
    from trainers.methods import FINETUNE_METHODS

    files = sorted((REPO / "experiments").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        exp = load_experiment(path, tmp_path / path.stem)
        assert exp.baseline in [r.label for r in exp.runs]
        for run in exp.runs:
            if run.init_from:  # chains start from the parent's run folder in this experiment
                assert run.raw_config["init_from"] == str(exp.run_dir(run.init_from))
    demo = load_experiment(REPO / "experiments" / "demo_tiny.yaml", tmp_path / "demo")
    assert {r.method for r in demo.runs} == {PRETRAINED, *FINETUNE_METHODS}  # the demo trains every method
    rte = load_experiment(REPO / "experiments" / "promot_rte_mt5_xxl.yaml", tmp_path / "rte")
    assert rte.base_model == "google/mt5-xxl"
    assert {r.method for r in rte.runs} == {PRETRAINED, *FINETUNE_METHODS}


def test_chain_and_overrides_are_merged(tmp_path):
    """Shared `train` < the run's config file < the run's `train`; base_model replaces the config's model."""
    from fmtspec.experiment_file import load_experiment

    path = write(tmp_path, """\
        name: chain
        base_model: base/model
        tasks: [fmtspec_teach_twice]
        train: {batch_size: 4, seed: 3}
        runs:
          - {label: pretrained, method: pretrained}
          - {label: a, config: configs/teach_twice/a2t.yaml, train: {seed: 5}}
          - {label: b, config: configs/teach_twice/a2t_to_reviews.yaml, init_from: a}
        """)
    exp = load_experiment(path, tmp_path / "out")
    a, b = exp.run("a").raw_config, exp.run("b").raw_config
    assert (a["batch_size"], a["seed"], a["model"], a["preset"]) == (4, 5, "base/model", "teach_twice_a2t")
    assert b["init_from"] == str(tmp_path / "out" / "runs" / "a") and b["preset"] == "teach_twice_reviews"


def test_launcher_trains_through_the_given_command(tmp_path, monkeypatch):
    """`launcher:` replaces `python -m fmtspec train` (e.g. scripts/train_single_node.sh); it gets the merged
    CONFIG.yaml, --output RUN_DIR and, for an interrupted run, --resume."""
    from fmtspec.experiment import load_experiment, train_run

    fake = write(tmp_path, """\
        import json, sys
        from pathlib import Path
        from trainers.config import load_config
        with open(Path(__file__).with_name("argv.jsonl"), "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        out = Path(sys.argv[sys.argv.index("--output") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if "--fail" not in open(sys.argv[1]).read():
            config = load_config(sys.argv[1])
            (out / "run.json").write_text(json.dumps({"format": "fmtspec-run/1", "config": config}))
        """, "fake_train.py")
    import sys

    path = write(tmp_path, BASE + f"launcher: {sys.executable} {fake}\n")
    exp = load_experiment(path, tmp_path / "out")
    assert exp.launcher == [sys.executable, str(fake)]
    run_dir = exp.run_dir("ft")
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")  # an interrupted run: resumed
    train_run(exp, exp.run("ft"))
    argv = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert argv == [[str(tmp_path / "out" / "configs" / "ft.yaml"), "--output", str(run_dir), "--resume"]]
    assert exp.log[-1]["action"] == "resume"
    train_run(exp, exp.run("ft"))  # finished: not launched again
    assert len((tmp_path / "argv.jsonl").read_text().splitlines()) == 1 and exp.log[-1]["action"] == "skip-train"
    with pytest.raises(FmtspecError, match="file not found: nowhere/train.sh"):
        load_experiment(write(tmp_path, BASE + "launcher: nowhere/train.sh --num_gpus 8\n", "bad.yaml"))


def test_miniature_experiment_runs_every_method_with_three_seeds(tmp_path):
    """experiments/mini.yaml: the shipped pretrained base, each method (and the 1-shot variants) with 3
    seeds, fine-tuning and ProMoT's stage 2 with the same lr, steps and batch, scored on the mini tasks."""
    from collections import Counter

    from fmtspec.experiment_file import PRETRAINED, load_experiment
    from trainers.config import load_config
    from trainers.methods import FINETUNE_METHODS

    exp = load_experiment(REPO / "experiments" / "mini.yaml", tmp_path / "mini")
    assert exp.base_model == str(REPO / "models" / "mini_pretrained" / "model")
    assert set(exp.tasks) == {"fmtspec_mini", "fmtspec_mini_target"}
    groups = Counter(r.label.rsplit("_s", 1)[0] for r in exp.runs)
    assert groups == {"pretrained": 1, "prompt_tuning": 3, "finetune": 3, "promot": 3, "finetune_1shot": 3,
                      "promot_1shot": 3, "joint": 3, "random_prompt": 3}
    assert {r.method for r in exp.runs} == {PRETRAINED, *FINETUNE_METHODS}
    configs = {r.label: load_config(None, raw={**r.raw_config, "model": "x"}) for r in exp.runs if r.raw_config}
    assert {configs[f"promot_1shot_s{s}"]["shots"] for s in range(3)} == {1}
    assert sorted(configs[f"finetune_s{s}"]["seed"] for s in range(3)) == [0, 1, 2]
    shared = {(c["model_training"]["lr"], c["model_training"]["steps"], c["batch_size"])
              for label, c in configs.items() if c["method"] in ("finetune", "promot")}
    assert len(shared) == 1


def test_seeds_expand_into_one_run_per_seed(tmp_path):
    """`seeds: [0, 1]` is one run per seed (`<label>_s<seed>`, config key `seed`); a chain from seeded runs
    starts each seed from its own seed's run."""
    from fmtspec.experiment_file import load_experiment

    path = write(tmp_path, BASE
                 + "  - {label: pt, method: prompt_tuning, seeds: [0, 2], train: {tasks: [fmtspec_rte], seed: 9}}\n"
                 + "  - {label: twice, method: finetune, seeds: [0, 2], init_from: pt, train: {tasks: [fmtspec_rte]}}\n")
    exp = load_experiment(path, tmp_path / "out")
    assert [r.label for r in exp.runs] == ["pretrained", "ft", "pt_s0", "pt_s2", "twice_s0", "twice_s2"]
    assert [exp.run(f"pt_s{s}").raw_config["seed"] for s in (0, 2)] == [0, 2]  # the seed wins over `train`
    assert exp.run("ft").raw_config.get("seed") is None
    assert exp.run("twice_s2").init_from == "pt_s2"
    assert exp.run("twice_s2").raw_config["init_from"] == str(tmp_path / "out" / "runs" / "pt_s2")


@pytest.mark.parametrize("run, message", [
    ("{label: b, method: finetune, seeds: 3}", "'runs[2].seeds' must be a list of distinct integers"),
    ("{label: b, method: finetune, seeds: [1, 1]}", "'runs[2].seeds' must be a list of distinct integers"),
    ("{label: b, method: pretrained, seeds: [0, 1]}", "a pretrained run is only scored; remove 'seeds'"),
    ("{label: ft_s0, method: finetune}", "two runs have the label 'ft_s0'"),
])
def test_bad_seeds_fail_with_one_line(tmp_path, run, message):
    from fmtspec.experiment_file import load_experiment

    text = BASE.replace("{label: ft, method: finetune,", "{label: ft, method: finetune, seeds: [0],")
    with pytest.raises(FmtspecError) as err:
        load_experiment(write(tmp_path, text + f"  - {run}\n"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_chain_from_seeded_runs_needs_seeds(tmp_path):
    from fmtspec.experiment_file import load_experiment

    text = BASE.replace("{label: ft, method: finetune,", "{label: ft, method: finetune, seeds: [0, 1],")
    with pytest.raises(FmtspecError, match="init_from 'ft' has seeds"):
        load_experiment(write(tmp_path, text + "  - {label: b, method: finetune, init_from: ft}\n"))


@pytest.mark.parametrize("base, message", [
    ("pretrain:nowhere.yaml", "file not found: nowhere.yaml"),
    ("pretrain:configs/tiny/finetune.yaml", "a pretrained base needs method: pretrain"),
])
def test_bad_pretrain_base_fails_with_one_line(tmp_path, base, message):
    from fmtspec.experiment_file import load_experiment

    with pytest.raises(FmtspecError) as err:
        load_experiment(write(tmp_path, BASE.replace("some/model", base)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pretrain_base_is_pretrained_once_and_every_seed_starts_from_it(tmp_path, monkeypatch):
    """`base_model: pretrain:CONFIG` resolves to the model folder of trainers.pretrain.cached_base(CONFIG):
    pretrained on first use, found in the cache after; the pretrained run scores it and the trained runs
    (one per seed) start from it."""
    from fmtspec.bases import resolve_model
    from fmtspec.experiment import load_experiment, train_run
    from fmtspec.core.run_folder import read_manifest
    from harness_tasks.mini_world import write_world
    from trainers.config import load_config
    from trainers.pretrain import cache_root, cached_base

    write_world(tmp_path / "world", seed=0, sizes={"train": 40, "validation": 8, "test": 8})
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(tmp_path / "world"))
    monkeypatch.setenv("FMTSPEC_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path, """\
        name: mini_small
        base_model: pretrain:configs/mini/pretrain_tiny.yaml
        tasks: [fmtspec_mini_target]
        train:
          tasks: [fmtspec_mini_target]
          model_training: {steps: 2, eval_every: 0, lr: 1.0e-3}
          batch_size: 4
          max_input_length: 64
          max_target_length: 8
          data: {limit: 8}
          eval: {limit: 2, max_new_tokens: 2, batch_size: 4}
        runs:
          - {label: pretrained, method: pretrained}
          - {label: ft, method: finetune, seeds: [0, 1]}
        """)
    exp = load_experiment(path, tmp_path / "out")
    assert not cache_root().exists()  # --check and loading never pretrain
    model = resolve_model(exp, exp.run("pretrained").model)
    assert [a["action"] for a in exp.log] == ["pretrain"]
    base = cached_base(load_config(REPO / "configs" / "mini" / "pretrain_tiny.yaml"))
    assert model == str(base / "model") and (base / "model" / "tokenizer.json").is_file()
    for seed in (0, 1):
        train_run(exp, exp.run(f"ft_s{seed}"))
        manifest = read_manifest(exp.run_dir(f"ft_s{seed}"))
        assert manifest["base_model"] == model and manifest["config"]["seed"] == seed
    assert [a["action"] for a in exp.log] == ["pretrain", "train", "train"]  # pretrained once, then cached


def test_jobs_train_runs_side_by_side_and_a_chain_after_its_parent(tmp_path, monkeypatch):
    """`jobs: 2`: two runs train at once, each subprocess on half the cores; a run with init_from starts
    only when its parent is done; a failure surfaces after the others finish."""
    import threading
    import time

    import fmtspec.experiment as experiment
    import fmtspec.processes as procs

    path = write(tmp_path, "jobs: 2\ntrain: {tasks: [fmtspec_rte]}\n" + BASE + "  - {label: a, method: finetune}\n  - {label: b, method: finetune}\n"
                                              "  - {label: c, method: finetune, init_from: ft}\n")
    exp = experiment.load_experiment(path, tmp_path / "out")
    events, lock, running = [], threading.Lock(), set()
    overlap = []

    def fake_train(exp, spec, stream=False):
        with lock:
            events.append(("start", spec.label))
            running.add(spec.label)
            overlap.append(len(running))
        time.sleep(0.2)
        with lock:
            running.discard(spec.label)
            events.append(("end", spec.label))
        if spec.label == "b":
            raise FmtspecError("training run 'b' failed")

    monkeypatch.setattr(experiment, "train_run", fake_train)
    with pytest.raises(FmtspecError, match="training run 'b' failed"):
        experiment.train_all(exp)
    assert max(overlap) == 2 and {label for kind, label in events if kind == "end"} == {"ft", "a", "b", "c"}
    assert events.index(("start", "c")) > events.index(("end", "ft"))
    monkeypatch.setattr(procs.os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert procs.offline_env(exp)["OMP_NUM_THREADS"] == "4"
    assert "OMP_NUM_THREADS" not in procs.offline_env(exp, share_cores=False)


# ---- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiment(tiny_models, tmp_path_factory):
    """The small experiment, run once: (Experiment, its first invocation's actions)."""
    from fmtspec.experiment import load_experiment, run_experiment

    tmp = tmp_path_factory.mktemp("experiment")
    path = tmp / "small.yaml"
    path.write_text(SMALL.format(model=tiny_models["mt5"]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        mp.chdir(tmp)
        exp = load_experiment(path, tmp / "out")
        run_experiment(exp)
        yield exp, list(exp.log)


def actions(log):
    return sorted((a["action"], a["label"], a.get("step", -1)) for a in log)


def results_of(folder):
    marker = json.loads((folder / "score.json").read_text())
    return folder / marker["results"], json.loads((folder / marker["results"]).read_text())


@pytest.mark.slow
def test_experiment_writes_every_file(experiment):
    from fmtspec.core.run_folder import read_manifest

    exp, log = experiment
    out = exp.output
    assert actions(log) == sorted([("train", "finetune", -1), ("train", "prompt_tuning", -1),
                                   ("score", "finetune", -1), ("score", "prompt_tuning", -1),
                                   ("score", "finetune", 0), ("score", "finetune", 2), ("score", "finetune", 4),
                                   ("alignment", "finetune", -1)])
    for label, method in (("finetune", "finetune"), ("prompt_tuning", "prompt_tuning")):
        assert read_manifest(out / "runs" / label)["method"] == method
        assert (out / "configs" / f"{label}.yaml").is_file()
        assert (out / "logs" / f"{label}.train.log").is_file() and (out / "logs" / f"{label}.lm_eval.log").is_file()
        file, data = results_of(out / "results" / label)
        assert {"fmtspec_rte", "fmtspec_cb_1shot"} <= set(data["results"])
        assert data["config"]["model"] == "promot_hf"
        assert data["config"]["model_args"]["pretrained"] == str(out / "runs" / label)
        assert data["config"]["limit"] == 2
    # prompt tuning used its soft prompt on its own task only (promot_hf's routing, recorded by lm-eval)
    _, data = results_of(out / "results" / "prompt_tuning")
    routed = data["config"]["promot_hf"]["task_prompts"]
    assert routed["fmtspec_rte"] and routed["fmtspec_cb_1shot"] is None

    # every checkpoint of the finetune run (and its start, step 0), scored through a run.json view of it
    steps = sorted(int(p.name[5:]) for p in (out / "runs" / "finetune" / "checkpoints").iterdir())
    assert steps == [2, 4]
    steps = [0, *steps]
    for step in steps:
        view = out / "checkpoints" / "finetune" / f"step-{step}"
        model = out / "runs" / "finetune" / "checkpoints" / f"step-{step}" / "model"
        assert json.loads((view / "run.json").read_text())["model"] == (str(model) if step else None)
        _, data = results_of(view / "lm_eval")
        assert "fmtspec_triviaqa_1shot" in data["results"]
        assert data["config"]["promot_hf"]["run_folder"] == str(view)

    # the specialization diagnostic holds exactly the numbers of those results files
    table = json.loads((out / "diagnostics" / "finetune" / "specialization.json").read_text())
    assert [row["step"] for row in table["steps"]] == steps
    for row in table["steps"]:
        data = json.loads(Path(row["results"]).read_text())["results"]["fmtspec_triviaqa_1shot"]
        cell = row["tasks"]["fmtspec_triviaqa_1shot"]
        assert cell["fmt_label_share"] == data["fmt_label_share,none"]
        assert cell["score"] == pytest.approx(100 * data["exact_match,none"])
    alignment = json.loads((out / "diagnostics" / "finetune" / "alignment.json").read_text())
    assert [row["step"] for row in alignment["steps"]] == ["0", "2", "final"]
    assert all(-1 <= row["cosine"][m] <= 1 for row in alignment["steps"] for m in ("mlp", "q", "k", "v"))
    for name in ("specialization.png", "alignment.png"):
        assert (out / "diagnostics" / "finetune" / name).read_bytes()[:8] == PNG

    board = (out / "leaderboard.md").read_text()
    assert "deltas are against **finetune**" in board
    rte_row = next(line for line in board.splitlines() if line.startswith("| RTE"))
    for label in ("finetune", "prompt_tuning"):
        assert f"| {label} 1-shot" in board.splitlines()[[i for i, l in enumerate(board.splitlines())
                                                          if l.startswith("| Task |")][0]]
        _, data = results_of(out / "results" / label)
        assert f"{100 * data['results']['fmtspec_rte']['acc,none']:.2f}" in rte_row
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "training_loss.png" in pngs  # the other plots need the whole suite
    assert all((out / "plots" / p).read_bytes()[:8] == PNG for p in pngs)
    assert (out / "experiment.yaml").is_file()
    logged = [json.loads(line) for line in (out / "actions.jsonl").read_text().splitlines()]
    assert actions(logged) == actions(log)


@pytest.mark.slow
def test_second_run_redoes_nothing_and_an_interrupted_run_resumes(experiment, monkeypatch):
    from fmtspec.experiment import load_experiment, run_experiment

    exp, _ = experiment
    out = exp.output
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
    monkeypatch.chdir(exp.source.parent)
    watched = [p for p in out.rglob("*") if p.is_file() and (p.name.startswith("results_") or p.name in
                                                               ("run.json", "model.safetensors", "score.json",
                                                                "alignment.json"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    again = load_experiment(exp.source, out)
    run_experiment(again)
    assert {a["action"] for a in again.log} == {"skip-train", "skip-score", "skip-alignment"}
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert set(p for p in out.rglob("results_*.json")) == set(p for p in watched if p.name.startswith("results_"))

    # an interrupted run: no run.json yet, checkpoints there -> trained with --resume, then scored again
    run_dir = out / "runs" / "prompt_tuning"
    os.remove(run_dir / "run.json")
    shutil.rmtree(run_dir / "soft_prompt")
    third = load_experiment(exp.source, out)
    run_experiment(third)
    done = {(a["action"], a["label"]) for a in third.log if a.get("step") is None}
    assert ("resume", "prompt_tuning") in done and ("score", "prompt_tuning") in done
    assert ("skip-train", "finetune") in done and ("skip-score", "finetune") in done
    assert "--resume" in (out / "logs" / "prompt_tuning.train.log").read_text().splitlines()[0]
    assert (run_dir / "run.json").is_file()


@pytest.mark.slow
def test_a_changed_config_is_not_silently_reused(experiment, tmp_path, monkeypatch):
    from fmtspec.experiment import load_experiment, run_experiment

    exp, _ = experiment
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
    changed = tmp_path / "changed.yaml"
    changed.write_text(exp.source.read_text().replace("lr: 3.0e-3", "lr: 2.0e-3"))
    with pytest.raises(FmtspecError, match=r"run 'finetune': .* was trained with another config "
                                           r"\('model_training.lr' differs\)"):
        run_experiment(load_experiment(changed, exp.output))


def test_modules_are_import_light():
    """`fmtspec experiment|diagnose|demo --help` must not pay for torch, transformers or lm_eval."""
    import subprocess
    import sys

    code = ("import sys, fmtspec.experiment, fmtspec.diagnose, fmtspec.demo; "
            "print([m for m in ('torch', 'transformers', 'lm_eval', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
