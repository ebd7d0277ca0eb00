"""The run folder on disk (layout in fmtspec/run_folder.py): atomic folders, prompt/model files, the
manifest, weight digests, and optimizer state in safetensors (no pickles anywhere in a run folder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from fmtspec.errors import FmtspecError
from fmtspec.run_folder import FORMAT, MANIFEST

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"  # a plain optimizer (ZeRO 0, fp32): the same in every process


def optimizer_rank_file(rank: int) -> str:
    """One process's partition of a ZeRO (or bf16) optimizer's state."""
    return f"optimizer-rank{rank}.safetensors"
PREDICTIONS = "val_predictions.jsonl"  # the validation generations a checkpoint was scored on
CONFIG_FILE = "config.json"  # the resolved config, written when the run starts (resume reads it)


@contextmanager
def atomic_folder(final: Path):
    """Yield a temporary sibling folder; rename it to `final` only when the block finishes.
    A run killed inside the block leaves a `.tmp-*` folder, never one that looks complete."""
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def weights_digest(state_dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = []
    for p in folder.iterdir():
        if p.name.startswith("step-") and (p / TRAINER_STATE).is_file():
            try:
                steps.append(int(p.name[len("step-"):]))
            except ValueError:
                pass
    return sorted(steps)


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Temporary folders of a run killed while writing a checkpoint."""
    folder = Path(run_dir) / CHECKPOINTS
    for p in folder.glob(".tmp-*") if folder.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def truncate_metrics(run_dir: Path, step: int) -> None:
    path = Path(run_dir) / METRICS
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def prompt_folder(task: str, n_tasks: int, lora: bool = False) -> str:
    """Where a task's prompt (or stage-1 LoRA adapter) lives inside a run or checkpoint folder."""
    return "soft_prompt" if n_tasks == 1 and not lora else f"prompts/{task}"


# Optimizer state: a nested structure of tensors and plain values, flattened into one safetensors
# file (tensors) and a JSON skeleton (everything else).
def save_nested(path: Path, state) -> None:
    from safetensors.torch import save_file

    tensors = {}

    def walk(obj, key):
        import torch

        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().to("cpu").contiguous()
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} in optimizer state")

    skeleton = walk(state, "s")
    save_file(tensors, str(path), metadata={"skeleton": json.dumps(skeleton)})


def load_nested(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads(f.metadata()["skeleton"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def build(obj):
        if isinstance(obj, dict) and "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if isinstance(obj, dict) and "__dict__" in obj:
            return {build(k): build(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [build(v) for v in obj]
        return obj

    return build(skeleton)


def manifest(**fields) -> dict:
    return {"format": FORMAT, **fields}


def write_manifest(run_dir: Path, data: dict) -> None:
    write_json_atomic(Path(run_dir) / MANIFEST, data)


def check_output(run_dir: Path, resume: bool) -> None:
    run_dir = Path(run_dir)
    if resume:
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FmtspecError(f"output folder {run_dir} is not empty; pass --resume to continue its run "
                           "or choose another --output")
