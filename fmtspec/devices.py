"""The GPUs of an experiment: which of the machine's it uses, and which each training run gets (the rule
below); the scoring side of the rule is fmtspec.scoring's `score_workers`. Nothing here imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fmtspec.core.errors import FmtspecError
from fmtspec.experiment_file import REPO, Experiment
from fmtspec.processes import offline_env

# ---- GPUs: which devices each training run and each lm_eval worker gets ------------------------------------
#
# Training: on G GPUs, min(jobs, G) runs train at once, each on G // that many GPUs (jobs: 1, the default: every
# run on all G) through the DeepSpeed launcher, scripts/train_single_node.sh unless `launcher:` names another,
# with CUDA_VISIBLE_DEVICES set to the run's GPUs (and, for runs side by side, their own --master_port). With the
# default launcher a run takes as many of its GPUs as its batch allows (batch_size a multiple of micro_batch_size
# x processes: a config without micro_batch_size trains on one GPU; fitting_devices).
# Scoring: P lm_eval command lines to run on G GPUs go to W = min(P, G) workers of k = G // W GPUs each: while
# there are at least as many checkpoints to score as GPUs, one worker per GPU (CUDA_VISIBLE_DEVICES=<i>,
# --device cuda:0; each job loads one copy of its model on one GPU and nothing is shared); with fewer, the GPUs
# that would idle are used data-parallel: each worker runs its jobs under `accelerate launch` in k processes
# (one per GPU, every request split k ways). The time to score is about ceil(P / W) x (load + eval / k): with
# P >= G that is smallest at k = 1 (data-parallelism only adds each process's model load and the gathers),
# with P < G at k = G // P (the load is paid once per GPU anyway). `lm_eval.device` set: as written, `jobs`
# workers seeing all the GPUs; `lm_eval.model_args.parallelize`: min(jobs, P, G) workers, each splitting its
# model over G // that many GPUs. No GPU (a CPU machine, or `gpus: 0`): `jobs` runs and workers, as always.

SINGLE_NODE = REPO / "scripts" / "train_single_node.sh"
TRAIN_PORT = 29500  # DeepSpeed rendezvous port of the first of the runs trained side by side (+1 for the next)
SCORE_PORT = 29600  # accelerate's port of the first data-parallel lm_eval worker (+1 for the next)


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPUs this machine shows, named as CUDA_VISIBLE_DEVICES names them, without importing torch: the
    entries of CUDA_VISIBLE_DEVICES where it is set (as CUDA reads it: none from an empty or negative entry on),
    else one per GPU line of `nvidia-smi -L` ("0", "1", ...), else none."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = []
        for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    return [str(i) for i in range(_nvidia_smi_count())]


def _nvidia_smi_count() -> int:
    """GPUs `nvidia-smi -L` lists (MIG instances, listed indented under their GPU, are not counted)."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def experiment_gpus(exp: Experiment) -> list[str]:
    """The GPUs of this invocation (found once): `gpus: auto` those the machine shows, `gpus: N` the first N
    of them, `gpus: [...]` those listed, each of which the machine must show; [] on a machine without GPUs."""
    if exp.devices is None:
        shown = visible_gpus()
        how = (f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in os.environ
               else "nvidia-smi -L")
        if exp.gpus == "auto":
            devices = shown
        elif isinstance(exp.gpus, int):
            if exp.gpus > len(shown):
                raise FmtspecError(f"{exp.source}: gpus: {exp.gpus}, but this machine shows {len(shown)} GPU(s) "
                                   f"({how})")
            devices = shown[:exp.gpus]
        else:
            missing = [d for d in exp.gpus if d not in shown]
            if missing:
                raise FmtspecError(f"{exp.source}: gpus: GPU {missing[0]} is not one this machine shows ({how}: "
                                   f"{', '.join(shown) or 'none'})")
            devices = list(exp.gpus)
        exp.devices = devices
    return exp.devices


def device_env(exp: Experiment, devices: list[str]) -> dict:
    """CUDA_VISIBLE_DEVICES of a subprocess on `devices`; with no GPU nothing (the environment as before),
    except that `gpus: 0` hides the machine's GPUs."""
    if devices:
        return {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
    return {"CUDA_VISIBLE_DEVICES": ""} if exp.gpus == 0 else {}


def train_slots(exp: Experiment) -> list[list[str]]:
    """The GPUs of each of the runs trained at once: min(jobs, G) slots of G // slots GPUs; without GPUs,
    `jobs` slots of none."""
    devices = experiment_gpus(exp)
    if not devices:
        return [[] for _ in range(exp.jobs)]
    slots = min(exp.jobs, len(devices))
    size = len(devices) // slots
    return [devices[i * size:(i + 1) * size] for i in range(slots)]


def fitting_devices(devices: list[str], config: dict) -> list[str]:
    """The most of `devices` (the first ones) that a run of `config` trains on: DeepSpeed needs batch_size to
    be a multiple of micro_batch_size (default: batch_size) x processes, and the global batch stays the
    config's."""
    micro = config.get("micro_batch_size") or config["batch_size"]
    usable = [k for k in range(1, len(devices) + 1) if config["batch_size"] % (micro * k) == 0]
    return devices[:max(usable, default=1)]


def train_command(exp: Experiment, devices: list[str], port: int | None = None) -> tuple[list[str], dict]:
    """(launcher argv before CONFIG.yaml, environment) of one run on `devices`: without GPUs `launcher:` or
    `python -m fmtspec train` as before; on GPUs `launcher:` or scripts/train_single_node.sh, which starts one
    process per GPU of CUDA_VISIBLE_DEVICES (and gets `--master_port port` when runs train side by side)."""
    env = {**offline_env(exp), **device_env(exp, devices)}
    if not devices:
        return list(exp.launcher or [sys.executable, "-m", "fmtspec", "train"]), env
    launcher = list(exp.launcher or [str(SINGLE_NODE)])
    if any(Path(arg).name == SINGLE_NODE.name for arg in launcher):
        env.setdefault("DEEPSPEED", f"{sys.executable} -m deepspeed.launcher.runner")  # this venv's, PATH or not
        env.setdefault("PYTHON", sys.executable)
        if port is not None and "--master_port" not in launcher:
            launcher += ["--master_port", str(port)]
    return launcher, env
