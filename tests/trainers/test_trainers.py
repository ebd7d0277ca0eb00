"""The trainers on the tiny models and fixture data: each method's invariants, read back from the saved
run folders (manifest, model/, soft prompts, checkpoints)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
TINY = REPO / "configs" / "tiny"


@pytest.fixture(scope="module")
def train_tiny(tiny_models, data_env, tmp_path_factory):
    """train_tiny(config_name, *overrides, kind="mt5") -> run folder (each distinct run trained once)."""
    from trainers.config import load_config
    from trainers.train import train

    done = {}

    def go(name, *overrides, kind="mt5"):
        key = (name, kind, overrides)
        if key not in done:
            config = load_config(TINY / f"{name}.yaml", [f"model={tiny_models[kind]}", *overrides])
            done[key] = train(config, tmp_path_factory.mktemp(name) / "run")
        return done[key]

    return go


def manifest(run):
    return json.loads((run / "run.json").read_text())


def load_model(folder):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    enc_dec = AutoConfig.from_pretrained(folder).is_encoder_decoder
    return (AutoModelForSeq2SeqLM if enc_dec else AutoModelForCausalLM).from_pretrained(folder)


def digest(folder):
    from fmtspec.core.run_folder import weights_digest

    return weights_digest(load_model(folder).state_dict())


def prompt(folder):
    from model_adapters.soft_prompt import load_soft_prompt

    return load_soft_prompt(folder).embeddings


def weights_differ(a, b) -> bool:
    import torch

    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert sa.keys() == sb.keys()
    return any(not torch.equal(sa[k], sb[k]) for k in sa)


def initial_prompt(tiny_models, kind="mt5", init="uniform", seed=0, length=4):
    from transformers import AutoTokenizer

    from trainers.soft_prompt_model import init_prompt

    return init_prompt(load_model(tiny_models[kind]), AutoTokenizer.from_pretrained(tiny_models[kind]),
                       length=length, init=init, seed=seed)


# -- config ---------------------------------------------------------------------------------------------

def _config(**raw):
    from trainers.config import load_config

    return load_config(None, raw={"method": "finetune", "model": "m", "tasks": ["fmtspec_rte"], **raw})


@pytest.mark.parametrize("raw, message", [
    ({"model_trainig": {"steps": 3}}, "unknown config key 'model_trainig' (did you mean 'model_training'?)"),
    ({"model_training": {"step": 3}}, "unknown config key 'model_training.step' (did you mean 'model_training.steps'"),
    ({"batch_size": "big"}, "config key 'batch_size' must be an integer, got 'big'"),
    ({"method": "promt"}, "config key 'method' is 'promt'; choose one of"),
    ({"preset": "teach_twice_a2"}, "unknown preset 'teach_twice_a2' (did you mean 'teach_twice_a2t'?)"),
])
def test_bad_config_is_one_line_naming_the_key(raw, message):
    with pytest.raises(FmtspecError) as err:
        _config(**raw)
    text = str(err.value)
    assert "\n" not in text and text.startswith(message), text


def test_unknown_task_suggests_the_closest():
    with pytest.raises(FmtspecError, match=r"unknown task 'fmtspec_rtee'.*did you mean 'fmtspec_rte'"):
        _config(tasks=["fmtspec_rtee"])


def test_defaults_are_the_papers_and_presets_apply():
    config = _config(method="promot")
    assert (config["prompt"]["length"], config["prompt_training"]["lr"], config["prompt_training"]["steps"],
            config["prompt_training"]["eval_every"]) == (100, 0.2, 5000, 1000)
    assert (config["model_training"]["lr"], config["model_training"]["steps"],
            config["model_training"]["eval_every"]) == (1e-3, 1000, 100)
    assert (config["optimizer"], config["dropout"], config["label_smoothing"], config["batch_size"],
            config["max_input_length"]) == ("adafactor", 0.1, 0.1, 64, 1024)
    from trainers.config import load_config

    mixed = load_config(None, raw={"method": "finetune", "preset": "teach_twice_mixed"})
    assert mixed["tasks"] == [{"name": "fmtspec_a2t", "weight": 2.0}, {"name": "fmtspec_alt_en_zh", "weight": 1.0}]
    assert (mixed["model_training"]["lr"], mixed["model_training"]["epochs"], mixed["batch_size"]) == (5e-4, 10, 16)
    reviews = load_config(None, raw={"method": "finetune", "preset": "teach_twice_reviews"}, overrides=["seed=3"])
    assert (reviews["model_training"]["lr"], reviews["model_training"]["epochs"], reviews["seed"]) == (7e-4, 100, 3)
    short = load_config(None, raw={"method": "finetune", "preset": "teach_twice_reviews"},
                        overrides=["model_training.steps=7"])
    assert (short["model_training"]["steps"], short["model_training"]["epochs"]) == (7, None)
    by_epochs = _config(model_training={"epochs": 2})
    assert (by_epochs["model_training"]["steps"], by_epochs["model_training"]["epochs"]) == (None, 2)


def test_every_shipped_config_validates():
    from trainers.config import load_config

    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        load_config(path)


def test_cli_bad_config_prints_one_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: finetune\nmodel: x\ntasks: [fmtspec_rte]\nlabel_smothing: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "fmtspec", "train", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "fmtspec train: unknown config key 'label_smothing' (did you mean 'label_smoothing'?)"]


# -- methods --------------------------------------------------------------------------------------------

def test_prompt_tuning_leaves_every_model_weight_bit_identical(train_tiny, tiny_models):
    run = train_tiny("prompt_tuning")
    m = manifest(run)
    assert m["method"] == "prompt_tuning" and m["model"] is None and not (run / "model").exists()
    assert m["prompts"] == {"fmtspec_rte": "soft_prompt"}
    base = digest(tiny_models["mt5"])
    assert m["start_model_sha256"] == base and m["model_sha256"] == base
    import torch

    assert not torch.equal(prompt(run / "soft_prompt"), initial_prompt(tiny_models))  # the prompt did train


def test_promot_stage2_keeps_the_chosen_prompt_and_changes_the_model(train_tiny, tiny_models):
    import torch

    run = train_tiny("promot")
    m = manifest(run)
    assert (m["method"], m["stage"], m["steps"], m["model"]) == ("promot", 2, 8, "model")
    stage1, stage2 = m["stages"]
    assert stage1["trains"] == ["prompt"] and stage2["trains"] == ["model"]
    chosen = prompt(run / "checkpoints" / f"step-{stage1['chosen']['step']}" / "soft_prompt")
    assert not torch.equal(chosen, initial_prompt(tiny_models))
    final = prompt(run / "soft_prompt")
    assert torch.equal(final, chosen)
    for step in (6, 8):  # stage-2 checkpoints carry the frozen prompt unchanged
        assert torch.equal(prompt(run / "checkpoints" / f"step-{step}" / "soft_prompt"), chosen)
    assert weights_differ(tiny_models["mt5"], run / "model")
    assert m["model_sha256"] == digest(run / "model") != m["start_model_sha256"]
    assert m["checkpoint"] == stage2["chosen"] and m["checkpoint"]["metric"] == "val_acc"
    assert m["sentinel"] is True and m["encoder_decoder"] is True
    assert m["config_hash"] and m["config"]["method"] == "promot" and m["parent"] is None


def test_promot_stage1_from_a_prompt_tuning_run(train_tiny, tiny_models):
    """ProMoT whose stage 1 is a prompt-tuning run's chosen prompt: only stage 2 trains, with that prompt
    frozen and attached; a run that does not match (another prompt length) is refused in one line."""
    import torch

    from trainers.config import load_config
    from trainers.train import train

    tuned = train_tiny("prompt_tuning")
    run = train_tiny("promot", f"stage1_from={tuned}")
    m = manifest(run)
    stage1, stage2 = m["stages"]
    assert stage1["from"] == str(tuned) and stage1["steps"] == 0 and stage1["chosen"] == manifest(tuned)["checkpoint"]
    assert stage2["trains"] == ["model"] and m["steps"] == stage2["steps"] == 4
    assert sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir()) == [2, 4]
    assert torch.equal(prompt(run / "soft_prompt"), prompt(tuned / "soft_prompt"))
    assert weights_differ(tiny_models["mt5"], run / "model")
    other = load_config(TINY / "promot.yaml", [f"model={tiny_models['mt5']}", f"stage1_from={tuned}", "prompt.length=6"])
    with pytest.raises(FmtspecError, match=r"stage1_from .*: its prompt has 4 vectors, this run's 6$"):
        train(other, tuned.parent / "mismatch")
    assert not (tuned.parent / "mismatch").exists()  # refused before the run folder is touched
    with pytest.raises(FmtspecError, match="'stage1_from' reuses a prompt-tuning run as ProMoT's stage 1"):
        load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}", f"stage1_from={tuned}"])


def test_promot_run_folder_layout_and_metrics(train_tiny):
    run = train_tiny("promot")
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert steps == [2, 4, 6, 8]
    assert not [p for p in run.rglob(".tmp-*")]
    assert not [p for p in run.rglob("*.bin")] and not [p for p in run.rglob("*.pt")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == list(range(1, 9))
    assert all({"lr", "tokens_per_s"} <= r.keys() for r in losses)
    assert [r["step"] for r in records if "val_acc" in r] == [2, 4, 6, 8]
    adapter = json.loads((run / "soft_prompt" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_virtual_tokens"] == 4


def test_keep_checkpoints_keeps_the_chosen_ones(train_tiny):
    run = train_tiny("promot", "keep_checkpoints=1")
    m = manifest(run)
    kept = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert kept == sorted({m["stages"][0]["chosen"]["step"], m["stages"][1]["chosen"]["step"], 8})
    assert len(kept) < 4


def test_random_prompt_keeps_its_initial_uniform_prompt(train_tiny, tiny_models):
    import torch

    run = train_tiny("random_prompt")
    init = initial_prompt(tiny_models, init="uniform")
    assert float(init.abs().max()) <= 0.5
    assert torch.equal(prompt(run / "soft_prompt"), init)
    for step in (2, 4):
        assert torch.equal(prompt(run / "checkpoints" / f"step-{step}" / "soft_prompt"), init)
    assert weights_differ(tiny_models["mt5"], run / "model")


def test_joint_changes_prompt_and_model(train_tiny, tiny_models):
    import torch

    run = train_tiny("joint")
    assert manifest(run)["stages"][0]["trains"] == ["model", "prompt"]
    assert not torch.equal(prompt(run / "soft_prompt"), initial_prompt(tiny_models))
    assert weights_differ(tiny_models["mt5"], run / "model")


def test_finetune_then_sequential_run_starts_from_the_parents_final_weights(train_tiny, tiny_models):
    parent = train_tiny("finetune")
    pm = manifest(parent)
    assert pm["prompts"] == {} and pm["model"] == "model"
    child = train_tiny("finetune", f"init_from={parent}", "seed=1")
    cm = manifest(child)
    assert cm["start_model_sha256"] == digest(parent / "model") == pm["model_sha256"]
    assert cm["start_model_sha256"] != digest(tiny_models["mt5"])
    assert cm["parent"] == str(parent) and cm["chain"] == [str(parent)]
    assert cm["base_model"] == str(parent / "model")
    grandchild = train_tiny("prompt_tuning", f"init_from={child}")
    gm = manifest(grandchild)
    assert gm["chain"] == [str(parent), str(child)] and gm["model_sha256"] == digest(child / "model")


def test_multitask_promot_saves_one_prompt_per_task(train_tiny):
    import torch

    run = train_tiny("promot_multitask")
    m = manifest(run)
    assert m["tasks"] == [{"name": "fmtspec_rte", "weight": 2.0}, {"name": "fmtspec_snli", "weight": 1.0}]
    assert m["prompts"] == {"fmtspec_rte": "prompts/fmtspec_rte", "fmtspec_snli": "prompts/fmtspec_snli"}
    assert not (run / "soft_prompt").exists()
    per_task = m["stages"][0]["chosen"]["per_task"]
    rte, snli = prompt(run / "prompts/fmtspec_rte"), prompt(run / "prompts/fmtspec_snli")
    assert not torch.equal(rte, snli)
    for task, final in (("fmtspec_rte", rte), ("fmtspec_snli", snli)):
        chosen = run / "checkpoints" / f"step-{per_task[task]['step']}" / "prompts" / task
        assert torch.equal(final, prompt(chosen))
    assert any(f"val_fmtspec_snli_acc" in line for line in (run / "metrics.jsonl").read_text().splitlines())


def test_promot_with_lora_stage1_keeps_the_adapter_separate(train_tiny, tiny_models):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    run = train_tiny("promot_lora")
    m = manifest(run)
    assert m["prompts"] == {"fmtspec_rte": "prompts/fmtspec_rte"} and m["prompt_type"] == "lora"
    adapter = run / "prompts" / "fmtspec_rte"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert not [k for k in weights if "lora" in k]
    assert weights_differ(tiny_models["mt5"], run / "model")  # the model trained in stage 2
    chosen = run / "checkpoints" / f"step-{m['stages'][0]['chosen']['step']}" / "prompts" / "fmtspec_rte"
    final, first = load_file(str(adapter / "adapter_model.safetensors")), load_file(
        str(chosen / "adapter_model.safetensors"))
    assert final.keys() == first.keys() and all(torch.equal(final[k], first[k]) for k in final)
    assert any(float(t.abs().sum()) > 0 for k, t in final.items() if "lora_B" in k)  # stage 1 trained it
    peft_model = PeftModel.from_pretrained(load_model(run / "model"), str(adapter))  # PEFT reads it as its own
    assert peft_model.peft_config["default"].r == 2
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(final)
    for key, value in final.items():
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], value)


def test_teach_twice_mixture_records_both_tasks(train_tiny):
    run = train_tiny("teach_twice_mixed")
    m = manifest(run)
    assert m["tasks"] == [{"name": "fmtspec_a2t", "weight": 2.0}, {"name": "fmtspec_alt_en_zh", "weight": 1.0}]
    assert m["prompts"] == {} and m["checkpoint"]["metric"] == "val_score"
    validations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_score" in line]
    assert {"val_fmtspec_a2t_rouge2", "val_fmtspec_alt_en_zh_bleu"} <= validations[-1].keys()
    predictions = [json.loads(line) for line in (run / "checkpoints" / "step-4" / "val_predictions.jsonl").open()]
    assert {p["task"] for p in predictions} == {"fmtspec_a2t", "fmtspec_alt_en_zh"}


def test_decoder_only_promot(train_tiny, tiny_models):
    import torch

    run = train_tiny("promot", kind="gpt2")
    m = manifest(run)
    assert m["encoder_decoder"] is False and m["sentinel"] is False
    chosen = prompt(run / "checkpoints" / f"step-{m['stages'][0]['chosen']['step']}" / "soft_prompt")
    assert torch.equal(prompt(run / "soft_prompt"), chosen)
    assert weights_differ(tiny_models["gpt2"], run / "model")


@pytest.mark.parametrize("zero", ["zero1", "zero3"])
def test_zero_stages_keep_the_invariants_and_warn_about_adafactor(zero, train_tiny, tiny_models):
    import torch

    with pytest.warns(UserWarning, match="Adafactor"):  # one validation per stage: ZeRO-3 generation is slow
        run = train_tiny("promot", f"engine.deepspeed={zero}", "prompt_training.eval_every=4",
                         "model_training.eval_every=4", "eval.limit=2")
    m = manifest(run)
    assert m["deepspeed"] == zero and any("not factored" in note for note in m["notes"])
    chosen = run / "checkpoints" / f"step-{m['stages'][0]['chosen']['step']}" / "soft_prompt"
    assert torch.equal(prompt(run / "soft_prompt"), prompt(chosen))
    assert m["model_sha256"] == digest(run / "model")  # whole weights written, even when partitioned
    assert weights_differ(tiny_models["mt5"], run / "model")


def test_default_run_folder_mirrors_the_config_path():
    from trainers.cli import default_output

    assert default_output("configs/promot/mt5_xxl/rte/promot.yaml") == Path("runs/promot/mt5_xxl/rte/promot")
    assert default_output("/x/configs/teach_twice/reviews.yaml") == Path("runs/teach_twice/reviews")
    assert default_output("elsewhere/mine.yaml") == Path("runs/mine")


def test_cli_trains_a_run_folder(tiny_models, tmp_path):
    env = {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES)}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fmtspec", "train", str(TINY / "prompt_tuning.yaml"),
                           "--set", f"model={tiny_models['t5']}", "--set", "prompt_training.steps=2",
                           "--set", "seed=5", "--output", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    assert (m["steps"], m["seed"], m["sentinel"]) == (2, 5, False)  # tiny t5 has no <extra_id_0>
    assert m["config"]["prompt_training"]["steps"] == 2 and (out / "soft_prompt").is_dir()


# -- data -----------------------------------------------------------------------------------------------

def _lm_eval_contexts(task_name, limit):
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_defaults=False, include_path=str(REPO / "harness_tasks")).load(
        [task_name])["tasks"][task_name]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [(inst.args[0], inst.doc) for inst in task.instances]


@pytest.mark.parametrize("kind", ["mt5", "llama"])
def test_training_inputs_are_the_evaluation_prompts(kind, tiny_models, data_env):
    """Train on the split lm-eval scores: every training input is lm-eval's context, tokenized as
    promot_hf feeds it (sentinel before </s> for T5), and the target is the task's gold answer."""
    from transformers import AutoTokenizer

    from harness_tasks.formats import FORMATS
    from trainers.config import load_config
    from trainers.train import build_trainer

    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models[kind]}", "data.split=validation"])
    trainer, n = build_trainer(config, Path("unused"), str(tiny_models[kind]))
    tok = AutoTokenizer.from_pretrained(tiny_models[kind])
    requests = _lm_eval_contexts("fmtspec_rte", limit=n)
    assert len(requests) == n == 8
    for i, (context, doc) in enumerate(requests):
        feature = trainer.features[0](i)
        answer = FORMATS["rte"].doc_to_target(doc)
        assert answer in ("True", "False")
        if kind == "mt5":
            eos, s0, s1 = tok.eos_token_id, *tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
            ids = tok(context)["input_ids"]
            assert ids[-1] == eos and feature.input_ids == ids[:-1] + [s0, eos]
            assert feature.labels == [s0, *tok(answer, add_special_tokens=False)["input_ids"], s1, eos]
        else:
            prompt_ids = tok(context)["input_ids"]
            answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert feature.input_ids == prompt_ids + answer_ids
            assert feature.labels == [-100] * len(prompt_ids) + answer_ids


def test_one_shot_training_prepends_a_demonstration_of_the_same_task(tiny_models, data_env):
    from transformers import AutoTokenizer

    from harness_tasks.examples import render
    from trainers.config import load_config
    from trainers.train import build_trainer

    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['llama']}", "shots=1"])
    trainer, n = build_trainer(config, Path("unused"), str(tiny_models["llama"]))
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    zero_shot = render("fmtspec_rte", "train", limit=8)
    for i in range(n):
        feature = trainer.features[0](i)
        text = tok.decode([t for t, l in zip(feature.input_ids, feature.labels) if l == -100])
        demo, query = text.rsplit("\n\n", 1)
        assert query.strip() == zero_shot[i].context.strip()
        assert demo.strip().endswith(("answer: True", "answer: False"))
        assert demo.strip() != f"{zero_shot[i].context} {zero_shot[i].target}"  # never its own demonstration


def test_prompt_inits(tiny_models):
    import torch
    from transformers import AutoTokenizer

    from trainers.soft_prompt_model import init_prompt

    model, tok = load_model(tiny_models["t5"]), AutoTokenizer.from_pretrained(tiny_models["t5"])
    table = model.get_input_embeddings().weight.detach()
    vocab = init_prompt(model, tok, length=6, init="vocab", vocab_top=50, seed=1)
    for row in vocab:  # each row is the embedding of a token among the first 50
        assert any(torch.equal(row, table[i]) for i in range(50))
    text = init_prompt(model, tok, length=5, init="text", init_text="True False")
    ids = tok("True False", add_special_tokens=False)["input_ids"]
    assert torch.equal(text, table[torch.tensor((ids * 5)[:5])])
    uniform = init_prompt(model, tok, length=100, init="uniform", init_range=0.5, seed=1)
    assert uniform.shape == (100, 64) and 0.45 < float(uniform.abs().max()) <= 0.5
    assert torch.equal(uniform, init_prompt(model, tok, length=100, init="uniform", seed=1))


def test_cli_module_and_config_validation_import_no_torch():
    code = ("import sys, argparse\n"
            "from fmtspec.core.errors import FmtspecError\n"
            "from trainers import cli\n"
            "args = argparse.Namespace(config='missing.yaml', overrides=[], output=None, resume=False)\n"
            "try:\n    cli.run(args)\nexcept FmtspecError as e:\n    print(e)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["config file not found: missing.yaml", "[]"], proc.stderr


def test_mixture_sampler_follows_the_weights_and_resumes_exactly():
    from trainers.data import MixtureSampler

    sampler = MixtureSampler([5, 7], [2.0, 1.0], seed=0)
    draws = [sampler.next() for _ in range(3000)]
    share = sum(1 for t, _ in draws if t == 0) / len(draws)
    assert 0.63 < share < 0.70
    second_task = [i for t, i in draws if t == 1]
    assert sorted(second_task[:7]) == list(range(7)) == sorted(second_task[7:14])  # each example once an epoch
    assert second_task[:7] != second_task[7:14]  # reshuffled every epoch
    state = sampler.state_dict()
    ahead = [sampler.next() for _ in range(50)]
    other = MixtureSampler([5, 7], [2.0, 1.0], seed=0)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert [other.next() for _ in range(50)] == ahead


# -- failures -------------------------------------------------------------------------------------------

def test_missing_dataset_field_is_one_clear_line(tmp_path, tiny_models, monkeypatch):
    from trainers.config import load_config
    from trainers.train import train

    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "rte", data / "rte")
    rows = [json.loads(line) for line in (data / "rte" / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("hypothesis")
    (data / "rte" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(data))
    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}"])
    with pytest.raises(FmtspecError) as err:
        train(config, tmp_path / "run")
    # the file, the first record's line and the field
    assert "\n" not in str(err.value) and f"{data / 'rte' / 'train.jsonl'}:1: field 'hypothesis'" in str(err.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_resume_is_exact(tmp_path, tiny_models, data_env,
                                                                          monkeypatch, train_tiny):
    import torch

    from trainers.config import load_config
    from trainers.train import train
    from trainers.soft_prompt_model import PromptedModel

    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}"])
    forward, calls = PromptedModel.forward, []

    def poisoned(self, *args, **kwargs):
        loss = forward(self, *args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) > 4 else loss  # step 3 (2 micro-batches a step)

    monkeypatch.setattr(PromptedModel, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(FmtspecError) as err:
        train(config, run)
    message = str(err.value)
    assert "\n" not in message and "nan" in message and "step 3" in message and "checkpoints/step-2" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert not (run / "run.json").exists() and not list(run.rglob(".tmp-*"))

    monkeypatch.setattr(PromptedModel, "forward", forward)
    train(config, run, resume=True)
    resumed = manifest(run)
    assert resumed["steps"] == 4
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 2, 3, 4, 4]  # losses and validations, none twice
    reference = train_tiny("finetune")  # the same config, never interrupted
    a, b = load_model(run / "model").state_dict(), load_model(reference / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_atomic(tmp_path):
    from fmtspec.core.atomic_files import atomic_folder
    from fmtspec.core.run_folder import checkpoint_steps, remove_partial_checkpoints

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    with atomic_folder(checkpoints / "step-2") as tmp:
        (tmp / "trainer_state.json").write_text("{}")
        assert not (checkpoints / "step-2").exists()  # invisible until complete
    with pytest.raises(RuntimeError):
        with atomic_folder(checkpoints / "step-4") as tmp:
            (tmp / "trainer_state.json").write_text("{}")
            raise RuntimeError("killed while writing")
    killed = checkpoints / ".tmp-step-6-999"  # what SIGKILL leaves: never taken for a checkpoint
    killed.mkdir()
    (killed / "trainer_state.json").write_text("{}")
    assert checkpoint_steps(tmp_path) == [2]
    remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2"]


def test_output_folder_in_use_needs_resume(tmp_path, tiny_models, data_env):
    from trainers.config import load_config
    from trainers.train import train

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}"])
    with pytest.raises(FmtspecError, match="not empty; pass --resume"):
        train(config, tmp_path / "run")


# -- evaluation of a run folder -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("promot", "mt5"), ("promot", "gpt2"), ("promot_lora", "mt5")])
def test_lm_eval_promot_hf_evaluates_a_run_folder_as_the_trainer_validated_it(name, kind, train_tiny, tmp_path):
    """`lm_eval --model promot_hf --model_args pretrained=RUN_DIR` loads the run with no other argument and
    generates, on the validation docs, exactly what the trainer generated when it chose the checkpoint
    (soft prompt on the encoder or before a causal input; or the unmerged stage-1 LoRA switched on)."""
    import torch

    # validation one document at a time, as lm_eval's default batch size 1 generates, and the same thread
    # count: the two sides then compute the same sums (padding and threads change near-tied greedy choices)
    run = train_tiny(name, "eval.batch_size=1", kind=kind)
    m = manifest(run)
    env = {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    chosen = run / "checkpoints" / f"step-{m['checkpoint']['step']}" / "val_predictions.jsonl"
    ours = [json.loads(line) for line in chosen.read_text().splitlines()]
    # the trainer validated eval.limit 4 of the 8 rows, a sample by data.seed; "doc" is lm-eval's doc_id
    assert len(ours) == 4
    out = tmp_path / "eval"
    proc = subprocess.run([str(Path(sys.executable).parent / "lm_eval"), "--model", "promot_hf", "--model_args",
                           f"pretrained={run}", "--tasks", "fmtspec_rte", "--output_path", str(out),
                           "--samples", json.dumps({"fmtspec_rte": [row["doc"] for row in ours]}),
                           "--log_samples"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert "acc,none" in results["results"]["fmtspec_rte"]
    samples = [json.loads(line) for line in next(out.rglob("samples_fmtspec_rte_*.jsonl")).read_text().splitlines()]
    generated = {s["doc_id"]: s["resps"][0][0] for s in samples}
    assert sorted(generated) == sorted(row["doc"] for row in ours)
    for row in ours:  # lm-eval cuts at the task's stop string; the trainer scores the raw text
        assert generated[row["doc"]] == row["prediction"].split("\n\n")[0]
