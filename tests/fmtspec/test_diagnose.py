"""`fmtspec diagnose`: the gradient alignment checked against a direct torch.autograd computation on the tiny
models (Hugging Face's own loss, the weights picked by name), the layer/module selection of each
architecture, the specialization table on lm-eval results files, and one-line errors."""

import json
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(tiny_models, tmp_path, offline_data):
    """A run folder of the tiny mT5 whose final state is the base model with a soft prompt on fmtspec_rte."""
    import torch

    from model_adapters.soft_prompt import save_soft_prompt
    from trainers.config import load_config

    model = str(tiny_models["mt5"])
    config = load_config(REPO / "configs" / "tiny" / "finetune.yaml", [f"model={model}"])
    run = tmp_path / "run"
    prompt = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 0.5
    save_soft_prompt(run / "soft_prompt", prompt, base_model=model, encoder_decoder=True)
    manifest = {"format": "fmtspec-run/1", "method": "prompt_tuning", "base_model": model, "model": None,
                "prompts": {"fmtspec_rte": "soft_prompt"}, "prompt_type": "soft_prompt", "sentinel": True,
                "encoder_decoder": True, "tasks": [{"name": "fmtspec_rte", "weight": 1.0}],
                "config": json.loads(json.dumps(config))}
    (run / "run.json").write_text(json.dumps(manifest))
    return run


def direct_cosines(run, result):
    """Recompute every cosine with plain transformers + torch.autograd from the recorded batches."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from harness_tasks.examples import render
    from model_adapters.soft_prompt import load_soft_prompt
    from trainers.data import Encoder, collate

    manifest = json.loads((run / "run.json").read_text())
    config = manifest["config"]
    examples = render("fmtspec_rte", "train", limit=config["data"]["limit"])
    tok = AutoTokenizer.from_pretrained(manifest["base_model"])
    enc = Encoder(tok, encoder_decoder=True, sentinel=True, max_input_length=config["max_input_length"],
                  max_target_length=config["max_target_length"])
    layer = "decoder.block.1."  # the tiny mT5 has 2 decoder layers: decoder:-1 is block 1
    names = {"mlp": [layer + f"layer.2.DenseReluDense.{w}.weight" for w in ("wi_0", "wi_1", "wo")],
             "q": [layer + "layer.0.SelfAttention.q.weight"], "k": [layer + "layer.0.SelfAttention.k.weight"],
             "v": [layer + "layer.0.SelfAttention.v.weight"]}
    out = {}
    for step in result["steps"]:
        model = AutoModelForSeq2SeqLM.from_pretrained(manifest["base_model"]).eval()
        params = dict(model.named_parameters())
        prompt = load_soft_prompt(run / "soft_prompt").embeddings if step["step"] == "final" else None
        grads = {kind: {n: torch.zeros_like(params[n]) for ns in names.values() for n in ns}
                 for kind in ("full", "format")}
        for batch in result["plan"]:
            exs = [examples[i] for i in batch["examples"]]
            shuffled = [exs[j].target for j in batch["permutation"]]
            for kind, targets in (("full", [e.target for e in exs]), ("format", shuffled)):
                t = collate([enc.feature(e.context, y, 0) for e, y in zip(exs, targets)], tok.pad_token_id, True)
                embeds = model.get_input_embeddings()(t["input_ids"])
                mask = t["attention_mask"]
                if prompt is not None:
                    embeds = torch.cat([prompt.expand(len(exs), -1, -1), embeds], 1)
                    mask = torch.cat([mask.new_ones(len(exs), prompt.shape[0]), mask], 1)
                loss = model(inputs_embeds=embeds, attention_mask=mask, labels=t["labels"]).loss / len(result["plan"])
                wanted = list(grads[kind])
                for n, g in zip(wanted, torch.autograd.grad(loss, [params[n] for n in wanted])):
                    grads[kind][n] += g
        out[step["step"]] = {
            m: float(F.cosine_similarity(torch.cat([grads["full"][n].flatten() for n in ns]).double(),
                                         torch.cat([grads["format"][n].flatten() for n in ns]).double(), dim=0))
            for m, ns in names.items()}
    return out


def test_alignment_matches_a_direct_autograd_computation(run_dir, tmp_path):
    from fmtspec.diagnose import alignment_for_run, write_alignment

    result = alignment_for_run(run_dir, steps="0,final", layer="decoder:-1", batches=2, batch_size=4, seed=1)
    assert [s["step"] for s in result["steps"]] == ["0", "final"]
    assert result["steps"][0]["prompt"] is None and result["steps"][1]["prompt"].endswith("soft_prompt")
    assert len(result["plan"]) == 2 and all(sorted(b["permutation"]) == [0, 1, 2, 3] for b in result["plan"])
    assert any(b["permutation"] != [0, 1, 2, 3] for b in result["plan"])  # targets really moved
    expected = direct_cosines(run_dir, result)
    for step in result["steps"]:
        for module in ("mlp", "q", "k", "v"):
            assert step["cosine"][module] == pytest.approx(expected[step["step"]][module], abs=1e-5)
    # the prompt changes the gradients: step 0 (no prompt) and final (prompt) differ
    assert result["steps"][0]["cosine"] != result["steps"][1]["cosine"]
    written = write_alignment(result, tmp_path / "out", "run")
    assert json.loads(written[0].read_text())["steps"] == result["steps"]
    assert written[1].read_bytes()[:8] == PNG


def test_layer_modules_of_each_architecture(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from fmtspec.diagnose import layer_modules, module_gradients

    t5 = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["t5"])
    mods = layer_modules(t5, "encoder:0")
    assert [n for n, _, _ in mods["q"]] == ["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert sorted(n for n, _, _ in mods["mlp"]) == ["encoder.block.0.layer.1.DenseReluDense.wi.weight",
                                                   "encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    llama = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    mods = layer_modules(llama, "-1")
    assert [n for n, _, _ in mods["v"]] == ["model.layers.1.self_attn.v_proj.weight"]
    assert len(mods["mlp"]) == 3  # gate, up, down
    # GPT-2 fuses Q, K, V in one Conv1D: each module is a third of its columns
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    mods = layer_modules(gpt2, "decoder:1")
    assert [n for n, _, _ in mods["k"]] == ["transformer.h.1.attn.c_attn.weight"]
    ids = torch.tensor([[5, 6, 7, 8]])
    loss = gpt2(input_ids=ids, labels=ids).loss
    fused = torch.autograd.grad(loss, [gpt2.transformer.h[1].attn.c_attn.weight], retain_graph=True)[0]
    grads = module_gradients(loss, mods)
    assert torch.equal(grads["k"], fused[:, 64:128].reshape(-1))
    # BART (the miniature world): fc1/fc2, and the decoder's self-attention, not its encoder_attn
    from fmtspec.tiny_models import build_tiny_model

    bart = AutoModelForSeq2SeqLM.from_pretrained(build_tiny_model("bart", tmp_path / "bart"))
    mods = layer_modules(bart, "decoder:-1")
    last = f"model.decoder.layers.{bart.config.decoder_layers - 1}"
    assert [n for n, _, _ in mods["q"]] == [f"{last}.self_attn.q_proj.weight"]
    assert sorted(n for n, _, _ in mods["mlp"]) == [f"{last}.fc1.weight", f"{last}.fc2.weight"]
    with pytest.raises(FmtspecError, match="the decoder has layers 0..1"):
        layer_modules(gpt2, "decoder:5")
    with pytest.raises(FmtspecError, match="no single encoder stack"):
        layer_modules(gpt2, "encoder:0")


def test_specialization_table_reads_lm_eval_results(tmp_path):
    from fmtspec.diagnose import specialization_table, write_specialization

    def results(step, trivia_share, trivia_em, rte_acc):
        path = tmp_path / f"results_{step}.json"
        path.write_text(json.dumps({"results": {
            "fmtspec_suite_1shot": {"score,none": 1.0},
            "fmtspec_triviaqa_1shot": {"exact_match,none": trivia_em, "fmt_label_share,none": trivia_share},
            "fmtspec_cb_1shot": {"acc,none": 0.5, "fmt_label_share,none": 1.0},
            "fmtspec_rte": {"acc,none": rte_acc, "fmt_label_share,none": 1.0}},
            "group_subtasks": {"fmtspec_suite_1shot": ["fmtspec_triviaqa_1shot", "fmtspec_cb_1shot"]},
            "config": {"model": "promot_hf"}}))
        return path

    table = specialization_table([(100, results(100, 0.9, 0.0, 0.8)), (0, results(0, 0.0, 0.2, 0.5))])
    first, second = table["steps"]
    assert (first["step"], second["step"]) == (0, 100)
    assert second["tasks"]["fmtspec_triviaqa_1shot"] == {"metric": "exact_match", "score": 0.0,
                                                          "fmt_label_share": 0.9, "unseen": True, "kind": "qa"}
    assert first["unseen_mean"] == pytest.approx((20.0 + 50.0) / 2)  # TriviaQA and CB, not the target
    assert second["label_share_other_formats"] == pytest.approx(0.9)  # CB's labels are its own format
    assert "fmtspec_suite_1shot" not in first["tasks"]
    written = write_specialization(table, tmp_path / "out", "ft")
    assert written[1].read_bytes()[:8] == PNG


def test_cli_errors_are_one_line(run_dir, tmp_path, capsys):
    from fmtspec.cli import main

    assert main(["diagnose", "alignment", str(tmp_path / "nowhere")]) == 1
    assert "is not a fmtspec run folder" in capsys.readouterr().err
    assert main(["diagnose", "alignment", str(run_dir), "--steps", "7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no checkpoint step-7" in err[0]
    assert main(["diagnose", "alignment", str(run_dir), "--task", "fmtspec_cb_1shot"]) == 1
    assert "is not a task of" in capsys.readouterr().err
    assert main(["diagnose", "specialization", str(run_dir)]) == 1
    assert "has no checkpoints" in capsys.readouterr().err


def test_cli_alignment_writes_json_and_plot(run_dir, tmp_path, capsys):
    from fmtspec.cli import main

    out = tmp_path / "diag"
    assert main(["diagnose", "alignment", str(run_dir), "--steps", "final", "--batches", "1",
                 "--batch_size", "4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step final: mlp=" in printed and f"wrote {out / 'alignment.json'}" in printed
    assert (out / "alignment.png").read_bytes()[:8] == PNG
