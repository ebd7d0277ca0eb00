"""promot_hf on BART (the miniature world's architecture), checked like T5 and Llama in test_promot_hf.py:
against stock `hf`, `hf` with `peft=`, and the plain definition of greedy decoding (full forward passes).

BART's encoder multiplies token embeddings by `embed_scale` (sqrt(d_model) with `scale_embedding`) inside
`embed_tokens`; a prompt is prepended to the output of that module, as PEFT does, so the tiny BART here has
`scale_embedding` on: a raw lookup in the weight matrix would change every number below."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from test_promot_hf import (  # noqa: E402,F401  (fixtures are used by name)
    MAX_NEW, NLI, QA, _in_assets, _one_thread, _prompt, assert_close, evaluate, qa_contexts, reference, task_manager,
)
from greedy_reference import assert_generations_match  # noqa: E402


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    """The tiny `bart` kind, its matrices redrawn at std 0.2: at BART's init (0.02) a random decoder
    barely reads the encoder and says the same words for every input, which would hide a wrong prompt."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from fmtspec.tiny_models import _silence_special_tokens, build_tiny_model

    folder = build_tiny_model("bart", tmp_path_factory.mktemp("bart") / "bart")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    _silence_special_tokens(model, AutoTokenizer.from_pretrained(folder))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bart_prompt(bart, tmp_path_factory):
    return _prompt(tmp_path_factory.mktemp("bart_prompt") / "a", bart, seed=1)


def test_tiny_bart_scales_its_embeddings(bart):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(bart)
    model = AutoModelForSeq2SeqLM.from_pretrained(bart)
    assert config.model_type == "bart" and config.scale_embedding and config.d_model == 128
    assert (config.encoder_layers, config.decoder_layers, config.encoder_attention_heads) == (3, 3, 4)
    assert config.encoder_ffn_dim == 512
    ids = torch.tensor([[5, 6, 7]])
    scaled = model.get_input_embeddings()(ids)
    assert torch.allclose(scaled, model.get_input_embeddings().weight[ids] * config.d_model ** 0.5)


def test_prompt_is_prepended_to_the_scaled_embeddings(bart, bart_prompt):
    """promot_hf's encoder input = [prompt, embed_tokens(ids)]: what BART's encoder computes from ids."""
    from model_adapters.promot_hf import PromotHFLM

    lm = PromotHFLM(pretrained=str(bart), soft_prompt=str(bart_prompt), prompt="on", device="cpu", dtype="float32")
    lm._activate(str(bart_prompt))
    ids = torch.tensor([lm.tok_encode("Q: Who wrote the book? A:")])
    embeds = lm._with_prompt(ids)
    encoder = lm.model.get_encoder()
    with torch.no_grad():
        from_ids = encoder(input_ids=ids).last_hidden_state
        from_embeds = encoder(inputs_embeds=embeds[:, lm._prompt_len:]).last_hidden_state
    assert torch.allclose(from_ids, from_embeds, atol=1e-6)
    assert torch.equal(embeds[0, :lm._prompt_len], lm._active)


def test_prompt_off_equals_stock_hf(bart, task_manager):
    _, stock = evaluate(task_manager, "hf", f"pretrained={bart}")
    _, ours = evaluate(task_manager, "promot_hf", f"pretrained={bart},prompt=off")
    assert_close(ours[NLI], stock[NLI])
    # stock hf's seq2seq generation runs past max_gen_toks (test_promot_hf.py): compare with the definition
    refs, decode = reference(bart, None, qa_contexts(), MAX_NEW)
    assert_generations_match(ours[QA], refs, decode, ["Q:", "\n"])


def test_prompt_on_equals_stock_hf_with_peft(bart, bart_prompt, task_manager):
    _, stock = evaluate(task_manager, "hf", f"pretrained={bart},peft={bart_prompt}", tasks=[NLI])
    _, ours = evaluate(task_manager, "promot_hf", f"pretrained={bart},soft_prompt={bart_prompt},prompt=on",
                       tasks=[NLI])
    _, off = evaluate(task_manager, "promot_hf", f"pretrained={bart},prompt=off", tasks=[NLI])
    assert_close(ours[NLI], stock[NLI])
    assert not torch.allclose(torch.tensor(ours[NLI]), torch.tensor(off[NLI]), atol=1e-3)  # the prompt acts


def test_generation_equals_the_plain_definition(bart, bart_prompt, task_manager):
    refs, decode = reference(bart, bart_prompt, qa_contexts(), MAX_NEW)
    without, _ = reference(bart, None, qa_contexts(), MAX_NEW)
    assert [r.tokens for r in refs] != [r.tokens for r in without]  # the prompt acts
    for batch_size in (1, 4):
        _, ours = evaluate(task_manager, "promot_hf", f"pretrained={bart},soft_prompt={bart_prompt},prompt=on",
                           tasks=[QA], batch_size=batch_size)
        assert_generations_match(ours[QA], refs, decode, ["Q:", "\n"])
