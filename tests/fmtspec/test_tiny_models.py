import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from fmtspec.tiny_models import KINDS, build_tiny_model

SEQ2SEQ = {"t5", "mt5"}


def _load(folder, kind):
    cls = AutoModelForSeq2SeqLM if kind in SEQ2SEQ else AutoModelForCausalLM
    return AutoTokenizer.from_pretrained(folder), cls.from_pretrained(folder)


@pytest.mark.parametrize("kind", KINDS)
def test_loads_offline_and_generates_text(tiny_models, kind):
    tokenizer, model = _load(tiny_models[kind], kind)
    assert model.config.is_encoder_decoder == (kind in SEQ2SEQ)
    for prompt in ["Q: Who wrote the book? A:", "Translate English to German: the city is old"]:
        enc = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        new = out[0] if kind in SEQ2SEQ else out[0, enc.input_ids.shape[1]:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        assert text.strip(), f"{kind} generated no text for {prompt!r}"
        assert "\ufffd" not in text


def test_weights_are_deterministic_by_seed(tmp_path):
    a = load_file(build_tiny_model("llama", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model("llama", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model("llama", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "c" / "tokenizer.json").read_bytes()


def test_only_the_mt5_tokenizer_has_sentinels(tiny_models):
    mt5 = AutoTokenizer.from_pretrained(tiny_models["mt5"])
    t5 = AutoTokenizer.from_pretrained(tiny_models["t5"])
    ids = mt5("answer: <extra_id_0>").input_ids
    assert mt5.convert_tokens_to_ids("<extra_id_0>") in ids
    assert mt5.convert_tokens_to_ids("<extra_id_99>") != mt5.unk_token_id
    assert "<extra_id_0>" not in t5.get_vocab()


def test_cli_writes_model_folders(tmp_path, capsys):
    from fmtspec.cli import main

    assert main(["tiny-models", "--output", str(tmp_path), "--kinds", "gpt2"]) == 0
    assert (tmp_path / "gpt2" / "model.safetensors").is_file()
    assert not (tmp_path / "gpt2" / "pytorch_model.bin").exists()
    assert main(["tiny-models", "--output", str(tmp_path), "--kinds", "bert"]) != 0
