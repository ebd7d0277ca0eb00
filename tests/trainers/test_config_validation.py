"""Validation before any work: every number of the training config has its range, a model must be an existing
folder or a valid hub id, and `fmtspec experiment --check` checks the launcher, the base model and the lm_eval
settings. Each bad value goes through the real command line (`fmtspec train`, `fmtspec experiment --check`,
in-process) and must end in one stderr line naming the key, a non-zero exit and no run folder; the same key
with a good value must pass (so that each row can fail). Training itself is replaced by a stub: nothing here
imports torch or trains."""

import json
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]

GOOD_CONFIG = """\
method: finetune
model: google/mt5-small
tasks: [fmtspec_rte]
"""
MINI = ["model=mini:bart", "tasks=[fmtspec_mini_copy]"]  # `architecture` applies to a model built from scratch

# dotted key -> (bad value, the start of the one-line message, a good value, other --set it needs)
NUMBERS = {
    "seed": ("-1", "config key 'seed' must be at least 0, got -1", "3", []),
    "threads": ("0", "config key 'threads' must be at least 1 (or null), got 0", "1", []),
    "shots": ("2", "config key 'shots' is 2; choose one of 0, 1", "1", []),
    "shots_share": ("1.5", "config key 'shots_share' must be between 0 and 1, got 1.5", "0.25", []),
    "architecture.d_model": ("0", "config key 'architecture.d_model' must be at least 1 (or null), got 0", "64", MINI),
    "architecture.encoder_layers": ("-2", "config key 'architecture.encoder_layers' must be at least 1", "1", MINI),
    "architecture.decoder_layers": ("0", "config key 'architecture.decoder_layers' must be at least 1", "1", MINI),
    "architecture.attention_heads": ("0", "config key 'architecture.attention_heads' must be at least 1", "2", MINI),
    "architecture.ffn_dim": ("0", "config key 'architecture.ffn_dim' must be at least 1", "32", MINI),
    "architecture.max_positions": ("0", "config key 'architecture.max_positions' must be at least 1", "2048", MINI),
    "prompt.length": ("0", "config key 'prompt.length' must be at least 1, got 0", "4", []),
    "prompt.init_range": ("0", "config key 'prompt.init_range' must be greater than 0, got 0.0", "0.1", []),
    "prompt.vocab_top": ("0", "config key 'prompt.vocab_top' must be at least 1, got 0", "100", []),
    "lora.rank": ("0", "config key 'lora.rank' must be at least 1, got 0", "2", []),
    "lora.alpha": ("-4", "config key 'lora.alpha' must be greater than 0 (or null), got -4.0", "16", []),
    "lora.dropout": ("1", "config key 'lora.dropout' must be at least 0 and below 1, got 1.0", "0.1", []),
    "lora.lr": ("0", "config key 'lora.lr' must be greater than 0, got 0.0", "1.0e-4", []),
    "prompt_training.steps": ("0", "config key 'prompt_training.steps' must be at least 1 (or null), got 0", "5", []),
    "prompt_training.epochs": ("-1", "config key 'prompt_training.epochs' must be greater than 0 (or null)", "0.5",
                               []),
    "prompt_training.lr": ("-0.2", "config key 'prompt_training.lr' must be greater than 0, got -0.2", "0.3", []),
    "prompt_training.eval_every": ("-1", "config key 'prompt_training.eval_every' must be at least 0", "0", []),
    "model_training.steps": ("-5", "config key 'model_training.steps' must be at least 1 (or null), got -5", "7",
                             []),
    "model_training.epochs": ("0", "config key 'model_training.epochs' must be greater than 0 (or null), got 0.0",
                              "2", []),
    "model_training.lr": ("0", "config key 'model_training.lr' must be greater than 0, got 0.0", "3.0e-3", []),
    "model_training.eval_every": ("-100", "config key 'model_training.eval_every' must be at least 0", "0", []),
    "batch_size": ("0", "config key 'batch_size' must be at least 1, got 0", "1", []),
    "micro_batch_size": ("0", "config key 'micro_batch_size' must be at least 1 (or null), got 0", "16", []),
    "weight_decay": ("-0.1", "config key 'weight_decay' must be at least 0, got -0.1", "0.01", []),
    "warmup_steps": ("-1", "config key 'warmup_steps' must be at least 0, got -1", "10", []),
    "gradient_clipping": ("-1", "config key 'gradient_clipping' must be at least 0 (or null), got -1.0", "1.0", []),
    "dropout": ("1.0", "config key 'dropout' must be at least 0 and below 1 (or null), got 1.0", "0.0", []),
    "label_smoothing": ("1.5", "config key 'label_smoothing' must be between 0 and 1, got 1.5", "0", []),
    "max_input_length": ("1", "config key 'max_input_length' must be at least 2, got 1", "512", []),
    "max_target_length": ("0", "config key 'max_target_length' must be at least 1, got 0", "1", []),
    "data.limit": ("0", "config key 'data.limit' must be at least 1 (or null), got 0", "8", []),
    "data.seed": ("-1", "config key 'data.seed' must be at least 0 (or null), got -1", "5", []),
    "eval.limit": ("0", "config key 'eval.limit' must be at least 1 (or null), got 0", "null", []),
    "eval.max_new_tokens": ("0", "config key 'eval.max_new_tokens' must be at least 1, got 0", "8", []),
    "eval.batch_size": ("0", "config key 'eval.batch_size' must be at least 1, got 0", "4", []),
    "eval.num_beams": ("0", "config key 'eval.num_beams' must be at least 1, got 0", "4", []),
    "log_every": ("0", "config key 'log_every' must be at least 1, got 0", "1", []),
    "keep_checkpoints": ("-1", "config key 'keep_checkpoints' must be at least 0 (or null), got -1", "0", []),
    "preempt_checkpoint_s": ("-1", "config key 'preempt_checkpoint_s' must be at least 0, got -1", "0", []),
}


def numeric_keys(schema=None, where=""):
    from trainers.config import SCHEMA, Field

    out = {}
    for key, spec in (SCHEMA if schema is None else schema).items():
        if isinstance(spec, dict):
            out.update(numeric_keys(spec, f"{where}{key}."))
        elif isinstance(spec, Field) and {int, float} & set(spec.type if isinstance(spec.type, tuple) else (spec.type,)):
            out[f"{where}{key}"] = spec
    return out


@pytest.fixture
def stub_train(monkeypatch):
    """`fmtspec train` up to the trainer: trainers.train.train replaced by a stub recording the config."""
    calls = []
    module = types.ModuleType("trainers.train")

    def train(config, output, *, resume=False):
        calls.append(config)
        Path(output).mkdir(parents=True)
        return Path(output)

    module.train = train
    monkeypatch.setitem(sys.modules, "trainers.train", module)
    return calls


def train_cli(tmp_path, capsys, *overrides):
    """(exit code, stderr lines, whether the run folder exists) of `fmtspec train CONFIG --set ...`."""
    from fmtspec.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(GOOD_CONFIG)
    run_dir = tmp_path / "run"
    argv = ["train", str(config), "--output", str(run_dir)]
    for item in overrides:
        argv += ["--set", item]
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines(), run_dir.exists()


def assert_one_line(code, err, made, message):
    assert code == 1 and not made, (code, err)
    assert len(err) == 1 and err[0].startswith("fmtspec "), err
    assert message in err[0], err


# ---- numbers ---------------------------------------------------------------------------------------

def test_every_numeric_key_has_a_range_and_a_row_here():
    keys = numeric_keys()
    assert set(keys) == set(NUMBERS)
    assert all(spec.range_text() or spec.choices for spec in keys.values()), \
        [k for k, s in keys.items() if not (s.range_text() or s.choices)]


@pytest.mark.parametrize("key", list(NUMBERS))
def test_bad_number_is_one_line_naming_key_value_and_range(key, tmp_path, capsys, stub_train):
    bad, message, good, needs = NUMBERS[key]
    code, err, made = train_cli(tmp_path, capsys, *needs, f"{key}={bad}")
    assert_one_line(code, err, made, message)
    assert err[0].startswith(f"fmtspec train: {message}") and not stub_train
    code, err, made = train_cli(tmp_path, capsys, *needs, f"{key}={good}")
    assert (code, err, made) == (0, [], True)
    section, _, leaf = key.rpartition(".")
    value = stub_train[0][section][leaf] if section else stub_train[0][leaf]
    assert value == (None if good == "null" else float(good))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(value, tmp_path, capsys, stub_train):
    code, err, made = train_cli(tmp_path, capsys, f"model_training.lr={value}")
    assert_one_line(code, err, made, "config key 'model_training.lr' must be greater than 0, got ")


def test_ranges_apply_to_config_files_and_experiment_train_sections_too(tmp_path):
    from trainers.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(GOOD_CONFIG + "log_every: 0\n")
    with pytest.raises(FmtspecError, match=r"^config key 'log_every' must be at least 1, got 0$"):
        load_config(path)
    with pytest.raises(FmtspecError, match=r"^config key 'eval.batch_size' must be at least 1, got -3$"):
        load_config(None, raw={"method": "finetune", "model": "m", "tasks": ["fmtspec_rte"],
                               "eval": {"batch_size": -3}})


def test_new_keys_and_their_defaults():
    from trainers.config import NOT_IN_CACHE_KEY, SCHEMA, load_config

    config = load_config(None, raw={"method": "finetune", "model": "m", "tasks": ["fmtspec_rte"]})
    assert (config["preempt_checkpoint_s"], config["trust_remote_code"]) == (300, False)
    assert SCHEMA["trust_remote_code"].type is bool and set(NOT_IN_CACHE_KEY) <= set(SCHEMA)
    with pytest.raises(FmtspecError, match="config key 'trust_remote_code' must be true/false, got 'sure'"):
        load_config(None, raw={"method": "finetune", "model": "m", "tasks": ["fmtspec_rte"],
                               "trust_remote_code": "sure"})


def test_the_shipped_base_keeps_its_cache_key():
    """Keys that cannot change the weights (the new ones) are left out of the pretrained bases' cache keys."""
    from trainers.config import load_config
    from trainers.pretrain import _shipped_key, cache_key

    config = load_config(REPO / "configs" / "mini" / "pretrain.yaml")
    assert cache_key(config) == _shipped_key()
    assert cache_key({**config, "preempt_checkpoint_s": 0}) == cache_key(config)
    assert cache_key({**config, "seed": 1}) != cache_key(config)


# ---- model paths -----------------------------------------------------------------------------------

def model_folder(path: Path, **config) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "t5", **config}))
    return path


@pytest.mark.parametrize("value, message", [
    ("{tmp}/missing", "model: no such folder {tmp}/missing"),
    ("./missing_model", "model: no such folder ./missing_model"),
    ("../missing_model", "model: no such folder ../missing_model"),
    ("~/surely-no-such-fmtspec-model", "model: no such folder ~/surely-no-such-fmtspec-model"),
    ("runs/finetune/model", "model: no such folder runs/finetune/model"),  # a/b/c: no hub id has two '/'
    ("local/missing", "model: no such folder local/missing"),  # `local` is a folder here
    ("bad id!", "model: 'bad id!' is neither a model folder nor a hub id ('name' or 'namespace/name'"),
    ("tiny:mt5", "model: 'tiny:mt5' is neither a model folder nor a hub id"),  # an experiment's base, not a model
    ("org/name--x", "model: 'org/name--x' is neither a model folder nor a hub id"),
    ("{tmp}/not_a_model", "model: {tmp}/not_a_model is a folder without config.json, not a model folder"),
    ("{tmp}/a_run", "model: {tmp}/a_run is a folder without config.json, not a model folder; to start from that "
                    "run, set init_from: {tmp}/a_run"),
])
def test_model_that_cannot_load_is_one_line_before_any_work(value, message, tmp_path, capsys, monkeypatch,
                                                             stub_train):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "a_run").mkdir()
    (tmp_path / "a_run" / "run.json").write_text("{}")
    value, message = value.format(tmp=tmp_path), message.format(tmp=tmp_path)
    code, err, made = train_cli(tmp_path, capsys, f"model={value}")
    assert_one_line(code, err, made, message)
    assert err[0] == f"fmtspec train: {message}" or "hub id" in message


@pytest.mark.parametrize("value", ["google/mt5-small", "t5-small", "Org_1/Name-2.3", "{tmp}/model",
                                   "./model", "model", "mini:bart"])
def test_good_models_pass_without_the_hub(value, tmp_path, capsys, monkeypatch, stub_train):
    monkeypatch.chdir(tmp_path)
    model_folder(tmp_path / "model")
    extra = ["tasks=[fmtspec_mini_copy]"] if value == "mini:bart" else []
    code, err, made = train_cli(tmp_path, capsys, *extra, f"model={value.format(tmp=tmp_path)}")
    assert (code, err, made) == (0, [], True)
    assert stub_train[0]["model"] == value.format(tmp=tmp_path)


def test_home_folder_model_is_expanded(tmp_path, capsys, monkeypatch, stub_train):
    monkeypatch.setenv("HOME", str(tmp_path))
    model_folder(tmp_path / "m")
    code, err, made = train_cli(tmp_path, capsys, "model=~/m")
    assert (code, err, made) == (0, [], True) and stub_train[0]["model"] == str(tmp_path / "m")


def test_a_sequential_run_does_not_need_its_model_key(tmp_path):
    """With init_from the run starts from the parent's model: `model` is not used, so not checked."""
    from trainers.config import load_config

    config = load_config(None, raw={"method": "finetune", "model": "./gone", "init_from": str(tmp_path),
                                    "tasks": ["fmtspec_rte"]})
    assert config["model"] == "./gone"


def test_deepspeed_json_must_exist(tmp_path, capsys, stub_train):
    code, err, made = train_cli(tmp_path, capsys, f"engine.deepspeed={tmp_path}/ds.json")
    assert_one_line(code, err, made, f"engine.deepspeed: no such file {tmp_path}/ds.json (or choose zero0, zero1, "
                                     "zero2, zero3)")
    (tmp_path / "ds.json").write_text("{}")
    assert train_cli(tmp_path, capsys, f"engine.deepspeed={tmp_path}/ds.json")[0] == 0
    assert stub_train[0]["engine"]["deepspeed"] == f"{tmp_path}/ds.json"


@pytest.mark.parametrize("value", ["a", "a/b", "A-b_c.9/x.y", "a/b.git", "a--b", "a..b", ".a", "a.", "-a", "a/b/c",
                                   "a b", "café/x", "x" * 96, "x" * 97, "n" * 96 + "/" + "m" * 96, "a/", "/a", ""])
def test_hub_id_rules_are_huggingface_hubs(value):
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from trainers.config import is_hub_id

    try:
        validate_repo_id(value)
        valid = True
    except HFValidationError:
        valid = False
    assert is_hub_id(value) == valid


# ---- fmtspec experiment --check --------------------------------------------------------------------

EXPERIMENT = """\
name: x
base_model: some/model
tasks: [fmtspec_rte]
runs:
  - {label: pretrained, method: pretrained}
  - {label: ft, method: finetune, train: {tasks: [fmtspec_rte]}}
"""


def experiment_check(tmp_path, capsys, text):
    from fmtspec.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    code = main(["experiment", str(path), "--check", "--output", str(out)])
    return code, capsys.readouterr().err.strip().splitlines(), out.exists()


def executable(path: Path, mode=0o755) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


# what is checked -> (the bad experiment, its message, a good experiment); {tmp} is the test's folder
FT = "{label: ft, method: finetune, train: {tasks: [fmtspec_rte]}}"
EXPERIMENT_CASES = {
    "launcher on PATH": (EXPERIMENT + "launcher: surely-no-such-launcher --num_gpus 8\n",
                         "launcher 'surely-no-such-launcher' is not a command on PATH",
                         EXPERIMENT + "launcher: sh\n"),
    "launcher file": (EXPERIMENT + "launcher: {tmp}/nowhere.sh\n", "file not found: {tmp}/nowhere.sh",
                      EXPERIMENT + "launcher: {tmp}/train.sh --num_gpus 8\n"),
    "launcher executable": (EXPERIMENT + "launcher: {tmp}/plain.sh\n", "launcher {tmp}/plain.sh is not executable",
                            EXPERIMENT + "launcher: {tmp}/train.sh\n"),
    "base_model folder": (EXPERIMENT.replace("some/model", "./missing_base"),
                          "base_model: no such folder ./missing_base (looked in ",
                          EXPERIMENT.replace("some/model", "{tmp}/model")),
    "base_model absolute": (EXPERIMENT.replace("some/model", "{tmp}/missing_base"),
                            "base_model: no such folder {tmp}/missing_base",
                            EXPERIMENT.replace("some/model", "models/mini_pretrained/model")),  # in the checkout
    "base_model hub id": (EXPERIMENT.replace("some/model", "'bad id'"),
                          "base_model: 'bad id' is neither a model folder nor a hub id",
                          EXPERIMENT.replace("some/model", "google/mt5-small")),
    "base_model tiny": (EXPERIMENT.replace("some/model", "tiny:mt6"),
                        "base_model: unknown tiny model 'tiny:mt6' (did you mean 'tiny:mt5'?)",
                        EXPERIMENT.replace("some/model", "tiny:mt5")),
    "run model": (EXPERIMENT + "  - {label: b, method: pretrained, model: {tmp}/gone}\n",
                  "run 'b': model: no such folder {tmp}/gone",
                  EXPERIMENT + "  - {label: b, method: pretrained, model: {tmp}/model}\n"),
    "lm_eval.batch_size": (EXPERIMENT + "lm_eval: {batch_size: -3}\n",
                           "'lm_eval.batch_size' must be an integer >= 1, auto or auto:N, got -3",
                           EXPERIMENT + "lm_eval: {batch_size: 'auto:4'}\n"),
    "lm_eval.batch_size text": (EXPERIMENT + "lm_eval: {batch_size: big}\n",
                                "'lm_eval.batch_size' must be an integer >= 1, auto or auto:N, got 'big'",
                                EXPERIMENT + "lm_eval: {batch_size: auto}\n"),
    "lm_eval.limit": (EXPERIMENT + "lm_eval: {limit: 0}\n",
                      "'lm_eval.limit' must be an integer >= 1 (documents per task), a fraction between 0 and 1",
                      EXPERIMENT + "lm_eval: {limit: 0.5}\n"),
    "lm_eval.limit float": (EXPERIMENT + "lm_eval: {limit: 2.5}\n", "'lm_eval.limit' must be an integer >= 1",
                            EXPERIMENT + "lm_eval: {limit: 2}\n"),
    "lm_eval.gen_kwargs": (EXPERIMENT + "lm_eval: {gen_kwargs: 16}\n",
                           "'lm_eval.gen_kwargs' must be a string such as 'max_gen_toks=16' or null, got 16",
                           EXPERIMENT + "lm_eval: {gen_kwargs: 'max_gen_toks=16'}\n"),
    "alignment.batch_size": (EXPERIMENT + "alignment: {runs: [ft], batch_size: 1}\n",
                             "'alignment.batch_size' must be an integer >= 2, got 1",
                             EXPERIMENT + "alignment: {runs: [ft], batch_size: 2, batches: 1}\n"),
    "alignment.batches": (EXPERIMENT + "alignment: {runs: [ft], batches: 0}\n",
                          "'alignment.batches' must be an integer >= 1, got 0",
                          EXPERIMENT + "alignment: {runs: [ft], batches: 1}\n"),
    "a run's config range": (EXPERIMENT.replace(FT, FT.replace("]}", "], log_every: 0}")),
                             "run 'ft': config key 'log_every' must be at least 1, got 0",
                             EXPERIMENT.replace(FT, FT.replace("]}", "], log_every: 5}"))),
    "shared train range": ("train: {model_training: {steps: -5}}\n" + EXPERIMENT,
                           "run 'ft': config key 'model_training.steps' must be at least 1 (or null), got -5",
                           "train: {model_training: {steps: 5}}\n" + EXPERIMENT),
}


@pytest.mark.parametrize("case", list(EXPERIMENT_CASES))
def test_experiment_check_refuses_what_would_fail_later(case, tmp_path, capsys):
    bad, message, good = (text.replace("{tmp}", str(tmp_path)) for text in EXPERIMENT_CASES[case])
    executable(tmp_path / "train.sh")
    executable(tmp_path / "plain.sh", 0o644)
    model_folder(tmp_path / "model")
    code, err, made = experiment_check(tmp_path, capsys, bad)
    assert code == 1 and not made and len(err) == 1, err
    assert err[0].startswith("fmtspec experiment: ") and message in err[0], err
    code, err, made = experiment_check(tmp_path, capsys, good)
    assert (code, made) == (0, False), err


def test_a_run_trained_before_a_key_was_added_is_not_called_changed(tmp_path):
    """A finished run whose run.json config lacks keys added since (at their defaults) is the same config;
    a changed value still is not."""
    from fmtspec.experiment import check_trained_configs, resolved_config
    from fmtspec.experiment_file import load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT)
    exp = load_experiment(path, tmp_path / "out")
    config = resolved_config(exp, exp.run("ft"))[1]
    old = {k: v for k, v in config.items() if k not in ("preempt_checkpoint_s", "trust_remote_code")}
    run_dir = exp.run_dir("ft")
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"format": "fmtspec-run/1", "config": old}))
    check_trained_configs(exp)
    old["model_training"] = {**old["model_training"], "lr": 0.5}
    (run_dir / "run.json").write_text(json.dumps({"format": "fmtspec-run/1", "config": old}))
    with pytest.raises(FmtspecError, match=r"\('model_training.lr' differs\)"):
        check_trained_configs(exp)


# ---- trust_remote_code -----------------------------------------------------------------------------

def test_load_model_never_runs_or_asks_about_a_folders_own_code(tmp_path, monkeypatch):
    """A model folder whose config.json maps to its own code (`auto_map`): with trust_remote_code off (the
    default) transformers neither asks "[y/N]" nor runs the code; loading is one error line."""
    from trainers.models import load_model

    folder = model_folder(tmp_path / "custom", model_type="fmtspec_custom",
                          auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                    "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (folder / "configuration_custom.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n\nclass CustomConfig(PretrainedConfig):\n"
        "    model_type = 'fmtspec_custom'\n")

    class NoTerminal:
        def readline(self, *args):
            raise AssertionError("transformers asked on the terminal")

        read = readline

    monkeypatch.setattr(sys, "stdin", NoTerminal())
    monkeypatch.setattr("builtins.input", NoTerminal().readline)
    with pytest.raises(FmtspecError) as err:
        load_model(str(folder), None)
    assert "\n" not in str(err.value) and "contains custom code" in str(err.value), err.value
    assert not (folder / "RAN").exists()


def test_load_model_passes_trust_remote_code_to_every_from_pretrained(monkeypatch):
    import transformers

    from trainers.models import load_model

    seen = []

    def fake(kind, result):
        def from_pretrained(path, **kwargs):
            seen.append((kind, kwargs.get("trust_remote_code", "missing")))
            return result

        return from_pretrained

    config = types.SimpleNamespace(is_encoder_decoder=False)
    tokenizer = types.SimpleNamespace(pad_token_id=0)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("config", config))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer", tokenizer))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model", object()))
    load_model("some/model", None)
    assert seen == [("config", False), ("tokenizer", False), ("model", False)]
    seen.clear()
    load_model("some/model", None, trust_remote_code=True)
    assert seen == [("config", True), ("tokenizer", True), ("model", True)]
