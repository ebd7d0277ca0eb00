"""Trainers at scale, on this CPU: several processes under the DeepSpeed launcher (gloo) give the same run as
one process with the same global batch, rank 0 alone writes the run folder, ZeRO-3 saves whole weights and
prompts, and `fmtspec train --resume` after SIGKILL continues exactly where the run stood."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
TINY = REPO / "configs" / "tiny"


def env():
    return {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fmtspec_train(*args, processes: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """`fmtspec train ARGS` in one process, or in `processes` local CPU processes through
    scripts/train_single_node.sh (the DeepSpeed launcher, DS_ACCELERATOR=cpu: gloo)."""
    if processes == 1:
        cmd = [sys.executable, "-m", "fmtspec", "train", *args]
    else:
        cmd = ["bash", str(REPO / "scripts" / "train_single_node.sh"), "--num_gpus", str(processes),
               "--master_port", str(free_port()), *args]
    launcher = {"DEEPSPEED": f"{sys.executable} -m deepspeed.launcher.runner"}
    return subprocess.run(cmd, capture_output=True, text=True, env={**env(), **launcher}, timeout=timeout, cwd=REPO)


def train_in_process(name, overrides, out):
    from trainers.config import load_config
    from trainers.train import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        return train(load_config(TINY / f"{name}.yaml", overrides), out)


def records(run, key):
    """{step: value} of every metrics.jsonl line that has `key` (each step at most once)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if key in r]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: r[key] for r in rows if key in r}


def state(folder):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_weights(a, b, atol=0.0):
    import torch

    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys() and sa
    for k in sa:
        assert sa[k].shape == sb[k].shape and sa[k].numel() > 0, k
        assert torch.allclose(sa[k], sb[k], rtol=0, atol=atol) if atol else torch.equal(sa[k], sb[k]), k


def assert_same_run(one, two, atol):
    """Two run folders trained on the same global batches: the same losses, validations, checkpoints, weights."""
    ma, mb = (json.loads((r / "run.json").read_text()) for r in (one, two))
    assert {k: v for k, v in ma.items() if k != "model_sha256"} == {k: v for k, v in mb.items() if k != "model_sha256"}
    la, lb = records(one, "loss"), records(two, "loss")
    assert la.keys() == lb.keys() and all(abs(la[s] - lb[s]) <= 1e-4 * abs(la[s]) for s in la), (la, lb)
    assert records(one, "val_score") == records(two, "val_score")
    assert sorted(p.name for p in (one / "checkpoints").iterdir()) == \
        sorted(p.name for p in (two / "checkpoints").iterdir())
    for step in (one / "checkpoints").iterdir():  # validation predictions gathered from every process, in order
        assert (step / "val_predictions.jsonl").read_text() == (two / "checkpoints" / step.name /
                                                                 "val_predictions.jsonl").read_text()
    if (one / "model").is_dir():
        assert_same_weights(one / "model", two / "model", atol)
    for prompt in (one / "soft_prompt", one / "prompts"):
        if prompt.is_dir():
            for adapter in prompt.rglob("adapter_model.safetensors"):
                assert_same_weights(adapter.parent, two / adapter.parent.relative_to(one), atol)
    assert not list(two.rglob(".tmp-*"))


# Dropout off: each process draws its own dropout masks, so only a dropout-free run is the same in 1 and 2.
SAME = ["dropout=0", "optimizer=adamw", "eval.batch_size=2"]


def test_two_processes_zero2_equal_one_process_with_the_same_global_batch(tiny_models, tmp_path):
    overrides = [f"model={tiny_models['mt5']}", "engine.deepspeed=zero2", *SAME]
    two = tmp_path / "two"
    proc = fmtspec_train(str(TINY / "finetune.yaml"), *[a for o in overrides for a in ("--set", o)],
                         "--output", str(two), processes=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # printed by rank 0 only
    one = train_in_process("finetune", overrides, tmp_path / "one")
    assert_same_run(one, two, atol=1e-5)


@pytest.mark.slow
def test_two_processes_zero3_promot_gathers_whole_weights_and_prompts(tiny_models, tmp_path):
    """ZeRO-3 partitions the soft prompt too (PEFT's known trouble: zero-size embedding weights when
    partitioned): the saved prompt, model and checkpoints must be whole, equal to one process's, and the
    stage-1 prompt chosen at an earlier checkpoint must be loaded back into the partitioned model for stage 2."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from model_adapters.soft_prompt import load_soft_prompt

    overrides = [f"model={tiny_models['mt5']}", "engine.deepspeed=zero3", *SAME]
    two = tmp_path / "two"
    proc = fmtspec_train(str(TINY / "promot.yaml"), *[a for o in overrides for a in ("--set", o)],
                         "--output", str(two), processes=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((two / "run.json").read_text())
    stage1 = m["stages"][0]["chosen"]["step"]
    assert stage1 < m["stages"][0]["steps"]  # an earlier checkpoint was chosen: it had to be loaded back
    prompt = load_soft_prompt(two / "soft_prompt").embeddings
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["mt5"])
    assert prompt.shape == (4, base.config.d_model)
    assert torch.equal(prompt, load_soft_prompt(two / "checkpoints" / f"step-{stage1}" / "soft_prompt").embeddings)
    trained = AutoModelForSeq2SeqLM.from_pretrained(two / "model")  # an ordinary save_pretrained folder
    for (name, p), q in zip(base.state_dict().items(), trained.state_dict().values()):
        assert p.shape == q.shape, name
    from fmtspec.core.run_folder import weights_digest

    assert weights_digest(trained.state_dict()) == m["model_sha256"]
    one = train_in_process("promot", overrides, tmp_path / "one")
    assert_same_run(one, two, atol=1e-5)


@pytest.mark.parametrize("zero, optimizer", [("zero0", "adamw"), ("zero2", "adafactor_t5x"),
                                             ("zero3", "adafactor_t5x")])
def test_resume_after_sigkill_at_a_random_step_is_exact(zero, optimizer, tiny_models, tmp_path):
    """Same data order, dropout draws, optimizer and scheduler state: the resumed run logs the same losses and
    ends with bit-identical weights as an uninterrupted run of the same seed. zero0 keeps one optimizer file,
    zero2 one partition per process (fp32 master weights and moments; the paper's adafactor_t5x: its factored
    row/column vectors and the partition's unfactored moments); zero3 also its sub-groups, and the weights saved
    and loaded back one tensor at a time."""
    steps = 6
    args = [str(TINY / "finetune.yaml"), "--set", f"model={tiny_models['mt5']}",
            "--set", f"model_training.steps={steps}", "--set", "model_training.eval_every=1",
            "--set", "eval.limit=2", "--set", "lr_scheduler=linear", "--set", "warmup_steps=2",
            "--set", f"optimizer={optimizer}", "--set", f"engine.deepspeed={zero}"]  # dropout 0.1 stays on: RNG too
    run = tmp_path / "killed"
    kill_after = random.Random().randint(1, steps - 2)
    log = tmp_path / "killed.log"  # a file, not a pipe: a pipe nobody reads would stall the run once full
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fmtspec", "train", *args, "--output", str(run)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env(), cwd=REPO)
    deadline = time.time() + 200
    while not (run / "checkpoints" / f"step-{kill_after}").is_dir():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "run.json").exists(), f"the run finished before the kill (after step {kill_after})"
    resumed = fmtspec_train(*args, "--output", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    from trainers.config import load_config
    from trainers.train import train

    reference = tmp_path / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        config = load_config(args[0], [a for a in args[1:] if a != "--set"])
        train(config, reference)
    assert records(run, "loss") == records(reference, "loss"), f"killed after step {kill_after}"
    assert list(records(run, "loss")) == list(range(1, steps + 1))
    assert records(run, "lr") == records(reference, "lr")
    assert records(run, "val_score") == records(reference, "val_score")
    assert_same_weights(run / "model", reference / "model")
    ma, mb = (json.loads((r / "run.json").read_text()) for r in (run, reference))
    assert ma["model_sha256"] == mb["model_sha256"] and ma["checkpoint"] == mb["checkpoint"]
    expected = ["optimizer.safetensors"] if zero == "zero0" else ["optimizer-rank0.safetensors"]
    assert sorted(p.name for p in (run / "checkpoints" / "step-1").glob("optimizer*")) == expected


def test_resume_with_another_process_count_than_the_zero_partitions_is_one_clear_line(tiny_models, tmp_path):
    from fmtspec.core.errors import FmtspecError
    from trainers.config import load_config
    from trainers.train import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}", "engine.deepspeed=zero1",
                                                      "optimizer=adamw", "model_training.eval_every=2"])
        run = train(config, tmp_path / "run")
        state_file = run / "checkpoints" / "step-4" / "trainer_state.json"
        state = json.loads(state_file.read_text())
        assert state["optimizer_partitions"] == state["world_size"] == 1
        state["optimizer_partitions"] = state["world_size"] = 2  # as if written by 2 processes
        state_file.write_text(json.dumps(state))
        (run / "run.json").unlink()
        with pytest.raises(FmtspecError) as err:
            train(config, run, resume=True)
    assert "\n" not in str(err.value) and "resume with 2 processes" in str(err.value)


@pytest.mark.parametrize("init", ["vocab", "text"])
def test_prompt_init_from_a_zero3_partitioned_embedding_gathers_it(init, tiny_models):
    """PEFT's known ZeRO-3 trouble: once partitioned, the embedding parameter's data is a zero-size tensor, so a
    prompt initialised from vocabulary embeddings reads nothing. Ours gathers the matrix first."""
    import deepspeed
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from trainers.trainer import init_distributed, single_process_env
    from trainers.soft_prompt_model import init_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["mt5"])
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["mt5"])
    kwargs = {"length": 6, "init": init, "init_text": "an example text", "vocab_top": 50, "seed": 3}
    expected = init_prompt(model, tokenizer, **kwargs)
    with single_process_env():
        init_distributed()
        deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                             config={"train_batch_size": 1, "zero_optimization": {"stage": 3}})
    assert model.get_input_embeddings().weight.numel() == 0  # partitioned: the trouble is real here
    got = init_prompt(model, tokenizer, **kwargs)
    assert got.shape == (6, model.config.d_model) and torch.equal(got, expected)
    assert model.get_input_embeddings().weight.numel() == 0  # released again after the gather
