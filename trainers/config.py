"""The training config: schema, paper defaults, presets, and validation before any work.

A config is one YAML file (see configs/); `--set key=value` overrides any dotted key. Every problem
(unknown key, wrong type, unknown task or method) is one FmtspecError line naming the key and, when
there is one, the closest valid name.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmtspec.errors import FmtspecError

# The ways of fine-tuning a pretrained model that the papers compare, and pretraining from scratch.
FINETUNE_METHODS = ("finetune", "prompt_tuning", "promot", "joint", "random_prompt")
METHODS = FINETUNE_METHODS + ("pretrain",)
SCRATCH_PREFIX = "mini:"  # `model: mini:bart`: a random model on the miniature world's word tokenizer
SCRATCH_KINDS = ("bart",)


@dataclass(frozen=True)
class Field:
    type: type | tuple  # int, float, str, bool, list, dict, or a tuple of them
    default: Any = None
    choices: tuple | None = None
    nullable: bool = True
    help: str = ""


# Defaults follow the ProMoT paper (A.2.4) and T5's fine-tuning set-up.
SCHEMA: dict = {
    "method": Field(str, None, METHODS, nullable=False, help="what is trained"),
    "model": Field(str, None, help="hub id or model folder (a sequential run starts from init_from's model), "
                                   "or mini:bart: a random BART on the miniature world's tokenizer (from scratch)"),
    "architecture": {  # of a `mini:` model built from scratch; null: fmtspec.tiny_models.bart_config's size
        "d_model": Field(int, None),
        "encoder_layers": Field(int, None),
        "decoder_layers": Field(int, None),
        "attention_heads": Field(int, None, help="in every encoder and decoder layer"),
        "ffn_dim": Field(int, None, help="in every encoder and decoder layer"),
        "max_positions": Field(int, None, help="learned absolute positions: the longest input and target"),
    },
    "tasks": Field((list, dict, str), None, nullable=False,
                   help="task names, or [{name, weight}] / {name: weight} for a mixture"),
    "preset": Field(str, None, help="seed-001 presets, see PRESETS"),
    "seed": Field(int, 0),
    "threads": Field(int, None, help="CPU threads of torch in this process (null: torch's default); the miniature "
                                     "base pins 1, so its weights do not depend on the machine's core count"),
    "init_from": Field(str, None, help="RUN_DIR of an earlier run: start from its final model (teach twice)"),
    "sentinel": Field((bool, str), "auto", help="end T5 inputs with <extra_id_0> (auto: when the tokenizer has it)"),
    "shots": Field(int, 0, (0, 1), help="prepend a random k-shot example of the same task to every input"),
    "shots_share": Field(float, 1.0, nullable=False,
                         help="the share of training inputs that get the `shots` demonstrations (e.g. 0.25)"),
    "stage1": Field(str, "prompt", ("prompt", "lora"), help="what ProMoT's stage 1 trains"),
    "stage1_from": Field(str, None, help="ProMoT: RUN_DIR of a prompt_tuning run whose chosen prompt is stage 1 "
                                         "(not trained again; its model, tasks and prompt length must match)"),
    "prompt": {
        "length": Field(int, 100, nullable=False),
        "init": Field(str, "uniform", ("uniform", "vocab", "text")),
        "init_range": Field(float, 0.5, help="uniform init in [-r, r]"),
        "init_text": Field(str, None),
        "vocab_top": Field(int, 5000, help="vocab init samples among the first N token ids"),
    },
    "lora": {
        "rank": Field(int, 4, nullable=False),
        "alpha": Field(float, None, help="default: 2 x rank"),
        "dropout": Field(float, 0.0),
        "target_modules": Field(list, None, help="default: PEFT's for the architecture"),
        "lr": Field(float, 1e-3, nullable=False, help="stage-1 learning rate when stage1 is lora"),
    },
    "prompt_training": {  # stage 1 of promot; all of prompt_tuning
        "steps": Field(int, 5000),
        "epochs": Field(float, None, help="instead of steps"),
        "lr": Field(float, 0.2, nullable=False),
        "eval_every": Field(int, 1000, help="checkpoint + validation every K steps (0: only at the end)"),
    },
    "model_training": {  # finetune, joint, random_prompt, stage 2 of promot
        "steps": Field(int, 1000),
        "epochs": Field(float, None, help="instead of steps"),
        "lr": Field(float, 1e-3, nullable=False),
        "eval_every": Field(int, 100),
    },
    "batch_size": Field(int, 64, nullable=False),
    "micro_batch_size": Field(int, None, help="per forward pass; default batch_size (no accumulation)"),
    "optimizer": Field(str, "adafactor", ("adafactor", "adamw")),
    "weight_decay": Field(float, 0.0),
    "lr_scheduler": Field(str, "constant", ("constant", "linear")),
    "warmup_steps": Field(int, 0),
    "gradient_clipping": Field(float, None),
    "dropout": Field(float, 0.1),
    "label_smoothing": Field(float, 0.1),
    "max_input_length": Field(int, 1024, help="inputs are cut to this many tokens (summarization: 1024)"),
    "max_target_length": Field(int, 256),
    "data": {
        "split": Field(str, "train"),
        "limit": Field(int, None, help="use the first N examples of each task"),
    },
    "eval": {
        "split": Field(str, "validation"),
        "limit": Field(int, 200, help="validation examples per task (null: all)"),
        "max_new_tokens": Field(int, 64),
        "batch_size": Field(int, 16),
        "num_beams": Field(int, 1, help="1: greedy (lm-eval's default); the paper decodes with 4"),
    },
    "engine": {
        "deepspeed": Field(str, "zero0", help="zero0..zero3 (configs/deepspeed/) or a DeepSpeed JSON path"),
        "precision": Field(str, "auto", ("auto", "bf16", "fp32"), help="auto: bf16 on GPU, fp32 on CPU"),
    },
    "log_every": Field(int, 10),
    "keep_checkpoints": Field(int, None, help="keep the chosen and the N newest checkpoints (null: all)"),
}

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


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _dotted_keys(schema: dict, where: str = "") -> list[str]:
    out = []
    for key, spec in schema.items():
        out += _dotted_keys(spec, f"{where}{key}.") if isinstance(spec, dict) else [f"{where}{key}"]
    return out


def _suggest(key: str, siblings: dict, where: str) -> str:
    """The closest key of the same section, else a key of the same name elsewhere (`steps` -> `model_training.steps`)."""
    match = difflib.get_close_matches(key, list(siblings), n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{where}{match[0]}'?)"
    elsewhere = [d for d in _dotted_keys(SCHEMA) if d.rsplit(".", 1)[-1] == key]
    return f" (did you mean '{elsewhere[0]}'?)" if elsewhere else ""


def defaults(schema: dict = SCHEMA) -> dict:
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def merge(base: dict, update: dict) -> dict:
    """Nested update: sections merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "tasks":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check(section: dict, schema: dict, where: str = "") -> None:
    for key, value in section.items():
        dotted = f"{where}{key}"
        if key not in schema:
            raise FmtspecError(f"unknown config key '{dotted}'{_suggest(key, schema, where)}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise FmtspecError(f"config key '{dotted}' must be a mapping of {', '.join(spec)}")
            _check(value, spec, f"{dotted}.")
            continue
        section[key] = _coerce(dotted, value, spec)


def _coerce(dotted: str, value, spec: Field):
    if value is None:
        if not spec.nullable:
            raise FmtspecError(f"config key '{dotted}' must be set")
        return None
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if float in types and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML reads 1e-3 as a string
            value = float(value)
        except ValueError:
            pass
    if int in types and isinstance(value, float) and value.is_integer() and float not in types:
        value = int(value)
    ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in types)
    if not ok:
        names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true/false",
                             list: "a list", dict: "a mapping"}[t] for t in types)
        raise FmtspecError(f"config key '{dotted}' must be {names}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise FmtspecError(f"config key '{dotted}' is {value!r}; choose one of "
                           f"{', '.join(map(str, spec.choices))}{_closest(str(value), map(str, spec.choices))}")
    return value


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
            raise FmtspecError(f"unknown task '{name}' in config key 'tasks'{_closest(str(name), ALL_TASKS)}")
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


def load_config(path: str | Path | None, overrides: list[str] = (), raw: dict | None = None) -> dict:
    """Read, merge (defaults < preset < file < --set), validate and resolve a config."""
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
    _check(copy.deepcopy(user), SCHEMA)  # names and types of what the user wrote, before presets
    preset = user.get("preset")
    config = defaults()
    if preset is not None:
        if preset not in PRESETS:
            raise FmtspecError(f"unknown preset '{preset}'{_closest(preset, PRESETS)}; "
                               f"presets: {', '.join(PRESETS)}")
        config = merge(config, PRESETS[preset])
    config = merge(config, user)
    for section in ("prompt_training", "model_training"):  # the length the user gave wins over a preset's
        given = user.get(section) or {}
        if "steps" in given and "epochs" not in given:
            config[section]["epochs"] = None
        elif "epochs" in given and "steps" not in given:
            config[section]["steps"] = None
    _check(config, SCHEMA)
    config["tasks"] = normalize_tasks(config["tasks"])
    _check_consistency(config)
    return config


def _check_consistency(config: dict) -> None:
    if config["stage1_from"] and (config["method"] != "promot" or config["stage1"] != "prompt"):
        raise FmtspecError("config key 'stage1_from' reuses a prompt-tuning run as ProMoT's stage 1: it needs "
                           "method: promot with stage1: prompt")
    if config["threads"] is not None and config["threads"] < 1:
        raise FmtspecError(f"config key 'threads' must be at least 1 (or null), got {config['threads']}")
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
    if not 0.0 <= config["shots_share"] <= 1.0:
        raise FmtspecError(f"config key 'shots_share' must be between 0 and 1, got {config['shots_share']}")
    sizes = {k: v for k, v in config["architecture"].items() if v is not None}
    if any(v < 1 for v in sizes.values()):
        raise FmtspecError(f"config key 'architecture' sizes must be positive, got {sizes}")
    model = config["model"]
    if not is_scratch(model) or config["init_from"]:
        if sizes:
            raise FmtspecError(f"config key 'architecture' applies to a model built from scratch "
                               f"({SCRATCH_PREFIX}{SCRATCH_KINDS[0]}), not to {config['init_from'] or model}")
        return
    kind = model[len(SCRATCH_PREFIX):]
    if kind not in SCRATCH_KINDS:
        kinds = [SCRATCH_PREFIX + k for k in SCRATCH_KINDS]
        raise FmtspecError(f"unknown model '{model}'{_closest(model, kinds)}; models built from scratch: "
                           f"{', '.join(kinds)}")
    other = [t["name"] for t in config["tasks"] if not t["name"].startswith("fmtspec_mini_")]
    if other:
        raise FmtspecError(f"model {model} has the miniature world's word vocabulary: it cannot train on "
                           f"{other[0]} (use fmtspec_mini_* tasks)")


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
