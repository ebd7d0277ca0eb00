"""The training config: schema, paper defaults, presets, and validation before any work.

A config is one YAML file (see configs/); `--set key=value` overrides any dotted key. Every problem
(unknown key, wrong type, a number out of its `Field` range, unknown task or method, a model that is neither
an existing model folder nor a valid hub id, a missing DeepSpeed JSON) is one FmtspecError line naming the
key and the value and, when there is one, the closest valid name or the allowed range. Nothing here imports
torch or transformers, or asks the hub.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from fmtspec.core.errors import FmtspecError, did_you_mean
from fmtspec.core.schema import Field, check, dotted_keys, merge
from fmtspec.core.schema import defaults as schema_defaults
from trainers.methods import METHODS

SCRATCH_PREFIX = "mini:"  # `model: mini:bart`: a random model on the miniature world's word tokenizer
SCRATCH_KINDS = ("bart",)


# Defaults follow the ProMoT paper (A.2.4) and T5's fine-tuning set-up. Every number has its range (min/max
# inclusive, gt/lt exclusive); null is allowed where `nullable` and it means what the help says.
SCHEMA: dict = {
    "method": Field(str, None, METHODS, nullable=False, help="what is trained"),
    "model": Field(str, None, help="hub id or model folder (a sequential run starts from init_from's model), "
                                   "or mini:bart: a random BART on the miniature world's tokenizer (from scratch)"),
    "trust_remote_code": Field(bool, False, nullable=False,
                               help="let transformers run a model folder's own code (off unless asked)"),
    "architecture": {  # of a `mini:` model built from scratch; null: harness_tasks.mini_world.bart_config's size
        "d_model": Field(int, None, min=1),
        "encoder_layers": Field(int, None, min=1),
        "decoder_layers": Field(int, None, min=1),
        "attention_heads": Field(int, None, min=1, help="in every encoder and decoder layer"),
        "ffn_dim": Field(int, None, min=1, help="in every encoder and decoder layer"),
        "max_positions": Field(int, None, min=1, help="learned absolute positions: the longest input and target"),
    },
    "tasks": Field((list, dict, str), None, nullable=False,
                   help="task names, or [{name, weight}] / {name: weight} for a mixture"),
    "preset": Field(str, None, help="seed-001 presets, see PRESETS"),
    "seed": Field(int, 0, nullable=False, min=0),
    "threads": Field(int, None, min=1, help="CPU threads of torch in this process (null: torch's default); the "
                                            "miniature base pins 1, so its weights do not depend on the machine's "
                                            "core count"),
    "init_from": Field(str, None, help="RUN_DIR of an earlier run: start from its final model (teach twice)"),
    "sentinel": Field((bool, str), "auto", help="end T5 inputs with <extra_id_0> (auto: when the tokenizer has it)"),
    "shots": Field(int, 0, (0, 1), nullable=False,
                   help="prepend a random k-shot example of the same task to every input"),
    "shots_share": Field(float, 1.0, nullable=False, min=0, max=1,
                         help="the share of training inputs that get the `shots` demonstrations (e.g. 0.25)"),
    "stage1": Field(str, "prompt", ("prompt", "lora"), help="what ProMoT's stage 1 trains"),
    "stage1_from": Field(str, None, help="ProMoT: RUN_DIR of a prompt_tuning run whose chosen prompt is stage 1 "
                                         "(not trained again; its model, tasks and prompt length must match)"),
    "prompt": {
        "length": Field(int, 100, nullable=False, min=1),
        "init": Field(str, "uniform", ("uniform", "vocab", "text")),
        "init_range": Field(float, 0.5, nullable=False, gt=0, help="uniform init in [-r, r]"),
        "init_text": Field(str, None),
        "vocab_top": Field(int, 5000, nullable=False, min=1, help="vocab init samples among the first N token ids"),
    },
    "lora": {
        "rank": Field(int, 4, nullable=False, min=1),
        "alpha": Field(float, None, gt=0, help="default: 2 x rank"),
        "dropout": Field(float, 0.0, nullable=False, min=0, lt=1),
        "target_modules": Field(list, None, help="default: PEFT's for the architecture"),
        "lr": Field(float, 1e-3, nullable=False, gt=0, help="stage-1 learning rate when stage1 is lora"),
    },
    "prompt_training": {  # stage 1 of promot; all of prompt_tuning
        "steps": Field(int, 5000, min=1),
        "epochs": Field(float, None, gt=0, help="instead of steps"),
        "lr": Field(float, 0.2, nullable=False, gt=0),
        "eval_every": Field(int, 1000, min=0, help="checkpoint + validation every K steps (0: only at the end)"),
    },
    "model_training": {  # finetune, joint, random_prompt, stage 2 of promot
        "steps": Field(int, 1000, min=1),
        "epochs": Field(float, None, gt=0, help="instead of steps"),
        "lr": Field(float, 1e-3, nullable=False, gt=0),
        "eval_every": Field(int, 100, min=0, help="checkpoint + validation every K steps (0: only at the end)"),
    },
    "batch_size": Field(int, 64, nullable=False, min=1),
    "micro_batch_size": Field(int, None, min=1, help="per forward pass; default batch_size (no accumulation)"),
    "optimizer": Field(str, "adafactor", ("adafactor", "adafactor_t5x", "adamw"),
                       help="adafactor_t5x: T5X's Adafactor (the paper's; configs/promot set it): steps scaled by "
                            "the weight's RMS, factored >= 128x128, prompts unscaled with weight decay 1e-5, "
                            "weight_decay = T5X's per-step rate (trainers/optim.py); adafactor: Hugging Face's, "
                            "fixed lr, no parameter scaling; adamw: torch's"),
    "weight_decay": Field(float, 0.0, nullable=False, min=0),
    "lr_scheduler": Field(str, "constant", ("constant", "linear")),
    "warmup_steps": Field(int, 0, nullable=False, min=0),
    "gradient_clipping": Field(float, None, min=0, help="clip the gradient norm at this (null or 0: no clipping)"),
    "dropout": Field(float, 0.1, min=0, lt=1, help="on every dropout knob of the model (null: the model's own)"),
    "label_smoothing": Field(float, 0.1, nullable=False, min=0, max=1),
    "max_input_length": Field(int, 1024, nullable=False, min=2,
                              help="inputs are cut to this many tokens (summarization: 1024; T5 keeps </s>)"),
    "max_target_length": Field(int, 256, nullable=False, min=1),
    "data": {
        "split": Field(str, "train"),
        "limit": Field(int, None, min=1, help="train on a random sample of N examples of each task's split, "
                                              "drawn from the whole split by data.seed (never its first N; "
                                              "null: all)"),
        "seed": Field(int, None, min=0, help="seed of the data.limit and eval.limit samples (null: the run's "
                                             "seed, written into the recorded config)"),
    },
    "eval": {
        "split": Field(str, "validation"),
        "limit": Field(int, 200, min=1, help="validation examples per task: a random sample of the split by "
                                             "data.seed, 0-shot (null: all)"),
        "max_new_tokens": Field(int, 64, nullable=False, min=1),
        "batch_size": Field(int, 16, nullable=False, min=1),
        "num_beams": Field(int, 1, nullable=False, min=1,
                           help="1: greedy (lm-eval's default); the paper decodes with 4"),
    },
    "engine": {
        "deepspeed": Field(str, "zero0", nullable=False,
                           help="zero0..zero3 (configs/deepspeed/) or a DeepSpeed JSON path"),
        "precision": Field(str, "auto", ("auto", "bf16", "fp32"), help="auto: bf16 on GPU, fp32 on CPU"),
    },
    "log_every": Field(int, 10, nullable=False, min=1, help="log loss, lr and tokens/s every K steps"),
    "logging": {  # metrics.jsonl's records to TensorBoard / Weights & Biases too (trainers/run_logs.py); both off
        "tensorboard": Field((bool, str), False, help="true: event files in RUN_DIR/tensorboard; a folder: relative "
                                                      "to the run folder, or absolute"),
        "wandb": {  # on when `project` is set
            "project": Field(str, None, help="the W&B project: switches W&B on"),
            "entity": Field(str, None, help="W&B team or user (null: your default)"),
            "mode": Field(str, None, ("online", "offline", "disabled"), help="null: W&B's (WANDB_MODE, else online)"),
            "name": Field(str, None, help="the W&B run's name (null: the run folder's name)"),
            "group": Field(str, None, help="W&B group (fmtspec experiment: the experiment's name)"),
        },
    },
    "keep_checkpoints": Field((int, str), "auto", min=0,
                              help="each stage keeps its chosen checkpoint(s) and its N newest, the newest always "
                                   "(resume starts there); null: all; auto: 1 in a stage that trains the model's "
                                   "weights when it has at least 2B parameters (T5/mT5 XL, XXL), else all. The "
                                   "paper configs set 1"),
    "preempt_checkpoint_s": Field(int, 300, nullable=False, min=0,
                                  help="on SIGTERM/SIGINT, write a checkpoint at the next step when more than this "
                                       "many seconds of training would be lost (no checkpoint yet: always; 0: never)"),
}

# Keys that cannot change the weights a run trains (how a model is loaded, when an interrupted run saves):
# left out of the pretrained bases' cache keys (trainers.pretrain.cache_key), so that adding one keeps the
# shipped and cached bases valid. A new key that can change the weights does not belong here.
NOT_IN_CACHE_KEY = ("trust_remote_code", "preempt_checkpoint_s", "keep_checkpoints", "logging")

# Seed 001 ("Can we teach a model twice?", section 3.2): mT5-small, Hugging Face Trainer defaults
# (AdamW, linear decay, no label smoothing), batch 16; the task prefixes live in the task templates.
_TEACH_TWICE = {"model": "google/mt5-small", "batch_size": 16, "optimizer": "adamw", "lr_scheduler": "linear",
                "label_smoothing": 0.0, "sentinel": False, "eval": {"limit": None}}
PRESETS = {
    "teach_twice_a2t": {**_TEACH_TWICE, "tasks": ["fmtspec_a2t"],
                        "model_training": {"lr": 5e-4, "epochs": 10, "steps": None}},
    "teach_twice_translation": {**_TEACH_TWICE, "tasks": ["fmtspec_alt_en_zh"],
                                "model_training": {"lr": 5e-4, "epochs": 10, "steps": None}},
    "teach_twice_reviews": {**_TEACH_TWICE, "tasks": ["fmtspec_mcd_reviews"],
                            "model_training": {"lr": 7e-4, "epochs": 100, "steps": None}},
    "teach_twice_mixed": {**_TEACH_TWICE,
                          "tasks": [{"name": "fmtspec_a2t", "weight": 2}, {"name": "fmtspec_alt_en_zh", "weight": 1}],
                          "model_training": {"lr": 5e-4, "epochs": 10, "steps": None}},
}


def _suggest(key: str, siblings: dict, where: str) -> str:
    """The closest key of the same section, else a key of the same name elsewhere (`steps` -> `model_training.steps`)."""
    # the sections that hold a key of this name ("" the top level): the key is its own closest match there
    sections = [d[:-len(key)] for d in dotted_keys(SCHEMA) if d.rsplit(".", 1)[-1] == key]
    return did_you_mean(key, siblings, where) or (did_you_mean(key, [key], sections[0]) if sections else "")


def defaults() -> dict:
    return schema_defaults(SCHEMA)


def _check(config: dict) -> None:
    check(config, SCHEMA, hint=_suggest)


def normalize_tasks(tasks) -> list[dict]:
    """'t' | [t, ...] | [{name, weight}] | {t: w} -> [{"name": t, "weight": w}], names checked."""
    from harness_tasks.catalog import ALL_TASKS

    if isinstance(tasks, str):
        tasks = [tasks]
    if isinstance(tasks, dict):
        tasks = [{"name": k, "weight": v} for k, v in tasks.items()]
    out = []
    for item in tasks:
        if isinstance(item, str):
            item = {"name": item, "weight": 1.0}
        if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "weight"}:
            raise FmtspecError(f"config key 'tasks' entries must be a task name or {{name, weight}}, got {item!r}")
        name, weight = item["name"], item.get("weight", 1.0)
        if name not in ALL_TASKS:
            raise FmtspecError(f"unknown task '{name}' in config key 'tasks'{did_you_mean(name, ALL_TASKS)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise FmtspecError(f"task '{name}' has weight {weight!r}; weights must be positive numbers")
        out.append({"name": name, "weight": float(weight)})
    if not out:
        raise FmtspecError("config key 'tasks' names no task")
    if len({t["name"] for t in out}) != len(out):
        raise FmtspecError("config key 'tasks' names a task twice")
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], YAML-parsed value)."""
    import yaml

    if "=" not in item:
        raise FmtspecError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _nest(path: list[str], value) -> dict:
    out = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_config(path: str | Path | None, overrides: list[str] = (), raw: dict | None = None, *,
                model_prefixes: tuple[str, ...] = ()) -> dict:
    """Read, merge (defaults < preset < file < --set), validate and resolve a config. A `model` starting with
    one of `model_prefixes` is resolved later by the caller (fmtspec experiment's tiny:, pretrain:) and is not
    checked as a folder or hub id here."""
    import yaml

    if raw is None:
        path = Path(path)
        if not path.is_file():
            raise FmtspecError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FmtspecError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise FmtspecError(f"{path} must hold a mapping of config keys")
    user = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        user = merge(user, _nest(keys, value))
    _check(copy.deepcopy(user))  # names and types of what the user wrote, before presets
    preset = user.get("preset")
    config = defaults()
    if preset is not None:
        if preset not in PRESETS:
            raise FmtspecError(f"unknown preset '{preset}'{did_you_mean(preset, PRESETS)}; "
                               f"presets: {', '.join(PRESETS)}")
        config = merge(config, PRESETS[preset])
    config = merge(config, user)
    for section in ("prompt_training", "model_training"):  # the length the user gave wins over a preset's
        given = user.get(section) or {}
        if "steps" in given and "epochs" not in given:
            config[section]["epochs"] = None
        elif "epochs" in given and "steps" not in given:
            config[section]["steps"] = None
    _check(config)
    if config["data"]["seed"] is None:  # recorded resolved: run.json names the seed of the data samples
        config["data"]["seed"] = config["seed"]
    config["tasks"] = normalize_tasks(config["tasks"])
    _check_consistency(config)
    _check_paths(config, model_prefixes)
    return config


def _check_consistency(config: dict) -> None:
    if config["stage1_from"] and (config["method"] != "promot" or config["stage1"] != "prompt"):
        raise FmtspecError("config key 'stage1_from' reuses a prompt-tuning run as ProMoT's stage 1: it needs "
                           "method: promot with stage1: prompt")
    if isinstance(config["keep_checkpoints"], str) and config["keep_checkpoints"] != "auto":
        raise FmtspecError(f"config key 'keep_checkpoints' is {config['keep_checkpoints']!r}; choose auto, null "
                           "(all) or a number of newest checkpoints")
    if isinstance(config["sentinel"], str) and config["sentinel"] != "auto":
        raise FmtspecError(f"config key 'sentinel' is {config['sentinel']!r}; choose one of true, false, auto")
    if not config["model"] and not config["init_from"]:
        raise FmtspecError("config key 'model' must be set (or init_from, to start from an earlier run)")
    if config["micro_batch_size"] and config["batch_size"] % config["micro_batch_size"]:
        raise FmtspecError(f"batch_size {config['batch_size']} is not a multiple of micro_batch_size "
                           f"{config['micro_batch_size']}")
    if config["prompt"]["init"] == "text" and not config["prompt"]["init_text"]:
        raise FmtspecError("prompt.init is 'text' but prompt.init_text is not set")
    if config["stage1"] == "lora" and config["method"] != "promot":
        raise FmtspecError(f"stage1: lora applies to method promot only, not {config['method']}")
    if config["stage1"] == "lora" and len(config["tasks"]) > 1:
        raise FmtspecError("stage1: lora trains one adapter; multi-task ProMoT needs stage1: prompt")
    for section in ("prompt_training", "model_training"):
        if config[section]["steps"] is None and config[section]["epochs"] is None:
            raise FmtspecError(f"set {section}.steps or {section}.epochs")
    _check_scratch(config)


def is_scratch(model) -> bool:
    return isinstance(model, str) and model.startswith(SCRATCH_PREFIX)


def _check_scratch(config: dict) -> None:
    """A `mini:` model: a known kind, the world's tasks only (its tokenizer knows no other word), and
    `architecture` only for it."""
    sizes = {k: v for k, v in config["architecture"].items() if v is not None}
    model = config["model"]
    if not is_scratch(model) or config["init_from"]:
        if sizes:
            raise FmtspecError(f"config key 'architecture' applies to a model built from scratch "
                               f"({SCRATCH_PREFIX}{SCRATCH_KINDS[0]}), not to {config['init_from'] or model}")
        return
    kind = model[len(SCRATCH_PREFIX):]
    if kind not in SCRATCH_KINDS:
        kinds = [SCRATCH_PREFIX + k for k in SCRATCH_KINDS]
        raise FmtspecError(f"unknown model '{model}'{did_you_mean(model, kinds)}; models built from scratch: "
                           f"{', '.join(kinds)}")
    other = [t["name"] for t in config["tasks"] if not t["name"].startswith("fmtspec_mini_")]
    if other:
        raise FmtspecError(f"model {model} has the miniature world's word vocabulary: it cannot train on "
                           f"{other[0]} (use fmtspec_mini_* tasks)")


# The rules of huggingface_hub's validate_repo_id (2.x), offline: 'name' or 'namespace/name', each of ASCII
# letters, digits, '-', '_', '.', not starting or ending with '-' or '.', no '--' or '..', not ending in .git.
_HUB_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", flags=re.ASCII)
BUILTIN_DEEPSPEED = ("zero0", "zero1", "zero2", "zero3")


def is_hub_id(value: str) -> bool:
    """Whether `value` is a syntactically valid Hugging Face hub id (not whether that repository exists)."""
    return (value.count("/") <= 1 and _HUB_ID.fullmatch(value) is not None and "--" not in value
            and ".." not in value and not value.endswith(".git"))


def _looks_like_path(value: str, bases) -> bool:
    """A value that can only be meant as a folder: /x, ./x, ../x, ~/x, x/ or a/b/c (a hub id has one '/'), or
    a/b whose `a` exists in one of `bases`."""
    if value.startswith(("/", "./", "../", "~")) or value in (".", "..") or value.endswith("/"):
        return True
    if value.count("/") > 1 or os.sep != "/" and os.sep in value:
        return True
    return "/" in value and any((Path(base) / value.split("/", 1)[0]).exists() for base in bases)


def model_problem(value: str, key: str = "model", bases=None, looked: str = "") -> str | None:
    """Why `value` cannot be a model, in one line, or None: an existing folder needs a config.json; a value
    that looks like a path must be an existing folder (relative to one of `bases`, default the current
    folder); anything else must be a valid hub id (offline: syntax only, the hub is not asked)."""
    bases = [Path.cwd()] if bases is None else [Path(b) for b in bases]
    path = Path(value).expanduser()
    folder = next((base / path for base in bases if (base / path).is_dir()), None)
    if folder is not None:
        if (folder / "config.json").is_file():
            return None
        hint = f"; to start from that run, set init_from: {value}" if (folder / "run.json").is_file() else ""
        return f"{key}: {value} is a folder without config.json, not a model folder{hint}"
    if _looks_like_path(value, bases):
        return f"{key}: no such folder {value}{looked}"
    if not is_hub_id(value):
        return (f"{key}: {value!r} is neither a model folder nor a hub id ('name' or 'namespace/name' of letters, "
                f"digits, '-', '_', '.'){looked}")
    return None


def _check_paths(config: dict, model_prefixes: tuple[str, ...] = ()) -> None:
    """The model (unless a sequential run, which starts from init_from's model, or one built from scratch) and
    a DeepSpeed JSON file must exist; nothing is downloaded."""
    model = config["model"]
    if model and not config["init_from"] and not is_scratch(model) and not model.startswith(tuple(model_prefixes)):
        problem = model_problem(model)
        if problem:
            raise FmtspecError(problem)
        if model.startswith("~"):  # transformers does not expand it
            config["model"] = str(Path(model).expanduser())
    deepspeed = config["engine"]["deepspeed"]
    if deepspeed not in BUILTIN_DEEPSPEED and not Path(deepspeed).is_file():
        raise FmtspecError(f"engine.deepspeed: no such file {deepspeed} (or choose {', '.join(BUILTIN_DEEPSPEED)})")


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
