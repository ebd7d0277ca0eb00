"""The models runs start from: a hub id or folder as written, a tiny offline model (`tiny:<kind>`) built into
the experiment folder, or a base pretrained from scratch (`pretrain:CONFIG.yaml`), trained once into the cache
(trainers.pretrain) in the background while other work goes on."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fmtspec.core.errors import FmtspecError
from fmtspec.experiment_file import PRETRAIN_PREFIX, TINY_PREFIX, Experiment
from fmtspec.processes import finish_logged, offline_env, record, say, start_logged

def resolve_model(exp: Experiment, model: str | None) -> str | None:
    """The model a run starts from: a hub id or folder as is; `tiny:<kind>` -> the folder of that tiny
    offline model, built into the experiment folder once; `pretrain:<config>` -> the model folder of that
    pretraining run, trained once into the cache."""
    if model and model.startswith(PRETRAIN_PREFIX):
        return pretrained_base(exp, model)
    if not model or not model.startswith(TINY_PREFIX):
        return model
    from fmtspec.tiny_models import KINDS, build_tiny_model

    kind = model[len(TINY_PREFIX):]
    if kind not in KINDS:
        raise FmtspecError(f"unknown tiny model '{model}'; choose {', '.join(TINY_PREFIX + k for k in KINDS)}")
    folder = exp.output / "models" / kind
    if not (folder / "config.json").is_file():
        say(f"building the tiny {kind} model in {folder}")
        build_tiny_model(kind, folder)
    return str(folder)


def pretrained_base(exp: Experiment, model: str) -> str:
    """The model folder of the `pretrain:<config>` base (trainers.pretrain.cached_base: the shipped base, or
    one keyed by the config and the data, so the base is pretrained once for every run and later experiment)."""
    from fmtspec.core.run_folder import model_path, read_manifest
    from trainers.pretrain import find_base

    if model not in exp.bases:
        pending = start_pretraining(exp, model)  # None when the base is shipped or cached
        run_dir = finish_pretraining(exp, pending) if pending else find_base(_base_config(model))
        exp.bases[model] = model_path(run_dir, read_manifest(run_dir))
    return exp.bases[model]


def _base_config(model: str) -> dict:
    from trainers.config import load_config

    return load_config(Path(model[len(PRETRAIN_PREFIX):]))


def start_pretraining(exp: Experiment, model: str) -> tuple | None:
    """Start `fmtspec train CONFIG --cached` in the background unless the base is shipped or cached; hand
    the result to finish_pretraining."""
    from trainers.pretrain import cache_key, cache_root, find_base

    config = _base_config(model)
    found = find_base(config)
    if found is not None:
        say(f"pretrained base: {found}")
        return None
    folder = cache_root() / cache_key(config)
    config_file = model[len(PRETRAIN_PREFIX):]
    log = exp.output / "logs" / "pretrain.log"
    say(f"pretraining the base {config_file} into {folder} (log: {log})")
    proc = start_logged([sys.executable, "-m", "fmtspec", "train", config_file, "--cached"], log,
                        offline_env(exp, share_cores=False))  # one process: every core
    return proc, log, model, folder, time.time()


def finish_pretraining(exp: Experiment, pending: tuple, stream: bool = False) -> Path:
    proc, log, model, folder, started = pending
    finish_logged(proc, log, f"pretraining the base {model[len(PRETRAIN_PREFIX):]}", stream)
    record(exp, "pretrain", model, seconds=round(time.time() - started, 1), run=str(folder))
    say(f"pretrained base: done in {time.time() - started:.0f} s")
    return folder
