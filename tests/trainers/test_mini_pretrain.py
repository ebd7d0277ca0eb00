"""`method: pretrain` (the miniature world's base model): a few steps of configs/mini/pretrain_tiny.yaml on a
small generated world, read back from the run folder; the base loads as an ordinary HF model with its
tokenizer and a fine-tuning run starts from it; the cache by config hash trains once. And prompt inits on
BART take the scaled token embeddings, as PEFT does."""

import json
from argparse import Namespace
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
TINY_PRETRAIN = REPO / "configs" / "mini" / "pretrain_tiny.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small miniature world in FMTSPEC_DATA_DIR and an empty FMTSPEC_CACHE."""
    from harness_tasks.mini_world import write_world

    root = tmp_path_factory.mktemp("mini")
    write_world(root / "data", seed=0, sizes={"train": 40, "validation": 8, "test": 8})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(root / "data"))
        mp.setenv("FMTSPEC_CACHE", str(root / "cache"))
        yield root


def config(*overrides):
    from trainers.config import load_config

    return load_config(TINY_PRETRAIN, list(overrides))


@pytest.fixture(scope="module")
def pretrained(world):
    from trainers.train import train

    # validation one document at a time: its predictions are then computed exactly as a plain generate()
    # of one example computes them (padding in a batch changes float sums, hence near-tied greedy choices)
    return train(config("eval.batch_size=1"), world / "run")


def manifest(run):
    return json.loads((run / "run.json").read_text())


def digest(state_dict):
    from fmtspec.core.run_folder import weights_digest

    return weights_digest(state_dict)


def test_pretraining_steps_write_a_run_folder_and_change_the_model(pretrained, world):
    from trainers.models import build_scratch

    m = manifest(pretrained)
    assert (m["method"], m["base_model"], m["model"], m["steps"], m["prompts"]) == ("pretrain", "mini:bart", "model",
                                                                                    4, {})
    assert m["encoder_decoder"] is True and m["sentinel"] is False  # the word vocabulary has no <extra_id_0>
    random_init, _, _ = build_scratch(config())  # the same seed draws the same random weights
    assert m["start_model_sha256"] == digest(random_init.state_dict()) != m["model_sha256"]
    assert sorted(p.name for p in (pretrained / "checkpoints").iterdir()) == ["step-2", "step-4"]
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    validations = [r for r in rows if "val_score" in r]
    assert [r["step"] for r in validations] == [2, 4]
    tasks = [t["name"] for t in m["tasks"]]
    for r in validations:  # the validation metric: mean exact match over the tasks, on 0-100
        matches = [r[f"val_{t}_exact_match"] for t in tasks]
        assert r["val_score"] == pytest.approx(100 * sum(matches) / len(matches))
    assert m["checkpoint"]["metric"] == "val_score"
    assert not list(pretrained.rglob(".tmp-*")) and not list(pretrained.rglob("*.bin"))


def test_the_base_loads_with_its_tokenizer_and_generates_what_validation_scored(pretrained):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from harness_tasks.examples import render
    from harness_tasks.mini_world import vocabulary

    m = manifest(pretrained)
    model = AutoModelForSeq2SeqLM.from_pretrained(pretrained / "model").eval()
    tok = AutoTokenizer.from_pretrained(pretrained / "model")
    assert type(model).__name__ == "BartForConditionalGeneration" and model.config.d_model == 32
    assert digest(model.state_dict()) == m["model_sha256"]
    assert tok.convert_ids_to_tokens(list(range(len(vocabulary())))) == vocabulary()
    assert tok("copy : cat dog answer :")["input_ids"] == [vocabulary().index(w) for w in
                                                           "copy : cat dog answer : </s>".split()]
    # greedy generation of the plain HF model reproduces the trainer's validation predictions
    chosen = pretrained / "checkpoints" / f"step-{m['checkpoint']['step']}" / "val_predictions.jsonl"
    predictions = [json.loads(line) for line in chosen.read_text().splitlines()][:3]
    for row in predictions:
        context = render(row["task"], "validation", limit=row["doc"] + 1)[row["doc"]].context
        ids = tok(context, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        assert tok.decode(out[0], skip_special_tokens=True).strip() == row["prediction"].strip()


def test_a_finetune_run_starts_from_the_pretrained_base(pretrained, world):
    from trainers.config import load_config
    from trainers.train import train

    raw = {"method": "finetune", "init_from": str(pretrained), "tasks": ["fmtspec_mini_target"], "optimizer": "adamw",
           "model_training": {"steps": 2, "eval_every": 2, "lr": 1e-3}, "batch_size": 4, "dropout": 0.0,
           "max_input_length": 64, "max_target_length": 8, "data": {"limit": 8},
           "eval": {"limit": 2, "max_new_tokens": 4}}
    child = manifest(train(load_config(None, raw=raw), world / "finetune"))
    parent = manifest(pretrained)
    assert child["base_model"] == str(pretrained / "model") and child["parent"] == str(pretrained)
    assert child["start_model_sha256"] == parent["model_sha256"] != child["model_sha256"]
    with pytest.raises(FmtspecError, match="architecture' applies to a model built from scratch"):
        load_config(None, raw={**raw, "architecture": {"d_model": 64}})


def test_a_share_of_the_training_inputs_is_one_shot(world):
    from harness_tasks.examples import render
    from trainers.train import training_examples

    zero_shot = render("fmtspec_mini_sort", "train", limit=40)
    quarter = training_examples("fmtspec_mini_sort", config(), 0)
    one_shot = [i for i, ex in enumerate(quarter) if "\n\n" in ex.context]
    assert 3 <= len(one_shot) <= 20  # a quarter of 40, drawn
    for ex, plain in zip(quarter, zero_shot):  # the query and target are the example's own either way
        assert ex.context.endswith(plain.context) and ex.target == plain.target
    assert training_examples("fmtspec_mini_sort", config(), 0) == quarter  # a fixed draw
    assert all("\n\n" in ex.context for ex in training_examples("fmtspec_mini_sort", config("shots_share=1"), 0))
    assert not any("\n\n" in ex.context for ex in training_examples("fmtspec_mini_sort", config("shots=0"), 0))


def test_cached_base_trains_once_per_config_hash(world, monkeypatch, capsys):
    import trainers.train
    from trainers import cli
    from trainers.pretrain import cache_key, cached_base

    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = world / "cache" / "mini_base" / f".tmp-{cache_key(config())}-{socket.gethostname()}-{dead.pid}"
    abandoned.mkdir(parents=True)  # what a killed pretraining leaves
    first = cached_base(config())
    assert first.parent == world / "cache" / "mini_base" and manifest(first)["method"] == "pretrain"
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tmp-")]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trainers.train, "train", no_training)
    assert cached_base(config()) == first
    assert cli.run(Namespace(config=str(TINY_PRETRAIN), overrides=[], output=None, resume=False, cached=True)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"run folder: {first}"
    assert cache_key(config("seed=1")) != cache_key(config())
    assert cache_key(config("architecture.ffn_dim=32")) != cache_key(config())
    data = world / "data" / "mini_copy" / "train.jsonl"
    original = data.read_text()
    try:  # other data, another base
        data.write_text(original.replace("cat", "dog", 1))
        assert cache_key(config()) != first.name
    finally:
        data.write_text(original)
    assert cache_key(config()) == first.name


@pytest.mark.parametrize("overrides, message", [
    (["model=mini:bert"], "unknown model 'mini:bert' (did you mean 'mini:bart'?)"),
    (["tasks=[fmtspec_mini_copy, fmtspec_rte]"], "cannot train on fmtspec_rte"),
    (["shots_share=1.5"], "config key 'shots_share' must be between 0 and 1"),
])
def test_bad_pretrain_config_is_one_line(overrides, message):
    with pytest.raises(FmtspecError) as err:
        config(*overrides)
    assert "\n" not in str(err.value) and message in str(err.value)


def test_inputs_longer_than_the_learned_positions_are_refused(world):
    from trainers.models import build_scratch

    with pytest.raises(FmtspecError, match="exceed the model's 128 learned positions"):
        build_scratch(config("max_input_length=256"))


@pytest.mark.parametrize("init", ["vocab", "text"])
def test_prompt_init_on_bart_takes_the_scaled_token_embeddings_as_peft(init, tmp_path):
    """BART's `embed_tokens` multiplies its table by sqrt(d_model): a prompt initialised from token
    embeddings must hold what the module outputs (PEFT's SAMPLE_VOCAB/TEXT inits), not the raw rows."""
    import torch
    from peft import PromptTuningConfig, PromptTuningInit
    from peft.tuners.prompt_tuning.model import PromptEmbedding
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from fmtspec.tiny_models import build_tiny_model
    from trainers.soft_prompt_model import init_prompt

    folder = build_tiny_model("bart", tmp_path / "bart")
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    module = model.get_input_embeddings()
    assert module.embed_scale == pytest.approx(128 ** 0.5)
    with torch.no_grad():
        if init == "vocab":
            prompt = init_prompt(model, tok, length=8, init="vocab", vocab_top=50, seed=1)
            outputs = module(torch.arange(50))
            for row in prompt:
                assert any(torch.equal(row, outputs[i]) for i in range(50))
                assert not any(torch.equal(row, module.weight[i]) for i in range(50))
        else:
            text = "True False"
            ids = tok(text, add_special_tokens=False)["input_ids"]
            prompt = init_prompt(model, tok, length=len(ids), init="text", init_text=text)
            peft = PromptEmbedding(PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=len(ids) + 1,
                                                      token_dim=128, num_transformer_submodules=1,
                                                      prompt_tuning_init=PromptTuningInit.TEXT,
                                                      prompt_tuning_init_text=text,
                                                      tokenizer_name_or_path=str(folder)), module)
            # PEFT tokenizes with the special tokens (a trailing </s>); the text's tokens come first
            assert torch.equal(prompt, peft.embedding.weight[: len(ids)])


@pytest.mark.slow
def test_lm_eval_promot_hf_scores_the_pretrained_run(pretrained, world, tmp_path):
    """The run folder is a `pretrained=` of the stock lm_eval command: it loads the base with its tokenizer and
    generates what the plain HF model generates on the scored docs."""
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "eval"
    # the same thread count as this process: the comparison below is between two computations of one path
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([str(Path(sys.executable).parent / "lm_eval"), "--model", "promot_hf", "--model_args",
                           f"pretrained={pretrained}", "--tasks", "fmtspec_mini_target", "--limit", "3",
                           "--output_path", str(out), "--log_samples"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["fmtspec_mini_target"]
    assert {"exact_match,none", "fmt_label_share,none"} <= results.keys()
    model = AutoModelForSeq2SeqLM.from_pretrained(pretrained / "model").eval()
    tok = AutoTokenizer.from_pretrained(pretrained / "model")
    samples = [json.loads(line) for line in next(out.rglob("samples_*.jsonl")).read_text().splitlines()]
    assert len(samples) == 3
    for sample in samples:
        with torch.no_grad():
            ids = model.generate(**tok(sample["arguments"]["gen_args_0"]["arg_0"], return_tensors="pt"),
                                 max_new_tokens=8, do_sample=False)
        assert sample["resps"][0][0].strip() == tok.decode(ids[0], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_prompt_tuning_leaves_the_other_mini_tasks_exactly_as_the_pretrained_model(pretrained, world, tmp_path):
    """Prompt tuning freezes the model and promot_hf removes the prompt for other tasks: through the stock
    lm_eval pipeline, the prompt-tuned run answers the other mini tasks exactly as the pretrained base, and
    only its own task gets the prompt."""
    import os
    import subprocess
    import sys

    from trainers.config import load_config
    from trainers.train import train

    raw = {"method": "prompt_tuning", "init_from": str(pretrained), "tasks": ["fmtspec_mini_target"],
           "optimizer": "adamw", "prompt": {"length": 4}, "prompt_training": {"steps": 3, "eval_every": 3, "lr": 0.5},
           "batch_size": 4, "max_input_length": 64, "max_target_length": 8, "data": {"limit": 8},
           "eval": {"limit": 2, "max_new_tokens": 4}}
    run = train(load_config(None, raw=raw), tmp_path / "prompt_tuning")
    assert manifest(run)["model_sha256"] == manifest(pretrained)["model_sha256"]  # the model stayed frozen
    tasks = "fmtspec_mini_copy,fmtspec_mini_sort,fmtspec_mini_review,fmtspec_mini_target"
    jobs = [["--model", "promot_hf", "--model_args", f"pretrained={model}", "--tasks", tasks,
             "--output_path", str(tmp_path / name), "--log_samples", "--batch_size", "1"]
            for name, model in (("base", pretrained), ("tuned", run))]
    # batch size 1: with a prompt group split off, batches of 4 would mix other neighbours (other float sums)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fmtspec.lm_eval_batch", str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def outputs(name, task):
        (path,) = (tmp_path / name).rglob(f"samples_{task}_*.jsonl")
        return [(s["doc_id"], s["resps"]) for s in map(json.loads, path.read_text().splitlines())]

    for task in ("fmtspec_mini_copy", "fmtspec_mini_sort", "fmtspec_mini_review"):
        base = outputs("base", task)
        assert len(base) == 8 and outputs("tuned", task) == base
    routed = json.loads(next((tmp_path / "tuned").rglob("results_*.json")).read_text())["config"]["promot_hf"]
    assert routed["task_prompts"]["fmtspec_mini_target"] and routed["task_prompts"]["fmtspec_mini_copy"] is None
