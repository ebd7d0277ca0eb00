"""The run folder that `fmtspec train` writes and `promot_hf` and the leaderboard read.

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

import json
from pathlib import Path

from fmtspec.errors import FmtspecError

MANIFEST = "run.json"
FORMAT = "fmtspec-run/1"
# The trainer replaces a folder (model/, soft_prompt/, prompts/) by renaming the old one to .old-<name>-<pid>,
# then the new one into place (trainers/run.py swap_in): a writer killed between the two leaves the old one,
# whole, under that name. Readers then use it; the next writer puts it back.
ASIDE = ".old-"


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(run_dir: str | Path) -> dict:
    """The manifest of `run_dir`, with one clear error when it is missing or unreadable."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        raise FmtspecError(f"{run_dir} is not a fmtspec run folder: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FmtspecError(f"cannot read {path}: {exc}") from None
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
