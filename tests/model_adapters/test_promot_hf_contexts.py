"""Whole contexts: `promot_hf` keeps a long few-shot context whole on T5-family models (relative positions),
cuts summarization articles (not demonstrations) to 1,024 tokens of the model's tokenizer, counts every
request it still has to cut, and refuses lm-eval's prompt-blind `--use_cache` when prompts switch per task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from fmtspec.core.errors import FmtspecError  # noqa: E402
from harness_tasks.examples import load_docs  # noqa: E402
from model_adapters.soft_prompt import save_soft_prompt  # noqa: E402

XSUM = "fmtspec_xsum_1shot"
LONG_DOC = 8  # the fixture's article of ~1,900 words


def _lm_eval(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(Path(sys.executable).with_name("lm_eval")), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _evaluate(model_args: str, tasks, **kwargs):
    return lm_eval.simple_evaluate(model="promot_hf", model_args=f"device=cpu,dtype=float32,{model_args}",
                                   tasks=list(tasks), batch_size=2, bootstrap_iters=0, **kwargs)


@pytest.mark.slow
def test_long_1shot_xsum_keeps_its_demonstration(tiny_models, offline_data, tmp_path):
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig, AutoTokenizer

    t5 = tiny_models["t5"]
    done = _lm_eval("--model", "promot_hf", "--model_args", f"pretrained={t5}", "--device", "cpu",
                    "--tasks", XSUM, "--samples", json.dumps({XSUM: [LONG_DOC]}), "--gen_kwargs", "max_gen_toks=4",
                    "--log_samples", "--output_path", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    (sample,) = [json.loads(line) for line in next((tmp_path / "out").rglob(f"samples_{XSUM}_*.jsonl")).open()]
    context = sample["arguments"]["gen_args_0"]["arg_0"]

    tok = AutoTokenizer.from_pretrained(t5)
    article = load_docs(XSUM, "test", tokenizer=tok)[LONG_DOC]["document"]
    demonstration, query = context.split("\n\n")
    assert demonstration.startswith("Article: ") and " One sentence summary: " in demonstration
    assert query == f"Article: {article} One sentence summary:"  # the article cut to 1,024 of its tokens
    # longer than what stock hf would have kept of it (the config's n_positions): kept whole here
    stock = resolve_max_length(AutoConfig.from_pretrained(t5), tok)
    assert len(tok(context).input_ids) > max(stock, 1024)
    config = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["config"]
    assert config["promot_hf"]["truncated_requests"] == {XSUM: 0}


def test_requests_cut_to_max_length_are_counted(tiny_models, offline_data, monkeypatch):
    """An explicit max_length below some contexts: every request cut to fit is counted, per task, for
    generation and loglikelihood requests, decoder-only and seq2seq. The expected counts come from the
    logged contexts' own token lengths (none within a few tokens of the limit, so encoding details of
    lm-eval's cannot flip one)."""
    from transformers import AutoTokenizer

    max_length, max_new = 200, 4
    for kind in ("gpt2", "t5"):
        tok = AutoTokenizer.from_pretrained(tiny_models[kind])
        results = _evaluate(f"pretrained={tiny_models[kind]},max_length={max_length}",
                            [XSUM, "fmtspec_cb_4shot", "fmtspec_wic_1shot"], limit=2,
                            gen_kwargs=f"max_gen_toks={max_new}", log_samples=True)
        limit = max_length - (max_new if kind == "gpt2" else 0)  # a decoder-only model needs room to generate
        expected = {}
        for task, samples in results["samples"].items():
            lengths = [len(tok(s["arguments"][0][0]).input_ids) for s in samples]
            assert all(abs(n - limit) > 8 for n in lengths), (task, lengths)
            expected[task] = sum(n > limit for n in lengths)
        assert sorted(expected.values()) == [0, 2, 2]  # WiC fits, 1-shot XSum and 4-shot CB do not
        assert results["config"]["promot_hf"]["truncated_requests"] == expected, kind

    # loglikelihood requests (a multiple-choice task: one request per choice)
    monkeypatch.chdir(Path(__file__).resolve().parents[1] / "assets" / "promot_hf")
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=".")
    for kind in ("gpt2", "t5"):
        for max_length, cut in ((8, 4), (512, 0)):  # every context is ~20 tokens
            results = _evaluate(f"pretrained={tiny_models[kind]},max_length={max_length}", ["promot_test_nli"],
                                limit=2, task_manager=manager)
            assert results["config"]["promot_hf"]["truncated_requests"] == {"promot_test_nli": cut}, kind


def test_relative_position_models_default_to_a_long_context(tiny_models):
    from lm_eval.api.registry import get_model

    t5 = get_model("promot_hf").create_from_arg_string(f"pretrained={tiny_models['t5']},device=cpu")
    gpt2 = get_model("promot_hf").create_from_arg_string(f"pretrained={tiny_models['gpt2']},device=cpu")
    short = get_model("promot_hf").create_from_arg_string(f"pretrained={tiny_models['t5']},device=cpu,max_length=300")
    assert t5.max_length == 8192 and short.max_length == 300
    assert gpt2.max_length == gpt2.model.config.n_positions  # absolute positions: the model's own


def test_use_cache_with_prompts_switched_per_task_is_refused(tiny_models, offline_data, tmp_path):
    from transformers import AutoConfig

    t5 = tiny_models["t5"]
    width = AutoConfig.from_pretrained(t5).d_model
    prompt = save_soft_prompt(tmp_path / "prompt", torch.randn(4, width, generator=torch.Generator().manual_seed(0)),
                              base_model=str(t5), encoder_decoder=True)
    args = f"pretrained={t5},soft_prompt={prompt},prompt_tasks=fmtspec_rte"
    with pytest.raises(FmtspecError, match="--use_cache keys answers by request text"):
        _evaluate(args, ["fmtspec_rte", "fmtspec_cb_1shot"], limit=2, use_cache=str(tmp_path / "cache"))
    # one prompt setting per cache file is allowed, and the cache serves the second run
    first = _evaluate(f"{args},prompt=on", ["fmtspec_rte"], limit=2, use_cache=str(tmp_path / "on"))
    again = _evaluate(f"{args},prompt=on", ["fmtspec_rte"], limit=2, use_cache=str(tmp_path / "on"))
    assert again["results"] == first["results"]
    assert (tmp_path / "on_rank0.db").is_file()
