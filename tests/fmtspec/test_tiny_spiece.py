"""The tiny `mt5_spiece` model, whose tokenizer folder is laid out as the hub's google/mt5-* have it
(spiece.model, tokenizer_config.json, special_tokens_map.json; no tokenizer.json): transformers converts its
spiece.model (with sentencepiece and protobuf), lm-eval scores it through promot_hf, and `fmtspec train`
trains it into a run folder that lm-eval scores again. What the paper's mT5/T5 v1.1 checkpoints go through."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmtspec.tiny_models import SPIECE_PIECES, build_tiny_model, write_spiece_tokenizer

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
SENTINELS = 100


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> Path:
    return build_tiny_model("mt5_spiece", tmp_path_factory.mktemp("tiny_spiece") / "mt5_spiece")


@pytest.fixture(scope="module")
def tokenizer(spiece):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spiece)


def sp_size(folder) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size()


def test_folder_has_the_hubs_mt5_layout(spiece):
    assert sorted(p.name for p in spiece.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "spiece.model",
        "tokenizer_config.json"]  # no tokenizer.json: transformers must build the tokenizer from spiece.model
    config = json.loads((spiece / "tokenizer_config.json").read_text())
    assert (config["tokenizer_class"], config["extra_ids"], config["additional_special_tokens"]) == ("T5Tokenizer", 0,
                                                                                                    None)
    assert json.loads((spiece / "special_tokens_map.json").read_text()) == {
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    model_config = json.loads((spiece / "config.json").read_text())
    assert (model_config["model_type"], model_config["tokenizer_class"]) == ("mt5", "T5Tokenizer")


def test_spiece_model_is_t5s_and_deterministic(spiece, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spiece / "spiece.model"))
    pieces = sp.get_piece_size() - SENTINELS
    assert 800 <= pieces <= SPIECE_PIECES  # a soft limit: what the fixtures' text allows (now all 900)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"] and sp.bos_id() == -1
    # the sentinels last, <extra_id_0> the very last, as in mT5's mc4.250000.100extra model
    assert [sp.id_to_piece(pieces + i) for i in range(SENTINELS)] == [f"▁<extra_id_{99 - i}>" for i in range(100)]
    assert not any("extra_id" in sp.id_to_piece(i) for i in range(pieces))
    again = write_spiece_tokenizer(tmp_path / "again")
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (again / name).read_bytes() == (spiece / name).read_bytes(), name


def test_autotokenizer_converts_it_with_t5s_ids_and_sentinels(spiece, tokenizer):
    import sentencepiece as spm
    from transformers import AutoModelForSeq2SeqLM

    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == sp_size(spiece)
    assert AutoModelForSeq2SeqLM.from_pretrained(spiece).config.vocab_size == 1024 >= len(tokenizer)
    # The sentinels, as on the hub's mT5: ordinary pieces `▁<extra_id_N>` (the last 100 ids, reversed) that
    # the text `<extra_id_N>` after a space encodes to; `<extra_id_0>` itself is no key of the vocabulary.
    last = len(tokenizer) - 1
    assert tokenizer("<extra_id_0> True <extra_id_1>", add_special_tokens=False).input_ids[::2] == [last, last - 1]
    assert tokenizer.convert_ids_to_tokens([last, last - 99]) == ["▁<extra_id_0>", "▁<extra_id_99>"]
    assert "<extra_id_0>" not in tokenizer.get_vocab()
    assert tokenizer("Q: A:").input_ids[-1] == tokenizer.eos_token_id  # T5's encoder input ends with </s>

    # fixture text of every task encodes as sentencepiece itself does, without <unk>, and decodes back
    sp = spm.SentencePieceProcessor(model_file=str(spiece / "spiece.model"))
    texts = []

    def strings(value):
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            for v in value:
                strings(v)
        elif isinstance(value, str) and value.strip():
            texts.append(value)

    for path in sorted(FIXTURES.glob("*/validation.jsonl")):
        strings([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:2]])
    assert any("\u4e00" <= ch <= "\u9fff" for t in texts for ch in t)  # alt_en_zh's Chinese among them
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert ids == sp.encode(text), text
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == " ".join(text.split()), text


def test_generates_readable_text_and_never_a_silenced_row(spiece, tokenizer):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(spiece)
    pieces = len(tokenizer) - SENTINELS
    silenced = [0, 1, 2, *range(pieces, model.config.vocab_size)]  # specials, sentinels, padding rows
    head = model.get_output_embeddings().weight
    assert not head[silenced].any() and head[3:pieces].abs().sum(1).min() > 0
    assert model.generation_config.pad_token_id == 0 and model.generation_config.eos_token_id == 1
    for prompt in ["Q: Who wrote the book? A:", "Translate English to German: the city is old"]:
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        assert text.strip() and "\ufffd" not in text and "extra_id" not in text, text


def test_cli_builds_it_on_request(tmp_path):
    from fmtspec.cli import main
    from fmtspec.tiny_models import EXTRA_KINDS, KINDS

    assert "mt5_spiece" in EXTRA_KINDS and "mt5_spiece" not in KINDS
    assert main(["tiny-models", "--output", str(tmp_path), "--kinds", "mt5_spiece"]) == 0
    assert (tmp_path / "mt5_spiece" / "spiece.model").is_file()
    assert not (tmp_path / "mt5_spiece" / "tokenizer.json").exists()


def _lm_eval(*args) -> subprocess.CompletedProcess:
    import torch

    env = {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([str(Path(sys.executable).parent / "lm_eval"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_lm_eval_promot_hf_scores_it(spiece, data_env):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = ["fmtspec_rte", "fmtspec_alt_en_zh"]
    manager = TaskManager(include_defaults=False, include_path=str(REPO / "harness_tasks"))
    results = lm_eval.simple_evaluate(model="promot_hf", model_args=f"pretrained={spiece},device=cpu,dtype=float32",
                                      tasks=tasks, task_manager=manager, limit=3, log_samples=True,
                                      bootstrap_iters=0, gen_kwargs={"max_gen_toks": 6})
    assert "acc,none" in results["results"]["fmtspec_rte"]
    assert "bleu,none" in results["results"]["fmtspec_alt_en_zh"]
    assert results["config"]["promot_hf"]["sentinel"] is True  # found as mT5's piece `▁<extra_id_0>`
    for task in tasks:
        generated = [s["resps"][0][0] for s in results["samples"][task]]
        assert len(generated) == 3 and all(g.strip() and "\ufffd" not in g for g in generated), (task, generated)


@pytest.mark.slow
def test_trained_run_folder_is_scored_as_the_trainer_validated_it(spiece, data_env, tmp_path):
    """ProMoT on the fixtures (configs/tiny/promot.yaml), then `lm_eval --model promot_hf` on the run folder:
    its generations are those the trainer made when it chose the checkpoint (as tests/trainers/test_trainers.py)."""
    from fmtspec.cli import main

    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "tiny" / "promot.yaml"), "--set", f"model={spiece}",
                 "--set", "eval.batch_size=1", "--output", str(run)]) == 0  # `fmtspec train`, in this process
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["sentinel"] is True and (run / "soft_prompt").is_dir() and (run / "model").is_dir()
    chosen = run / "checkpoints" / f"step-{manifest['checkpoint']['step']}" / "val_predictions.jsonl"
    ours = [json.loads(line) for line in chosen.read_text().splitlines()]
    assert len(ours) == 4  # eval.limit 4 of the 8 rows, a sample by data.seed; "doc": lm-eval's doc_id
    out = tmp_path / "eval"
    proc = _lm_eval("--model", "promot_hf", "--model_args", f"pretrained={run}", "--tasks", "fmtspec_rte",
                    "--samples", json.dumps({"fmtspec_rte": [row["doc"] for row in ours]}),
                    "--output_path", str(out), "--log_samples")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert "acc,none" in results["results"]["fmtspec_rte"]
    samples = [json.loads(line) for line in next(out.rglob("samples_fmtspec_rte_*.jsonl")).read_text().splitlines()]
    generated = {s["doc_id"]: s["resps"][0][0] for s in samples}
    assert sorted(generated) == sorted(row["doc"] for row in ours)
    for row in ours:  # lm-eval cuts at the task's stop string; the trainer scores the raw text
        assert generated[row["doc"]] == row["prediction"].split("\n\n")[0]


def test_the_hub_mt5_sentinels_are_found(spiece, tokenizer):
    """mT5's sentinels are pieces `▁<extra_id_N>` of spiece.model, not tokens `<extra_id_N>`: training
    inputs end with the piece's id, and the decoded span between sentinels is what the metrics keep."""
    from harness_tasks.metrics import postprocess
    from trainers.data import Encoder, uses_sentinel

    s0, s1 = (tokenizer.convert_tokens_to_ids(f"\u2581<extra_id_{n}>") for n in (0, 1))
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == tokenizer.unk_token_id  # the lookup that failed
    assert uses_sentinel("auto", tokenizer, encoder_decoder=True)
    encoder = Encoder(tokenizer, encoder_decoder=True, sentinel=True, max_input_length=64, max_target_length=16)
    feature = encoder.feature("Q: Who wrote the book? A:", "Ada", 0)
    assert feature.input_ids[-2:] == [s0, tokenizer.eos_token_id]
    assert feature.labels[0] == s0 and feature.labels[-2:] == [s1, tokenizer.eos_token_id]
    text = tokenizer.decode(feature.labels[:-1], skip_special_tokens=False)
    assert postprocess(text) == "Ada", text
