"""What can go wrong with `fmtspec train`'s run folder, through the command itself: one writer per folder (an OS
lock), finish() killed or interrupted at each of its writes (the old run or the new one stays, loadable),
preemption by SIGTERM or SIGINT (one line, a checkpoint, --resume continues), a failed start that must not
block the corrected command, --resume of nothing, a config that differs, unwritable folders and full disks."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
TINY = REPO / "configs" / "tiny"
LEFTOVERS = (".old-", ".tmp-", ".trash-")


def env() -> dict:
    return {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def finished(tiny_models, data_env, tmp_path_factory):
    """(overrides, run folder) of one finished tiny joint run: model/ and soft_prompt/, trained once."""
    from trainers.config import load_config
    from trainers.train import train

    overrides = [f"model={tiny_models['mt5']}"]
    return overrides, train(load_config(TINY / "joint.yaml", overrides), tmp_path_factory.mktemp("finished") / "run")


def train_cli(capsys, *args) -> tuple[int, list[str]]:
    """`fmtspec train ARGS` in this process: (exit status, its `fmtspec ...` lines on stderr)."""
    from fmtspec.cli import main

    capsys.readouterr()
    rc = main(["train", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [line for line in err.splitlines() if line.startswith("fmtspec")]


def sets(*overrides) -> list[str]:
    return [part for o in overrides for part in ("--set", o)]


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def leftovers(run) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(LEFTOVERS))


def check_run(run: Path, expected: dict) -> None:
    """`run` is a complete run, loadable the way readers load it: run.json valid and the one expected (the old
    and the new run of a resumed finished run are the same), its model and prompts there and its weights."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from fmtspec.core.run_folder import model_path, prompt_paths, read_manifest
    from model_adapters.soft_prompt import load_soft_prompt
    from fmtspec.core.run_folder import weights_digest

    manifest = read_manifest(run)
    assert manifest == expected
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path(run, manifest))
    assert weights_digest(model.state_dict()) == manifest["model_sha256"]
    prompts = prompt_paths(run, manifest)
    assert prompts
    for folder in prompts.values():
        assert torch.isfinite(load_soft_prompt(folder).embeddings).all()


# -- one writer ---------------------------------------------------------------------------------------------

def test_a_second_training_into_the_same_folder_is_refused_and_the_first_completes(tiny_models, data_env, tmp_path,
                                                                                   capsys):
    import trainers.train  # noqa: F401  (imported before: the second training reaches the lock at once)
    import deepspeed  # noqa: F401

    out = tmp_path / "run"
    steps = 60
    first = subprocess.Popen([sys.executable, "-m", "fmtspec", "train", str(TINY / "finetune.yaml"),
                              *sets(f"model={tiny_models['mt5']}", f"model_training.steps={steps}",
                                    "model_training.eval_every=0"), "--output", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / ".lock").is_file()
               and (out / ".lock").read_text().strip()):
        assert first.poll() is None, first.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    before = sorted(p.name for p in out.iterdir())
    rc, lines = train_cli(capsys, TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}", "seed=7"),
                          "--output", out)
    assert first.poll() is None, "the first training ended before the second started"
    assert rc == 1 and len(lines) == 1 and f"(pid {first.pid})" in lines[0], lines
    assert lines[0].startswith(f"fmtspec train: {out} is being written by another training")
    assert sorted(p.name for p in out.iterdir()) == before  # the second wrote nothing
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["seed"] == 0 and json.loads((out / "run.json").read_text())["config"] == saved
    assert [r["step"] for r in metrics(out) if "loss" in r] == list(range(1, steps + 1))
    assert not (out / ".lock").exists() and not leftovers(out)


# -- finish() killed or interrupted at each write -----------------------------------------------------------

def interrupt_writes(n: int, action):
    """From the start of finish(), run `action` at the n-th call of a write primitive (rename, remove, a
    safetensors file); return the function that undoes the patches. No hook in the product code: the
    primitives are wrapped where finish() and transformers look them up."""
    import safetensors.torch
    import transformers.modeling_utils

    from trainers import train as train_module

    state = {"active": False, "calls": 0}

    def counted(fn):
        def wrapper(*args, **kwargs):
            if state["active"]:
                state["calls"] += 1
                if state["calls"] == n:
                    action()
            return fn(*args, **kwargs)

        return wrapper

    def finishing(*args, **kwargs):
        state["active"] = True
        try:
            return finish(*args, **kwargs)
        finally:
            state["active"] = False

    finish = train_module.finish
    patched = [(os, "replace"), (shutil, "rmtree"), (safetensors.torch, "save_file"),
               (transformers.modeling_utils, "safe_save_file"), (train_module, "finish")]
    originals = [(module, name, getattr(module, name)) for module, name in patched]
    for module, name, fn in originals:
        setattr(module, name, finishing if fn is finish else counted(fn))
    return lambda: [setattr(module, name, fn) for module, name, fn in originals]


# A process that imports the trainer once (no process group yet), then forks one child per kill point: the child resumes a copy of the
# finished run and SIGKILLs itself at the n-th write of finish(); a second child resumes (uninterrupted) a copy
# of what the first left. Until a child finishes without reaching its kill point.
KILLER = r"""
import json, os, shutil, signal, sys, traceback
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from test_run_folder_faults import interrupt_writes
import deepspeed
from trainers.config import load_config
from trainers.train import build_trainer, train

source, work, config_file = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
config = load_config(config_file, json.loads(sys.argv[5]))
build_trainer(config, work / "unused", config["model"])  # what train() imports on first use: once, not per child


def child(folder, kill_at):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if kill_at:
                interrupt_writes(kill_at, lambda: os.kill(os.getpid(), signal.SIGKILL))
            train(config, folder, resume=True)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else os.waitstatus_to_exitcode(status)


points = []
for n in range(1, 60):
    killed = work / f"kill-{n}"
    shutil.copytree(source, killed)
    outcome = child(killed, n)
    if outcome != "killed":
        points.append({"n": n, "outcome": outcome})
        break
    resumed = work / f"resumed-{n}"
    shutil.copytree(killed, resumed)
    points.append({"n": n, "outcome": outcome, "resumed": child(resumed, 0)})
print(json.dumps(points))
"""


def test_finish_killed_at_each_write_leaves_the_old_or_the_new_run(finished, tmp_path):
    overrides, source = finished
    expected = json.loads((source / "run.json").read_text())
    proc = subprocess.run([sys.executable, "-c", KILLER, str(Path(__file__).parent), str(source), str(tmp_path),
                           str(TINY / "joint.yaml"), json.dumps(overrides)],
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads(proc.stdout.strip().splitlines()[-1])
    *killed, last = points
    assert last["outcome"] == 0 and len(killed) >= 8, points  # every rename, removal and weights file of finish
    # one kill falls between moving the old model/ aside and moving the new one in: readers use the old one
    assert any(not (tmp_path / f"kill-{p['n']}" / "model").exists() for p in killed)
    for point in killed:
        n = point["n"]
        assert point["outcome"] == "killed" and point["resumed"] == 0, point
        check_run(tmp_path / f"kill-{n}", expected)  # as a reader finds it, nothing repaired
        resumed = tmp_path / f"resumed-{n}"  # the next writer repairs it and finishes
        check_run(resumed, expected)
        assert not leftovers(resumed) and not (resumed / ".lock").exists(), (n, leftovers(resumed))
        assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in source.iterdir())


def test_finish_interrupted_at_each_write_leaves_the_old_or_the_new_run(finished, tmp_path):
    from trainers.config import load_config
    from trainers.train import train

    overrides, source = finished
    expected = json.loads((source / "run.json").read_text())
    config = load_config(TINY / "joint.yaml", overrides)

    def interrupt():
        raise KeyboardInterrupt

    n = 0
    while True:
        n += 1
        run = tmp_path / f"interrupted-{n}"
        shutil.copytree(source, run)
        undo = interrupt_writes(n, interrupt)
        try:
            train(config, run, resume=True)
            break
        except KeyboardInterrupt:
            pass
        finally:
            undo()
        check_run(run, expected)
        assert not (run / ".lock").exists()
        train(config, run, resume=True)
        check_run(run, expected)
        assert not leftovers(run), (n, leftovers(run))
    assert n > 8


# -- preemption -------------------------------------------------------------------------------------------

def test_sigterm_stops_with_one_line_and_a_checkpoint_that_resume_continues(tiny_models, data_env, tmp_path,
                                                                            capsys):
    out = tmp_path / "run"
    steps = 60
    args = [TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}", f"model_training.steps={steps}",
                                          "model_training.eval_every=0")]  # no checkpoint before the end
    proc = subprocess.Popen([sys.executable, "-m", "fmtspec", "train", *map(str, args), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("fmtspec")]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err[-2000:]
    stopped = re.fullmatch(r"fmtspec train: stopped by SIGTERM at step (\d+); checkpoint step-(\d+) written; "
                           r"resume with --resume", lines[0])
    assert stopped and stopped[1] == stopped[2], lines[0]
    step = int(stopped[1])
    assert 2 <= step < steps
    from fmtspec.core.run_folder import checkpoint_steps

    assert checkpoint_steps(out) == [step] and not (out / "run.json").exists()
    assert not leftovers(out) and not (out / ".lock").exists()
    assert not (out / "checkpoints" / f"step-{step}" / "val_predictions.jsonl").exists()  # not validated there

    rc, lines = train_cli(capsys, *args, "--output", out, "--resume")
    assert rc == 0 and lines == []
    assert json.loads((out / "run.json").read_text())["steps"] == steps
    assert [r["step"] for r in metrics(out) if "loss" in r] == list(range(1, steps + 1))  # none lost, none twice


@pytest.mark.parametrize("overrides, kept", [
    ([], "last checkpoint step-2 kept"),  # written seconds ago: not written again at the signal
    (["preempt_checkpoint_s=0", "model_training.eval_every=0"], "no checkpoint yet"),  # 0: never at the signal
])
def test_sigint_at_a_step_stops_there(overrides, kept, tiny_models, data_env, tmp_path, capsys, monkeypatch):
    from trainers.trainer import Trainer

    log = Trainer.log

    def log_then_interrupt(self, record):
        log(self, record)
        if record["step"] == 3 and "loss" in record:  # Ctrl-C at the end of step 3: it stops there
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "log", log_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    args = [TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}", *overrides)]
    rc, lines = train_cli(capsys, *args, "--output", out)
    assert rc == 130
    assert lines == [f"fmtspec train: stopped by SIGINT at step 3; {kept}; resume with --resume"]
    assert not (out / "run.json").exists() and not leftovers(out) and not (out / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's again
    monkeypatch.setattr(Trainer, "log", log)
    rc, lines = train_cli(capsys, *args, "--output", out, "--resume")
    assert rc == 0
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4]


# -- starts that fail, resumes of nothing --------------------------------------------------------------------

@pytest.mark.parametrize("resume", [False, True])
def test_a_failed_start_does_not_block_the_corrected_command(resume, tiny_models, data_env, tmp_path, capsys):
    from fmtspec.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["mt5"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "run"
    try:
        failed = main(["train", str(TINY / "finetune.yaml"), *sets(f"model={broken}"), "--output", str(out)])
    except Exception:  # the model loader's own message is not this test's business
        failed = None
    assert failed != 0 and (out / "config.json").is_file() and not (out / ".lock").exists()
    rc, lines = train_cli(capsys, TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}"), "--output", out,
                          *(["--resume"] if resume else []))
    assert rc == 0
    assert lines == ([f"fmtspec train: nothing to resume in {out} (it never reached a checkpoint): starting the run"]
                     if resume else [])
    assert json.loads((out / "run.json").read_text())["config"]["model"] == str(tiny_models["mt5"])


def test_resume_of_nothing_is_one_line(tiny_models, data_env, tmp_path, capsys):
    args = [TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}"), "--resume", "--output"]
    missing = tmp_path / "missing"
    assert train_cli(capsys, *args, missing) == (1, [f"fmtspec train: --resume: {missing} does not exist: nothing "
                                                     "to resume; drop --resume to start the run"])
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_cli(capsys, *args, empty) == (1, [f"fmtspec train: --resume: {empty} is empty: nothing to resume; "
                                                   "drop --resume to start the run"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert train_cli(capsys, *args, other) == (1, [f"fmtspec train: --resume: {other} holds no fmtspec training "
                                                   "(no config.json); choose another --output"])
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_resume_with_another_config_names_the_differing_keys(finished, tmp_path, capsys):
    overrides, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    rc, lines = train_cli(capsys, TINY / "joint.yaml", *sets(*overrides, "seed=3", "model_training.lr=0.5"),
                          "--output", run, "--resume")
    assert rc == 1
    assert lines == [f"fmtspec train: --resume: the config differs from the one {run} was started with: "
                     "seed (was 0, now 3), model_training.lr (was 0.001, now 0.5), data.seed (was 0, now 3)"]
    assert (run / "config.json").read_text() == (source / "config.json").read_text()


# -- unwritable folders, full disks ----------------------------------------------------------------------------

def test_an_unwritable_output_is_one_line(tiny_models, data_env, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = [TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}"), "--output"]
    assert train_cli(capsys, *args, afile) == (1, [f"fmtspec train: --output {afile} is a file, not a folder"])
    assert train_cli(capsys, *args, afile / "run") == (1, [f"fmtspec train: cannot write {afile / 'run'}: "
                                                           "Not a directory"])
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o500)
        assert train_cli(capsys, *args, readonly / "run") == (1, [f"fmtspec train: cannot write {readonly / 'run'}"
                                                                  ": Permission denied"])


@pytest.mark.parametrize("where", ["trainer_state", "safetensors"])
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(where, tiny_models, data_env,
                                                                                       tmp_path, capsys, monkeypatch):
    import pathlib

    import safetensors.torch
    from safetensors import SafetensorError

    if where == "trainer_state":  # Python's own writes: OSError ENOSPC
        write_text = pathlib.Path.write_text

        def full(self, *args, **kwargs):
            if self.name == "trainer_state.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return write_text(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", full)
    else:  # safetensors' (the optimizer state): its own error type, the path in the message
        def full(tensors, filename, *args, **kwargs):
            raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error 28) at "
                                  f"path \"{filename}\"")

        monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "run"
    rc, lines = train_cli(capsys, TINY / "finetune.yaml", *sets(f"model={tiny_models['mt5']}"), "--output", out)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("fmtspec train: cannot write ") and "No space left on device" in lines[0]
    assert str(out / "checkpoints" / ".tmp-step-2") in lines[0]  # the path that failed
    assert not leftovers(out) and not (out / ".lock").exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "run.json").exists()
