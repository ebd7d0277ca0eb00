"""promot_hf through lm-eval itself, checked against stock `hf`, `hf` with `peft=`, and the plain definition of
greedy decoding (tests/greedy_reference.py: full forward passes, no cache), on the tiny T5, mT5 and Llama.
Tasks: tests/assets/promot_hf/ (one loglikelihood task in the RTE format, one generate_until task in the QA
format, on local jsonl)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
lm_eval = pytest.importorskip("lm_eval")

from fmtspec.core.errors import FmtspecError  # noqa: E402
from greedy_reference import assert_generations_match, cut, expected_text, greedy  # noqa: E402
from model_adapters.soft_prompt import save_soft_prompt  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "promot_hf"
NLI, QA = "promot_test_nli", "promot_test_qa"
P = 4  # prompt length
MAX_NEW = 16  # the QA task's max_gen_toks


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=str(ASSETS))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one thread is ~40x faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _in_assets(monkeypatch):
    monkeypatch.chdir(ASSETS)  # the task YAMLs name their jsonl relative to this folder


def _prompt(folder: Path, model_dir: Path, seed: int) -> Path:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(seed)
    return save_soft_prompt(folder, torch.randn(P, config.d_model if config.is_encoder_decoder else
                                                config.hidden_size, generator=gen),
                            base_model=str(model_dir), encoder_decoder=config.is_encoder_decoder)


@pytest.fixture(scope="module")
def prompts(tiny_models, tmp_path_factory):
    """{kind: (prompt A, prompt B)}: two different soft prompts per tiny model."""
    root = tmp_path_factory.mktemp("prompts")
    return {kind: (_prompt(root / kind / "a", folder, 1), _prompt(root / kind / "b", folder, 2))
            for kind, folder in tiny_models.items()}


def evaluate(task_manager, model, model_args, tasks=(NLI, QA), batch_size=1, gen_kwargs=None):
    """(results, {task: per-doc outputs}): loglikelihoods of every choice, or the generated text."""
    results = lm_eval.simple_evaluate(model=model, model_args=f"device=cpu,dtype=float32,{model_args}",
                                      tasks=list(tasks), task_manager=task_manager, batch_size=batch_size,
                                      log_samples=True, bootstrap_iters=0, gen_kwargs=gen_kwargs)
    outputs = {}
    for task, samples in results["samples"].items():
        samples = sorted(samples, key=lambda s: s["doc_id"])
        if task == QA:
            outputs[task] = [s["resps"][0][0] for s in samples]
        else:
            outputs[task] = [[resp[0][0] for resp in s["resps"]] for s in samples]
    return results, outputs


def assert_close(a, b, tol=1e-4):  # log-likelihoods of O(10): float32 rounding of two code paths is ~1e-5
    assert torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0), (a, b)


# ---- equivalence with stock hf and hf+peft ----


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_prompt_off_equals_stock_hf(kind, tiny_models, task_manager):
    _, stock = evaluate(task_manager, "hf", f"pretrained={tiny_models[kind]}")
    _, ours = evaluate(task_manager, "promot_hf", f"pretrained={tiny_models[kind]},prompt=off")
    assert_close(ours[NLI], stock[NLI])
    if kind == "llama":  # stock seq2seq generation overruns max_gen_toks (see test below)
        assert ours[QA] == stock[QA]


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_prompt_on_equals_stock_hf_with_peft(kind, tiny_models, prompts, task_manager):
    prompt = prompts[kind][0]
    _, stock = evaluate(task_manager, "hf", f"pretrained={tiny_models[kind]},peft={prompt}", tasks=[NLI])
    _, ours = evaluate(task_manager, "promot_hf", f"pretrained={tiny_models[kind]},soft_prompt={prompt},prompt=on",
                       tasks=[NLI])
    _, off = evaluate(task_manager, "promot_hf", f"pretrained={tiny_models[kind]},prompt=off", tasks=[NLI])
    assert_close(ours[NLI], stock[NLI])
    assert not torch.allclose(torch.tensor(ours[NLI]), torch.tensor(off[NLI]), atol=1e-3)  # the prompt acts


def test_stock_hf_seq2seq_overruns_max_gen_toks(tiny_models, task_manager):
    """Why promot_hf generates itself: stock `hf` gives T5 context + max_gen_toks as decoder max_length."""
    _, stock = evaluate(task_manager, "hf", f"pretrained={tiny_models['t5']}", tasks=[QA])
    _, ours = evaluate(task_manager, "promot_hf", f"pretrained={tiny_models['t5']},prompt=off", tasks=[QA])
    refs, decode = reference(tiny_models["t5"], None, qa_contexts(), MAX_NEW)
    assert_generations_match(ours[QA], refs, decode, ["Q:", "\n"])
    decisive = [i for i, ref in enumerate(refs) if ref.decisive_steps() == len(ref.tokens)]
    expected = {i: expected_text(refs[i], decode, ["Q:", "\n"]) for i in decisive}
    assert all(stock[QA][i].startswith(expected[i]) for i in decisive)
    assert any(stock[QA][i] != expected[i] for i in decisive)


# ---- generation against the plain definition (full forward passes, one example at a time) ----


def reference(model_dir, adapter, contexts, max_new, sentinel=False):
    """([greedy_reference.Greedy per context], decode): the contexts encoded as the tokenizer encodes them,
    the prompt read from the PEFT folder's own file (the encoder rows come first)."""
    import transformers
    from safetensors.torch import load_file

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir).eval()
    prompt = None
    if adapter is not None:
        n = json.loads((Path(adapter) / "adapter_config.json").read_text())["num_virtual_tokens"]
        prompt = load_file(str(Path(adapter) / "adapter_model.safetensors"))["prompt_embeddings"][:n]
    refs = []
    for context in contexts:
        ids = tok(context).input_ids
        if sentinel:
            ids = ids[:-1] + [tok.convert_tokens_to_ids("<extra_id_0>"), tok.eos_token_id]
        refs.append(greedy(model, ids, max_new, prompt))

    def decode(tokens):
        if tok.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tok.eos_token_id)]
        if sentinel:
            return tok.decode([t for t in tokens if t != tok.pad_token_id], skip_special_tokens=False)
        return tok.decode(tokens, skip_special_tokens=True)

    return refs, decode


def qa_contexts():
    return [f"Q: {json.loads(line)['question']} A:" for line in (ASSETS / "data" / "qa.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_generation_equals_the_plain_definition(kind, tiny_models, prompts, task_manager):
    model_dir, prompt = tiny_models[kind], prompts[kind][0]
    refs, decode = reference(model_dir, prompt, qa_contexts(), MAX_NEW)
    # a stop string that fires inside a generation, within its decisive steps
    decisive = [decode(r.tokens[:r.decisive_steps()]) for r in refs]
    stop = next(text[4:6] for text in decisive if len(text.strip()) >= 6)
    stops = [stop, "\n"]
    assert any(cut(decode(r.tokens), stops) != decode(r.tokens) for r in refs)
    gen_kwargs = {"until": stops, "max_gen_toks": MAX_NEW, "do_sample": False}
    for batch_size in (1, 4):
        _, ours = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={prompt},prompt=on",
                           tasks=[QA], batch_size=batch_size, gen_kwargs=gen_kwargs)
        assert_generations_match(ours[QA], refs, decode, stops)
    without, _ = reference(model_dir, None, qa_contexts(), MAX_NEW)
    assert [r.tokens for r in without] != [r.tokens for r in refs]  # the prompt acts
    _, off = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},prompt=off", tasks=[QA], batch_size=4,
                      gen_kwargs=gen_kwargs)
    assert_generations_match(off[QA], without, decode, stops)


def test_generation_stops_early(tiny_models):
    """The stop check ends generation, not only the text: it stops after the tokens that make the stop string."""
    from model_adapters.promot_hf import PromotHFLM

    lm = PromotHFLM(pretrained=str(tiny_models["t5"]), device="cpu", dtype="float32")
    rows = lm._encode_contexts(qa_contexts()[:1], MAX_NEW)
    full = lm._generate_rows(rows, MAX_NEW, [], {"do_sample": False})
    stop = lm._decode_generation(full[0][:3])[-2:]
    cut = lm._generate_rows(rows, MAX_NEW, [stop], {"do_sample": False})
    assert len(full[0]) == MAX_NEW and len(cut[0]) <= 3 and stop in lm._decode_generation(cut[0])


# ---- sentinels (mT5) ----


def test_sentinel_generation_on_mt5(tiny_models, prompts, task_manager):
    model_dir, prompt = tiny_models["mt5"], prompts["mt5"][0]
    args = f"pretrained={model_dir},soft_prompt={prompt},prompt=on"
    results, ours = evaluate(task_manager, "promot_hf", args, tasks=[QA], batch_size=4)  # default: on for mT5
    assert results["config"]["promot_hf"]["sentinel"] is True
    refs, decode = reference(model_dir, prompt, qa_contexts(), MAX_NEW, sentinel=True)
    assert_generations_match(ours[QA], refs, decode, ["Q:", "\n"])
    _, plain = evaluate(task_manager, "promot_hf", args + ",sentinel=false", tasks=[QA], batch_size=4)
    plain_refs, plain_decode = reference(model_dir, prompt, qa_contexts(), MAX_NEW)
    assert [r.tokens for r in plain_refs] != [r.tokens for r in refs]  # the sentinel changes the input
    assert_generations_match(plain[QA], plain_refs, plain_decode, ["Q:", "\n"])


def test_sentinel_decoding_keeps_extra_ids(tiny_models, prompts, tmp_path):
    from model_adapters.promot_hf import PromotHFLM

    lm = PromotHFLM(pretrained=str(tiny_models["mt5"]), device="cpu", dtype="float32")
    tok = lm.tokenizer
    word = tok("river", add_special_tokens=False).input_ids
    ids = [tok.pad_token_id, tok.convert_tokens_to_ids("<extra_id_0>"), *word,
           tok.convert_tokens_to_ids("<extra_id_1>"), tok.eos_token_id, *word]
    assert lm._sentinel
    spans = [tok.convert_tokens_to_ids("<extra_id_0>"), *word, tok.convert_tokens_to_ids("<extra_id_1>")]
    assert lm._decode_generation(ids) == tok.decode(spans, skip_special_tokens=False)
    assert lm._decode_generation(ids).startswith("<extra_id_0>") and lm._decode_generation(ids).endswith("<extra_id_1>")
    assert lm._encode_contexts(["Q: river A:"], MAX_NEW)[0][-2:] == [tok.convert_tokens_to_ids("<extra_id_0>"),
                                                                  tok.eos_token_id]
    t5 = PromotHFLM(pretrained=str(tiny_models["t5"]), device="cpu", dtype="float32")
    assert not t5._sentinel  # the T5 tokenizer has no sentinels
    run = _run_folder(tmp_path / "run", tiny_models["mt5"], {QA: prompts["mt5"][0]}, sentinel=False)
    assert not PromotHFLM(pretrained=str(run), device="cpu")._sentinel  # as the run's training inputs were
    with pytest.raises(FmtspecError, match="sentinel=true needs a tokenizer with <extra_id_0>"):
        PromotHFLM(pretrained=str(tiny_models["t5"]), device="cpu", sentinel=True)


# ---- prompt=auto and run folders ----


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_auto_prompts_only_the_prompt_tasks(kind, tiny_models, prompts, task_manager):
    model_dir, prompt = tiny_models[kind], prompts[kind][0]
    # one batch size throughout: each task's requests are batched alike, so the three runs compute the same sums
    _, on = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={prompt},prompt=on",
                     batch_size=4)
    _, off = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},prompt=off", batch_size=4)
    results, auto = evaluate(task_manager, "promot_hf",
                             f"pretrained={model_dir},soft_prompt={prompt},prompt_tasks=promot_test_q*", batch_size=4)
    assert auto[QA] == on[QA] != off[QA]
    assert_close(auto[NLI], off[NLI])
    assert results["config"]["promot_hf"]["task_prompts"] == {NLI: None, QA: str(prompt)}


def _run_folder(root: Path, model_dir: Path, prompts: dict[str, Path], sentinel=False, tasks=()) -> Path:
    """A run folder in the layout the trainers write: model/ (weights only here), prompts, run.json."""
    root.mkdir(parents=True)
    shutil.copytree(model_dir, root / "model", ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    rel = {}
    for task, prompt in prompts.items():
        dest = root / ("soft_prompt" if len(prompts) == 1 else f"prompts/{task}")
        shutil.copytree(prompt, dest)
        rel[task] = str(dest.relative_to(root))
    manifest = {"format": "fmtspec-run/1", "method": "promot", "base_model": str(model_dir), "model": "model",
                "prompts": rel, "sentinel": sentinel, "encoder_decoder": True, "stage": 2,
                "tasks": [{"name": task, "weight": 1.0} for task in tasks]}
    (root / "run.json").write_text(json.dumps(manifest))
    return root


def test_run_folder_single_and_multi_task(tiny_models, prompts, task_manager, tmp_path):
    model_dir, (prompt_a, prompt_b) = tiny_models["t5"], prompts["t5"]
    single = _run_folder(tmp_path / "single", model_dir, {"promot_test_q*": prompt_a})
    results, from_run = evaluate(task_manager, "promot_hf", f"pretrained={single}")
    _, explicit = evaluate(task_manager, "promot_hf",
                           f"pretrained={model_dir},soft_prompt={prompt_a},prompt_tasks=promot_test_q*")
    assert from_run[QA] == explicit[QA]
    assert_close(from_run[NLI], explicit[NLI])
    assert results["config"]["promot_hf"]["run_folder"] == str(single)
    # a prompt folder inside a run folder brings its tasks along
    _, inside = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={single / 'soft_prompt'}",
                         tasks=[QA])
    assert inside[QA] == explicit[QA]

    multi = _run_folder(tmp_path / "multi", model_dir, {QA: prompt_a, NLI: prompt_b})
    results, ours = evaluate(task_manager, "promot_hf", f"pretrained={multi}", batch_size=4)
    # the same padding: float32 sums differ across batch sizes
    _, with_a = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={prompt_a},prompt=on",
                         tasks=[QA], batch_size=4)
    _, with_b = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={prompt_b},prompt=on",
                         tasks=[NLI], batch_size=4)
    assert ours[QA] == with_a[QA]
    assert_close(ours[NLI], with_b[NLI])
    assert results["config"]["promot_hf"]["task_prompts"] == {NLI: str(multi / "prompts" / NLI),
                                                              QA: str(multi / "prompts" / QA)}


def test_prompt_tasks_matching_no_task(tiny_models, prompts, task_manager, caplog, tmp_path):
    from model_adapters.promot_hf import PromotHFLM

    model_dir, prompt = tiny_models["t5"], prompts["t5"][0]
    # given prompt_tasks= that match no task of the run: an error at the first batch, not a run without the prompt
    with pytest.raises(FmtspecError, match=r"^prompt_tasks=fmtspec_rte matches none of the tasks of this run "
                                           r"\(promot_test_nli, promot_test_qa\)"):
        evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={prompt},prompt_tasks=fmtspec_rte")
    # the run folder's own prompt tasks matching none: a warning
    run = _run_folder(tmp_path / "run", model_dir, {"fmtspec_rte": prompt}, tasks=["fmtspec_rte"])
    with caplog.at_level(logging.WARNING):
        results, _ = evaluate(task_manager, "promot_hf", f"pretrained={run}", tasks=[NLI])
    assert "prompt_tasks fmtspec_rte matched no task of this run (promot_test_nli)" in caplog.text
    assert results["config"]["promot_hf"]["task_prompts"] == {NLI: None}

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        PromotHFLM(pretrained=str(run), prompt_tasks="fmtspec_cb", device="cpu")
    assert "prompt_tasks fmtspec_cb names no task the run was trained on (fmtspec_rte)" in caplog.text


# ---- a LoRA adapter in a prompt's place (stage1: lora) ----


def test_lora_adapter_switched_per_task(tiny_models, task_manager, tmp_path):
    import transformers
    from peft import LoraConfig, get_peft_model

    model_dir = tiny_models["llama"]
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    _, stock = evaluate(task_manager, "hf", f"pretrained={model_dir}")
    _, stock_lora = evaluate(task_manager, "hf", f"pretrained={model_dir},peft={tmp_path / 'lora'}")
    results, auto = evaluate(task_manager, "promot_hf",
                             f"pretrained={model_dir},soft_prompt={tmp_path / 'lora'},prompt_tasks={QA}")
    assert auto[QA] == stock_lora[QA] != stock[QA]
    assert_close(auto[NLI], stock[NLI])
    _, on = evaluate(task_manager, "promot_hf", f"pretrained={model_dir},soft_prompt={tmp_path / 'lora'},prompt=on",
                     tasks=[NLI])
    assert_close(on[NLI], stock_lora[NLI])
    assert results["config"]["promot_hf"]["task_prompts"] == {NLI: None, QA: str(tmp_path / "lora")}


# ---- bad input: one clear line ----


def _error(**kwargs) -> str:
    from model_adapters.promot_hf import PromotHFLM

    with pytest.raises(FmtspecError) as info:
        PromotHFLM(device="cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_input_errors(tiny_models, prompts, tmp_path):
    t5 = str(tiny_models["t5"])
    narrow = save_soft_prompt(tmp_path / "narrow", torch.zeros(P, 32), base_model=t5, encoder_decoder=True)
    assert "has width 32 but the model's embeddings have width 64" in _error(pretrained=t5, soft_prompt=str(narrow))
    assert "soft prompt folder not found" in _error(pretrained=t5, soft_prompt=str(tmp_path / "nope"), prompt="on")
    (tmp_path / "empty").mkdir()
    assert "has no adapter_config.json" in _error(pretrained=t5, soft_prompt=str(tmp_path / "empty"), prompt="on")
    assert "prompt=on but there is no soft prompt" in _error(pretrained=t5, prompt="on")
    assert "is not one of on|off|auto" in _error(pretrained=t5, prompt="sometimes")
    assert "prompt=auto needs the tasks of soft prompt" in _error(pretrained=t5, soft_prompt=str(prompts["t5"][0]))
    run = tmp_path / "run"
    shutil.copytree(prompts["t5"][0], run / "soft_prompt")
    assert "is not a fmtspec run folder: it has no run.json" in _error(pretrained=str(run))
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert f"cannot load LoRA adapter {lora}" in _error(pretrained=t5, soft_prompt=str(lora), prompt="on")
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    assert "is a PREFIX_TUNING adapter" in _error(pretrained=t5, soft_prompt=str(lora), prompt="on")


# ---- the lm_eval command ----


def _lm_eval(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest
    return subprocess.run([str(Path(sys.executable).with_name("lm_eval")), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_lm_eval_cli(tiny_models, prompts, tmp_path):
    run = _run_folder(tmp_path / "run", tiny_models["t5"], {QA: prompts["t5"][0]})
    done = _lm_eval("--model", "promot_hf", "--model_args", f"pretrained={run}", "--device", "cpu",
                    "--tasks", f"{QA},{NLI}", "--include_path", str(ASSETS), "--output_path", str(tmp_path / "out"),
                    cwd=ASSETS)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    config = json.loads(results_file.read_text())["config"]
    assert config["promot_hf"]["task_prompts"] == {NLI: None, QA: str(run / "soft_prompt")}

    bad = _lm_eval("--model", "promot_hf", "--model_args", f"pretrained={tiny_models['t5']},prompt=on",
                   "--device", "cpu", "--tasks", QA, "--include_path", str(ASSETS), cwd=ASSETS)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == ("promot_hf: prompt=on but there is no soft prompt: "
                                                   "give soft_prompt=<folder> or a run folder with one")
