"""The run folder: its layout, its reader (`promot_hf`, the leaderboards, the pipeline) and its one writer
(`fmtspec train`), in one place.

    RUN_DIR/
      run.json          manifest (below)
      model/            save_pretrained folder (safetensors), present when the model's weights changed
      soft_prompt/      PEFT prompt-tuning folder (encoder prompt) for a single-task prompt
      prompts/<task>/   one PEFT folder (prompt tuning, or LoRA for `stage1: lora`) per task, multi-task ProMoT
      metrics.jsonl     one JSON object per logged step: step, loss, lr, tokens_per_s, and val_* metrics
      checkpoints/      step-<N>/ folders, each written atomically (temporary folder, then rename)
      config.json       the resolved config, written when the run starts (--resume compares it)
      tensorboard/      TensorBoard event files, with `logging.tensorboard: true` (trainers/run_logs.py)
      wandb.json        the id of the run's W&B run, with `logging.wandb` (--resume continues it)
      .lock             flock-ed by the one process writing the folder (its pid inside); readers ignore it

run.json keys (all written by the trainers; readers must tolerate extra keys):
    format        "fmtspec-run/1"
    method        finetune | prompt_tuning | promot | joint | random_prompt | pretrain
    base_model    hub id or path the run started from (for a sequential run: the parent's model folder)
    model         folder of the trained model relative to RUN_DIR ("model"), or null when unchanged
    prompts       {task name or glob: prompt folder relative to RUN_DIR}: which prompt serves which task
    sentinel      whether training inputs ended with <extra_id_0>
    encoder_decoder  bool
    tasks         [{"name": task, "weight": w}, ...]
    stage, steps, seed, config (the resolved config), config_hash, parent (RUN_DIR or null), chain,
    checkpoint    {"step": N, "metric": name, "value": v} for the chosen checkpoint
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from pathlib import Path

from fmtspec.core.atomic_files import ASIDE, TMP_PREFIX, TRASH, recover, remove_folder, write_text_atomically
from fmtspec.core.errors import FmtspecError, read_json

MANIFEST = "run.json"
FORMAT = "fmtspec-run/1"
# The writer replaces a folder (model/, soft_prompt/, prompts/) by renaming the old one to .old-<name>-<pid>,
# then the new one into place (atomic_files.swap_in): a writer killed between the two leaves the old one,
# whole, under that name. Readers then use it (`located`); the next writer puts it back (`recover`).


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(run_dir: str | Path) -> dict:
    """The manifest of `run_dir`, with one clear error when it is missing or unreadable."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        raise FmtspecError(f"{run_dir} is not a fmtspec run folder: it has no {MANIFEST}")
    manifest = read_json(path, "a fmtspec run manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FmtspecError(f"{path} is not a fmtspec run manifest (expected \"format\": \"{FORMAT}\")")
    return manifest


def located(run_dir: str | Path, relative: str) -> Path:
    """RUN_DIR/relative, or where a killed writer left it moved aside (see ASIDE)."""
    path = Path(run_dir) / relative
    if path.exists():
        return path
    top, *rest = Path(relative).parts
    for aside in sorted(Path(run_dir).glob(f"{ASIDE}{top}-*")):
        if aside.joinpath(*rest).exists():
            return aside.joinpath(*rest)
    return path


def model_path(run_dir: str | Path, manifest: dict) -> str:
    """Where the run's model weights are: its own model/ folder, or the base model it left unchanged."""
    if manifest.get("model"):
        return str(located(run_dir, manifest["model"]))
    return manifest["base_model"]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model")


def tokenizer_path(run_dir: str | Path, manifest: dict) -> str:
    """Where the run's tokenizer is: beside its weights, else its base model's (a trainer's model/ folder
    may hold weights only)."""
    weights = model_path(run_dir, manifest)
    path = Path(weights)
    if not path.is_dir() or any((path / name).is_file() for name in TOKENIZER_FILES):
        return weights
    return manifest["base_model"]


def prompt_paths(run_dir: str | Path, manifest: dict) -> dict[str, Path]:
    """{task name or glob pattern: absolute prompt folder}."""
    return {task: located(run_dir, rel) for task, rel in (manifest.get("prompts") or {}).items()}


def run_of(path: str | Path) -> tuple[Path | None, str | None]:
    """(the run folder `path` names, the part of it) for RUN_DIR, RUN_DIR/model (part None: the run itself),
    RUN_DIR/<other folder> and RUN_DIR/checkpoints/step-N (part: its name); (None, None) for any other path."""
    candidate = Path(path)
    if is_run_folder(candidate):
        return candidate, None
    if len(candidate.parts) < 2:  # a bare name (a dtype, a size): its parent would be the working folder
        return None, None
    if is_run_folder(candidate.parent):
        return candidate.parent, None if candidate.name == "model" else candidate.name
    if candidate.parent.name == CHECKPOINTS and is_run_folder(candidate.parent.parent):
        return candidate.parent.parent, candidate.name
    return None, None


def tasks_of_prompt(folder: str | Path) -> list[str]:
    """The tasks a prompt folder serves when it lies in a run folder (RUN/soft_prompt or RUN/prompts/<task>);
    [] for a folder outside any run."""
    path = Path(folder).resolve()
    for run_dir in (path.parent, path.parent.parent):
        if is_run_folder(run_dir):
            return [task for task, where in prompt_paths(run_dir, read_manifest(run_dir)).items()
                    if where.resolve() == path]
    return []


# -- the writer's files --------------------------------------------------------------------------------

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"  # a plain optimizer (ZeRO 0, fp32): the same in every process


PREDICTIONS = "val_predictions.jsonl"  # the validation generations a checkpoint was scored on
CONFIG_FILE = "config.json"  # the resolved config, written when the run starts (resume reads it)
LOCK_FILE = ".lock"  # held (flock) by the one process that writes the run folder; holds its pid
OUTPUTS = ("model", "soft_prompt", "prompts")  # what finish() writes beside run.json
TMP = TMP_PREFIX  # being written (TRASH: being removed): never part of a run, removed on the next start
# the run logs (trainers/run_logs.py) write these
TENSORBOARD_DIR = "tensorboard"  # `logging.tensorboard: true`: RUN_DIR/tensorboard
WANDB_RUN_FILE = "wandb.json"  # {"id", "project", "entity"} of the run's W&B run (--resume continues it)


def optimizer_rank_file(rank: int) -> str:
    """One process's partition of a ZeRO (or bf16) optimizer's state."""
    return f"optimizer-rank{rank}.safetensors"


def write_json_atomic(path: Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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
    """Temporary folders of a run killed while writing (or removing) a checkpoint."""
    recover(Path(run_dir) / CHECKPOINTS)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the lines of steps up to `step` (later ones are trained again); a partial last line (a kill while
    appending) goes too. Rewritten atomically."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text_atomically(path, "".join(kept))


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def checkpoint_manifest(run_dir: str | Path, step: int | str) -> dict:
    """The manifest that presents one step of the run as a run folder of its own: "final" (the run as it
    ended), 0 (the model it started from, without prompts) or a checkpoint's step (its model, or the start
    model where that stage left the weights unchanged, and the prompts saved with it). Paths are absolute."""
    run_dir = Path(run_dir).resolve()
    manifest = read_manifest(run_dir)
    if step == "final":
        return {**manifest, "prompts": {task: str(path) for task, path in prompt_paths(run_dir, manifest).items()},
                "model": model_path(run_dir, manifest) if manifest.get("model") else None}
    step = int(step)
    view = {**manifest, "model": None, "prompts": {}, "checkpoint": {"step": step}, "view_of": str(run_dir)}
    if step == 0:
        return view
    ckpt = checkpoint_dir(run_dir, step)
    if not (ckpt / TRAINER_STATE).is_file():
        raise FmtspecError(f"{run_dir} has no checkpoint step-{step} (it has: "
                           f"{', '.join(map(str, checkpoint_steps(run_dir))) or 'none'})")
    n = len(manifest.get("tasks") or [])
    lora = manifest.get("prompt_type") == "lora"
    for task in manifest.get("prompts") or {}:
        folder = ckpt / prompt_folder(task, n, lora)
        if folder.is_dir():
            view["prompts"][task] = str(folder)
    if (ckpt / "model").is_dir():
        view["model"] = str(ckpt / "model")
    return view


def write_checkpoint_view(run_dir: str | Path, step: int, view_dir: Path) -> Path:
    """A folder whose run.json is `checkpoint_manifest(run_dir, step)`: `promot_hf` loads it like any run."""
    view_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(checkpoint_manifest(run_dir, step), indent=2) + "\n"
    path = view_dir / MANIFEST
    if not path.is_file() or path.read_text() != text:  # keep its mtime when nothing changed
        write_text_atomically(path, text)
    return view_dir


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """One line of metrics.jsonl, written and closed at once: a kill mid-line leaves a partial last line, which
    `read_metrics` skips and `truncate_metrics` drops."""
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's logged steps (`metrics.jsonl`); [] when it has none. A partial last line is a run still
    writing it; a bad line before it is an error naming file and line."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise FmtspecError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


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


# -- the run folder's one writer --------------------------------------------------------------------------
def check_output(run_dir: Path, resume: bool) -> None:
    """What can be refused before anything is written (every process checks; the rest: `open_run`)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FmtspecError(f"--output {run_dir} is a file, not a folder")
    if resume and not (run_dir.is_dir() and any(run_dir.iterdir())):
        raise FmtspecError(f"--resume: {run_dir} {'is empty' if run_dir.is_dir() else 'does not exist'}: "
                           "nothing to resume; drop --resume to start the run")


class RunLock:
    """An OS lock (flock) on RUN_DIR/.lock: one writer per run folder. The kernel releases it when the process
    dies, so a killed run never blocks its --resume; the file holds the writer's pid for the refusal message."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FmtspecError(f"{self.run_dir} is being written by another training (pid {holder}); wait "
                                   "for it to end or choose another --output") from None
            except OSError as exc:  # a file system without locks (some Lustre mounts): go on, unguarded
                os.close(fd)
                print(f"fmtspec train: warning: cannot lock {self.path} ({exc.strerror}); a second training "
                      "into this folder would not be refused", file=sys.stderr)
                return
            try:  # a writer that just ended removed the file we opened: lock the one now in place
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: a process that opened it retries (acquire)
            os.close(self.fd)
            self.fd = None


def tensorboard_dir(config: dict, run_dir: Path) -> Path | None:
    """Where `logging.tensorboard` puts the event files, or None (off)."""
    value = (config.get("logging") or {}).get("tensorboard")
    if value is None or value is False:
        return None
    if value is True:
        return Path(run_dir) / TENSORBOARD_DIR
    if not isinstance(value, str) or not value.strip():
        raise FmtspecError(f"config key 'logging.tensorboard' must be true/false or a folder, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(run_dir) / path


def startup_names(run_dir: Path) -> set[str]:
    """Names in the run folder that logging may write before the first checkpoint (never_started):
    the W&B id file and the TensorBoard folder (the configured one too, read from the folder's config.json)."""
    names = {WANDB_RUN_FILE, TENSORBOARD_DIR}
    try:
        config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
        folder = tensorboard_dir(config, Path(run_dir))
    except (OSError, ValueError, AttributeError, FmtspecError):
        return names
    if folder is not None:
        try:
            names.add(folder.relative_to(run_dir).parts[0])
        except (ValueError, IndexError):  # outside the run folder
            pass
    return names


def never_started(run_dir: Path) -> bool:
    """No run.json and no complete checkpoint: what a failed start leaves (config.json, the lock, metrics of steps
    before the first checkpoint, temporary folders). A new start, with or without --resume, takes it over."""
    run_dir = Path(run_dir)
    if checkpoint_steps(run_dir):
        return False
    startup = {LOCK_FILE, CONFIG_FILE, METRICS, CHECKPOINTS} | startup_names(run_dir)  # + tensorboard/, wandb.json
    return all(p.name in startup or p.name.startswith((TMP, TRASH)) for p in run_dir.iterdir())


def clear_start(run_dir: Path) -> None:
    """Remove what a failed start left (see `never_started`), the lock aside."""
    for p in Path(run_dir).iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir():
            remove_folder(p)
        else:
            p.unlink(missing_ok=True)


_UNSET = object()


def differences(saved, now, prefix: str = "") -> list[str]:
    """`dotted.key (was A, now B)` for every key whose value differs between two configs."""
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = [*saved, *(k for k in now if k not in saved)]
        return [d for k in keys for d in differences(saved.get(k, _UNSET), now.get(k, _UNSET), f"{prefix}{k}.")]
    if saved == now:
        return []
    before, after = ("unset" if v is _UNSET else json.dumps(v) for v in (saved, now))
    return [f"{prefix[:-1]} (was {before}, now {after})"]


def write_error(exc: BaseException, run_dir: Path) -> str | None:
    """The one line for a failed write into the run folder (a full disk, a read-only or missing path), or None
    for an error that is not one."""
    from safetensors import SafetensorError

    run_dir = Path(run_dir)
    if isinstance(exc, SafetensorError):  # safetensors' own error for a failed file write
        text = str(exc)
        return f"cannot write into {run_dir}: {text}" if text.startswith("Error while serializing") else None
    if not isinstance(exc, OSError):
        return None
    path = exc.filename
    inside = path is not None and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(run_dir))
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    if not (inside or full):
        return None
    return f"cannot write {path if path is not None else run_dir}: {exc.strerror or exc}"
