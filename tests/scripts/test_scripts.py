"""The launch scripts in scripts/: --help, bad usage (exit 2, one line), and the launcher command each would run
(--dry_run), with every `fmtspec train` argument passed through unchanged. test_trainers_scale.py runs
train_single_node.sh for real with 2 CPU processes."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
CONFIG = "configs/tiny/finetune.yaml"
SCRIPT_NAMES = ["train_single_node.sh", "train_multi_node.sh", "train_slurm.sbatch"]


def run(script, *args, env=None):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_help_documents_usage_and_cluster_environment(script):
    proc = run(script, "--help")
    assert proc.returncode == 0 and "CONFIG.yaml" in proc.stdout and "NCCL" in proc.stdout
    assert os.access(SCRIPTS / script, os.X_OK)


@pytest.mark.parametrize("script, args, message", [
    ("train_single_node.sh", ["--bogus", CONFIG], "unknown option --bogus"),
    ("train_single_node.sh", [], "missing CONFIG.yaml"),
    ("train_single_node.sh", ["missing.yaml"], "config not found: missing.yaml"),
    ("train_single_node.sh", ["--num_gpus", "two", CONFIG], "--num_gpus must be a positive integer"),
    ("train_single_node.sh", ["--num_gpus"], "--num_gpus needs a value"),
    ("train_multi_node.sh", [CONFIG], "--hostfile is required"),
    ("train_multi_node.sh", ["--hostfile", "nowhere", CONFIG], "hostfile not found: nowhere"),
    ("train_multi_node.sh", ["--hostfile", CONFIG, "--launcher", "ssh", CONFIG], "--launcher must be pdsh"),
    ("train_slurm.sbatch", [CONFIG], "submit with sbatch"),
    ("train_slurm.sbatch", ["--bogus"], "unknown option --bogus"),
    ("train_slurm.sbatch", ["missing.yaml"], "config not found"),
])
def test_bad_usage_exits_2_with_one_line(script, args, message):
    env = {"SLURM_JOB_ID": ""} if script.endswith("sbatch") else None
    proc = run(script, *args, env=env)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


TRAIN_ARGS = [CONFIG, "--set", "model_training.steps=200", "--set", "tasks=[fmtspec_rte, fmtspec_cb]",
              "--output", "runs/my run", "--resume"]


def test_single_node_dry_run_passes_everything_to_fmtspec_train():
    proc = run("train_single_node.sh", "--num_gpus", "8", "--master_port", "29611", "--dry_run", *TRAIN_ARGS,
               env={"CUDA_VISIBLE_DEVICES": ""})  # none listed: --num_gpus (tests/fmtspec/test_experiment_gpus.py: listed)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["deepspeed", "--num_gpus", "8", "--master_port", "29611", "--no_local_rank",
                                        "--module", "fmtspec", "train", *TRAIN_ARGS]


def test_multi_node_dry_run_takes_the_master_from_the_hostfile(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# nodes\n\nworker-1 slots=8\nworker-2 slots=8\n")
    proc = run("train_multi_node.sh", "--hostfile", str(hostfile), "--num_nodes", "2", "--venv_script",
               "/opt/env.sh", "--dry_run", *TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["deepspeed", "--hostfile", str(hostfile), "--master_addr", "worker-1",
                                        "--master_port", "29500", "--launcher", "pdsh", "--num_nodes", "2",
                                        "--venv_script", "/opt/env.sh", "--no_local_rank", "--module", "fmtspec",
                                        "train", *TRAIN_ARGS]


def test_slurm_dry_run_starts_torchrun_on_every_node(tmp_path):
    scontrol = tmp_path / "scontrol"  # what `scontrol show hostnames` prints for the job's nodes
    scontrol.write_text("#!/bin/sh\nprintf 'gpu-17\\ngpu-18\\n'\n")
    scontrol.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[17-18]",
           "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4"}
    proc = run("train_slurm.sbatch", "--dry_run", *TRAIN_ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["srun", "--kill-on-bad-exit=1", "torchrun", "--nnodes", "2",
                                        "--nproc_per_node", "4", "--rdzv_id", "4242", "--rdzv_backend", "c10d",
                                        "--rdzv_endpoint", "gpu-17:29500", "-m", "fmtspec", "train", *TRAIN_ARGS]
