"""bench/gpu_check.py, the prepared GPU check (issue 18), cannot rot: its --dry-run (the tiny models, CPU, fp32,
the same functions as the real run) builds the models, compares promot_hf with stock hf and hf+peft, generates
at batch sizes 1 and 16, times scoring, trains under every ZeRO stage, and writes its JSON and tables; and the
time budget skips with a reason rather than overrunning."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_exercises_every_section(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(out), "--peak-tflops", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["mode"] == "dry-run" and data["errors"] == [] and data["dtype"] == "float32"
    assert data["peak_tflops"] == 1 and "--peak-tflops" in data["peak_source"]
    models = data["models"]
    assert set(models) == {"t5_tiny", "llama_tiny"} and models["llama_tiny"]["vocab_size"] == 1024  # padded
    assert models["t5_tiny"]["encoder_decoder"] and not models["llama_tiny"]["encoder_decoder"]
    # promot_hf off == hf, on == hf + peft, within fp32's tolerance, for both architectures
    pairs = {(r["model"], r["promot_hf"], r["reference"]) for r in data["equivalence"]}
    assert pairs == {(m, "promot_hf(off)", "hf") for m in models} | {(m, "promot_hf(on)", "hf+peft") for m in models}
    assert all(r["within_tolerance"] and r["choice_agreement"] == 1.0 for r in data["equivalence"])
    sides = {(r["model"], r["side"]) for r in data["scoring"] if "requests_per_s" in r}
    assert sides == {(m, s) for m in models for s in ("hf", "promot_hf(off)", "hf+peft", "promot_hf(on)")}
    assert {r["side"] for r in data["scoring"] if "ratio" in r} == {"promot_hf(off) / hf", "promot_hf(on) / hf+peft"}
    gen = {(r["model"], r["side"], r["batch_size"]): r for r in data["generation"]}
    for model in models:
        for side in ("promot_hf(off)", "promot_hf(on)"):
            assert gen[(model, side, 1)]["new_tokens_per_s"] > 0
            assert gen[(model, side, 16)]["same_text_as_batch_1"] == 1.0  # fp32: the same text at any batch size
    assert ("t5_tiny", "hf", 16) not in gen and gen[("llama_tiny", "promot_hf(off)", 16)]["same_text_as_hf"] == 1.0
    # a training run per ZeRO stage (or a recorded reason why not), with tokens/s and MFU
    trained = {r["zero"]: r for r in data["training"]}
    assert "zero0" in trained
    for zero in ("zero0", "zero2", "zero3"):
        if zero in trained:
            assert trained[zero]["tokens_per_s"] > 0 and trained[zero]["mfu"] > 0 and trained[zero]["steps"] == 2
        else:
            assert any(s["item"].endswith(zero) and s["reason"] for s in data["skipped"])
    phases = {r["phase"] for r in data["memory"]}
    assert {"lm_eval hf", "lm_eval promot_hf(on)", "train zero0"} <= phases
    table = (out / "gpu_check.md").read_text()
    for heading in ("## Models", "## promot_hf against stock hf", "## Scoring", "## Generation", "## Training",
                    "## Peak GPU memory"):
        assert heading in table
    assert "| t5_tiny | zero0 |" in table


def test_the_budget_skips_with_a_reason(tmp_path):
    module = gpu_check()
    clock = module.Clock(budget_s=1e9, reserve_s=0, defaults={"train": 10})
    report = module.Report(tmp_path, module.Settings(True), clock, strict=True)
    assert report.phase("training", "a zero0", "train", 100, lambda: "ran") == "ran"
    clock.measured["train"] = [(100, 50.0)]
    assert clock.estimate("train", 400) == pytest.approx(100.0)  # sqrt of 4x the parameters
    clock.budget_s = clock.elapsed() + 60  # 60 s left: a phase of ~100 s does not start
    assert report.phase("training", "b zero0", "train", 400, lambda: pytest.fail("must not run")) is None
    (skipped,) = report.data["skipped"]
    assert skipped["item"] == "b zero0" and "time budget" in skipped["reason"] and "needs ~100 s" in skipped["reason"]
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["skipped"] == [skipped] and "## Skipped" in (tmp_path / "gpu_check.md").read_text()


def test_errors_are_recorded_unless_strict(tmp_path):
    module = gpu_check()
    report = module.Report(tmp_path, module.Settings(False), module.Clock(1e9, 0, {}), strict=False)

    def boom():
        raise RuntimeError("CUDA out of memory")

    assert report.phase("eval", "x hf", "eval", 1, boom) is None
    assert report.data["errors"][0]["error"] == "RuntimeError: CUDA out of memory"
    assert report.data["dtype"] == "bfloat16" and report.data["tolerance"] == module.TOLERANCE
    assert module.markdown(report.data).count("CUDA out of memory") == 1


def test_peak_flops_by_device_name():
    module = gpu_check()
    names = dict(module.PEAK_BF16_TFLOPS)
    assert names["H100"] == names["H200"] == 989.4 and names["H100 PCIe"] == 756.0
    first = lambda device: next(t for key, t in module.PEAK_BF16_TFLOPS if key in device)  # noqa: E731
    assert first("NVIDIA H100 PCIe") == 756.0 and first("NVIDIA H100 80GB HBM3") == 989.4
    assert first("NVIDIA H200") == 989.4
