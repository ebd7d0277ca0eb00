"""`method: pretrain`: the miniature world's base model, trained from scratch on a mixture of its tasks.

    method: pretrain
    model: mini:bart            # a random BART (trainers.models) on the world's word tokenizer
    architecture: {d_model: 128, encoder_layers: 3, decoder_layers: 3, attention_heads: 4, ffn_dim: 512}
    tasks: [fmtspec_mini_copy, ...]
    shots: 1
    shots_share: 0.25           # a quarter of the inputs get a demonstration of the same task

The Trainer is the one of every method (one stage that trains the model, capped by model_training.steps);
the run's model/ holds the weights and the tokenizer, so the run folder is a `base_model` / `init_from` of
later runs and a `pretrained=` of `lm_eval --model promot_hf`.

`cached_base(config)` trains it once per config: the run folder goes to `$FMTSPEC_CACHE/mini_base/<hash>`
(default ~/.cache/fmtspec), the hash covering the config, the built architecture, the vocabulary and the
bytes of the data it reads, so a second demo finds it and does not pretrain again.

The base of `configs/mini/pretrain.yaml` on the default world ships with the checkout (`models/mini_pretrained`,
a run folder without checkpoints): its `shipped.json` records the cache key it was trained under, and
`cached_base` returns it for that key instead of pretraining. Float sums (hence the weights, and at 2,000 steps
whether the 1-shot skills have emerged) differ between CPUs and library versions, so a base trained on each
machine would differ; the shipped one is the same everywhere. `make mini-base` trains it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from fmtspec.core.atomic_files import atomic_folder
from fmtspec.core.errors import FmtspecError
from trainers.config import NOT_IN_CACHE_KEY, SCRATCH_PREFIX, config_hash, is_scratch
from trainers.models import scratch_config

CACHE_SUBDIR = "mini_base"
SHIPPED_BASE = Path(__file__).resolve().parents[1] / "models" / "mini_pretrained"
SHIPPED_RECORD = "shipped.json"  # {"cache_key": ..., "model_safetensors_sha256": ..., "trained_with": {...}}


def cache_key(config: dict) -> str:
    """What decides the pretrained weights: the resolved config (less NOT_IN_CACHE_KEY), the architecture it
    builds, the vocabulary and the bytes of every data file the run reads (train and validation splits)."""
    from harness_tasks import mini_world

    if not is_scratch(config["model"]):
        raise FmtspecError(f"a cached base is trained from scratch (model: {SCRATCH_PREFIX}bart), "
                           f"not from {config['model']}")
    h = hashlib.sha256()
    weights_config = {k: v for k, v in config.items() if k not in NOT_IN_CACHE_KEY}
    h.update(json.dumps({"config": config_hash(weights_config), "architecture": scratch_config(config).to_dict(),
                         "vocabulary": mini_world.vocabulary()}, sort_keys=True, default=str).encode())
    root = mini_world.data_dir()
    for task in config["tasks"]:
        key = task["name"].removeprefix("fmtspec_")
        for split in sorted({config["data"]["split"], config["eval"]["split"], mini_world.FEWSHOT_SPLIT}):
            path = root / key / f"{split}.jsonl"
            if not path.is_file():
                raise FmtspecError(f"miniature world data file not found: {path}")
            h.update(f"{key}/{split}:".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    from harness_tasks.mini_world import cache_dir

    return cache_dir() / CACHE_SUBDIR


def _shipped_key() -> str | None:
    """The cache key the checkout's shipped base was trained under (None without a readable record)."""
    try:
        record = json.loads((SHIPPED_BASE / SHIPPED_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("cache_key") if isinstance(record, dict) else None


def find_base(config: dict) -> Path | None:
    """The run folder of `config`'s pretraining if it exists already: shipped, else in the cache."""
    from fmtspec.core.run_folder import is_run_folder

    key = cache_key(config)
    if _shipped_key() == key:
        return SHIPPED_BASE
    folder = cache_root() / key
    return folder if is_run_folder(folder) else None


def cached_base(config: dict, *, log=print) -> Path:
    """The run folder of `config`'s pretraining: the shipped base or one in the cache, else trained into the
    cache (atomic_folder: concurrent callers never see half a run, the first to finish wins)."""
    from trainers.train import train

    if config["method"] != "pretrain":
        raise FmtspecError(f"a cached base is a method: pretrain run, not {config['method']}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FmtspecError("a cached base is trained in one process; run it without a launcher")
    found = find_base(config)
    if found is not None:
        log(f"pretrained base ({'shipped' if found == SHIPPED_BASE else 'cached'}): {found}")
        return found
    folder = cache_root() / cache_key(config)
    try:
        with atomic_folder(folder, replace=False) as tmp:
            log(f"pretraining the base into {folder}")
            train(config, tmp)
    except OSError as exc:
        raise FmtspecError(f"cannot write the pretrained base into {folder} ({exc.strerror or exc}); "
                           "set $FMTSPEC_CACHE to a writable folder") from None
    return folder


def ship_base(run_dir: str | Path, dest: Path = SHIPPED_BASE) -> Path:
    """Make the finished pretraining run `run_dir` the checkout's shipped base: its run.json, metrics and
    model/ (no checkpoints), plus shipped.json with the cache key and the versions it was trained with.
    Written beside `dest` and swapped in, so an interrupted call leaves the old base whole."""
    import platform

    import torch
    import transformers

    from fmtspec.core.run_folder import read_manifest

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("method") != "pretrain":
        raise FmtspecError(f"{run_dir} is a method: {manifest.get('method')} run, not a pretraining run")
    model = run_dir / (manifest.get("model") or "model")
    record = {
        "cache_key": cache_key(manifest["config"]),
        "model_safetensors_sha256": hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest(),
        "model_sha256": manifest.get("model_sha256"),
        "validation_score": (manifest.get("checkpoint") or {}).get("value"),
        "trained_with": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "cpu": _cpu_name(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                         "threads": manifest["config"].get("threads")},
    }
    with atomic_folder(dest) as tmp:
        shutil.copytree(model, tmp / "model")
        for name in ("run.json", "metrics.jsonl"):
            shutil.copy2(run_dir / name, tmp / name)
        if (dest / "README.md").is_file():  # the model card is written by hand
            shutil.copy2(dest / "README.md", tmp / "README.md")
        (tmp / SHIPPED_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dest


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m trainers.pretrain",
                                     description="Make a finished `fmtspec train configs/mini/pretrain.yaml` run "
                                                 "the shipped miniature base (models/mini_pretrained).")
    parser.add_argument("--ship", metavar="RUN_DIR", required=True, help="the finished pretraining run folder")
    args = parser.parse_args(argv)
    try:
        print(f"shipped base: {ship_base(args.ship)}")
    except FmtspecError as exc:
        print(f"fmtspec: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
