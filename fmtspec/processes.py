"""The subprocesses of an experiment (training, pretraining, lm_eval workers): their environment, their output
copied into a log, one clear line when one fails, and actions.jsonl, the record of what each invocation did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from fmtspec.core.errors import FmtspecError
from fmtspec.experiment_file import Experiment


def say(message: str) -> None:
    print(f"[fmtspec] {message}", flush=True)


def offline_env(exp: Experiment | None = None, share_cores: bool = True) -> dict:
    """The environment of the training and lm_eval subprocesses: the caller's, quiet tokenizers, the
    experiment's own variables, and with `jobs` > 1 an equal share of the CPU threads for each."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    if exp is not None:
        env.update(exp.env)
        if share_cores and exp.jobs > 1 and "OMP_NUM_THREADS" not in env:  # threads beyond the cores only slow torch down
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // exp.jobs))
    return env


_RECORD_LOCK = threading.Lock()


def record(exp: Experiment, action: str, label: str, **extra) -> None:
    """Append what this invocation did to actions.jsonl (tests and users read what was skipped)."""
    entry = {"time": round(time.time(), 3), "action": action, "label": label, **extra}
    with _RECORD_LOCK:
        exp.log.append(entry)
        exp.output.mkdir(parents=True, exist_ok=True)
        with open(exp.output / "actions.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")


def start_logged(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or offline_env(),
                            text=True, errors="replace")


def finish_logged(proc: subprocess.Popen, log: Path, what: str, stream: bool = False) -> None:
    """Copy the output of `proc` into `log` (and the console with `stream`) until it ends; one clear line
    when it failed."""
    tail: list[str] = []
    with open(log, "a") as f:
        for line in proc.stdout:
            f.write(line)
            if stream:
                sys.stderr.write(line)
            if line.strip():
                tail = (tail + [line.strip()])[-40:]
    code = proc.wait()
    if code != 0:
        raise FmtspecError(f"{what} failed (exit {code}): {error_line(tail)} (full output: {log})")


def run_logged(cmd: list[str], log: Path, what: str, stream: bool = False, env: dict | None = None) -> None:
    """Run `cmd`, its output into `log` (and the console with `stream`); one clear line when it fails."""
    finish_logged(start_logged(cmd, log, env), log, what, stream)


def error_line(tail: list[str]) -> str:
    """The most telling line of a failed subprocess: our own one-line errors first, else the last line."""
    for prefix in ("fmtspec ", "promot_hf:", "fmtspec:"):
        for line in reversed(tail):
            if line.startswith(prefix):
                return line
    for line in reversed(tail):
        if "Error" in line or "error" in line:
            return line
    return tail[-1] if tail else "(no output)"
