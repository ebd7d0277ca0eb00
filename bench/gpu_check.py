"""One prepared GPU check (issue 18): `promot_hf` against stock lm-eval `hf` in bf16, generation, scoring and
training throughput, model FLOPs utilisation and peak GPU memory, on random-weight models the size of
T5-v1.1-base, T5-v1.1-large and a 1.1B decoder-only (Llama, TinyLlama's shape) model, built offline from
transformers configs into a temporary folder. One H100/H200, no network, at most 8 minutes:

    python bench/gpu_check.py --output gpu_check          # -> gpu_check/gpu_check.json and gpu_check/gpu_check.md
    python bench/gpu_check.py --dry-run --output DIR      # the same code on fmtspec.tiny_models, CPU, fp32 (a test)

Sections, in this order (each model in turn):
  build        the models: random weights (seed 0) saved in bf16; the tokenizer is fmtspec.tiny_models' BPE,
               padded with unused special tokens to the config's vocabulary (32128, 32000), so that the model
               and `hf`+`peft` (which resizes a model to its tokenizer) score over the same rows
  equivalence  loglikelihoods of the same requests (the RTE-format documents of tests/assets/promot_hf, 0-3
               shot contexts) from promot_hf prompt=off vs `hf`, and promot_hf prompt=on vs `hf` + `peft=`
               (a random PEFT prompt-tuning adapter), within TOLERANCE (bf16) or TOLERANCE_FP32
  scoring      loglikelihood requests/s of each of the four, after a warm-up; promot_hf / hf
  generation   greedy generate_until at batch sizes 1 and 16 (min_new_tokens = max_gen_toks: every request
               generates MAX_GEN_TOKS tokens), promot_hf off and on, and stock `hf` for the decoder-only model
               (stock seq2seq generation overruns max_gen_toks); requests/s, new tokens/s, and whether batch 16
               gives batch 1's text (and `hf`'s)
  training     `fmtspec train` (a finetune config built here: fmtspec_a2t 1-shot, ~290 tokens an example, batch
               32, Adafactor, bf16, a fresh process each) under ZeRO-0, ZeRO-2 and ZeRO-3 on one GPU: tokens/s
               (inputs and targets, no padding) of the second logging window (steps
               TRAIN_STEPS/2+1..TRAIN_STEPS) and MFU = F x tokens/s / peak, F = 6N per token for the decoder-only
               model and 3N for the encoder-decoder ones (a token goes through the encoder or the decoder, about
               half the weights; as bench/train_throughput.py), N = parameters less the input embedding tables
               (this transformers ties T5's output head to its table, whatever the config says: T5 counts it,
               and has 223M / 750M parameters where the hub's untied v1.1 checkpoints have 248M / 783M);
               peak = the GPU's dense bf16 TFLOP/s from PEAK_BF16_TFLOPS (or --peak-tflops), stated in the output
  memory       torch.cuda.max_memory_allocated of every phase above (reset before each)
Time: BUDGET_S in all, timed from the start. A phase starts only when its estimate (the slowest of its kind so
far, times sqrt of the parameter ratio; a default before the first) fits in what is left less RESERVE_S; a training
process is killed at the budget. What does not fit is listed under "skipped" with the reason, not run.
The JSON and the table are rewritten after every phase, so an interrupted run leaves what it measured.
`--dry-run`: fmtspec.tiny_models' t5 and a tiny Llama from this script's builder, CPU, fp32 (--dtype bfloat16
checks the bf16 path on the CPU), a handful of requests and 2 training steps per ZeRO stage in this process
(the first model), the same functions; tests/bench/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

START = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets" / "promot_hf" / "data"
FIXTURES = REPO / "harness_tasks" / "fixtures"

BUDGET_S = 480  # 8 minutes, everything included
RESERVE_S = 25  # kept free at the end: writing the results, a phase that overruns its estimate
DEFAULT_ESTIMATE_S = {"build": 20, "eval": 25, "train": 45}  # a phase's estimate before one of its kind has run
TOLERANCE = {"atol": 0.05, "rtol": 0.01}  # bf16: |promot_hf - reference| <= atol + rtol x |reference| per request
TOLERANCE_FP32 = {"atol": 1e-4, "rtol": 0.0}  # fp32 (the dry run), as tests/model_adapters/test_promot_hf.py
PROMPT_LENGTH = 20
MAX_GEN_TOKS = 32
GEN_BATCH_SIZES = (1, 16)
ZERO_STAGES = ("zero0", "zero2", "zero3")
TRAIN_STEPS = 16  # logged every TRAIN_STEPS/2: the second window is the steady state
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; the first name found in torch.cuda.get_device_name() wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
                    ("A100", 312.0), ("L40S", 362.0))

# name -> (kind, config overrides): the sizes of google/t5-v1_1-base and -large, and TinyLlama-1.1B's shape.
MODELS = {
    "t5_v1_1_base": ("t5", {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
                            "num_decoder_layers": 12, "num_heads": 12}),
    "t5_v1_1_large": ("t5", {"vocab_size": 32128, "d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24,
                             "num_decoder_layers": 24, "num_heads": 16}),
    "llama_1b": ("llama", {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
                           "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
                           "max_position_embeddings": 2048}),
}
# The dry run's: fmtspec.tiny_models' t5 as it is, and a tiny Llama built by this script's own builder (as the
# models above, with a padded tokenizer), so that both ways of building run in the tests.
DRY_MODELS = {"t5_tiny": ("t5", None),
              "llama_tiny": ("llama", {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                       "max_position_embeddings": 2048})}


class Settings:
    """What differs between the real run and the dry run."""

    def __init__(self, dry: bool, dtype: str | None = None):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.dtype = dtype or ("float32" if dry else "bfloat16")
        self.tolerance = TOLERANCE_FP32 if self.dtype == "float32" else TOLERANCE
        self.batch_size = 4 if dry else 16  # loglikelihood
        self.docs = 4 if dry else 64  # loglikelihood documents (2 requests each)
        self.gen_requests = 4 if dry else 16  # at batch 16; batch 1 runs the first gen_bs1 of them
        self.gen_bs1 = 2 if dry else 8
        self.max_gen_toks = 4 if dry else MAX_GEN_TOKS
        self.prompt_length = 4 if dry else PROMPT_LENGTH
        self.repeats = 1 if dry else 2  # timed loglikelihood passes of hf and promot_hf(off), fastest kept
        self.train = ({"steps": 2, "log_every": 1, "batch_size": 2, "max_input_length": 64, "max_target_length": 8}
                      if dry else {"steps": TRAIN_STEPS, "log_every": TRAIN_STEPS // 2, "batch_size": 32,
                                   "max_input_length": 512, "max_target_length": 64})  # a2t 1-shot: ~290 tokens
        self.train_models = 1 if dry else None  # models trained (the first ones); None: all


class Clock:
    """The time budget: a phase starts only when its estimate fits in what is left."""

    def __init__(self, budget_s: float, reserve_s: float, defaults: dict):
        self.budget_s, self.reserve_s, self.defaults = budget_s, reserve_s, defaults
        self.measured: dict[str, list[tuple[float, float]]] = {}

    def elapsed(self) -> float:
        return time.monotonic() - START

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def estimate(self, kind: str, size: float) -> float:
        # much of a phase is fixed cost (a process, imports, loading): sqrt of the size ratio, not the ratio
        scaled = [seconds * max(1.0, size / max(done, 1.0)) ** 0.5 for done, seconds in self.measured.get(kind, [])]
        return max(scaled) if scaled else self.defaults.get(kind, 0.0)

    def fits(self, estimate: float) -> bool:
        return self.left() - self.reserve_s >= estimate

    def took(self, kind: str, size: float, seconds: float) -> None:
        self.measured.setdefault(kind, []).append((size, seconds))


class Report:
    """Everything measured, written as JSON and as markdown tables after every phase."""

    def __init__(self, output: Path, settings: Settings, clock: Clock, strict: bool):
        self.output, self.settings, self.clock, self.strict = output, settings, clock, strict
        self.data = {"mode": "dry-run" if settings.dry else "gpu", "budget_s": clock.budget_s,
                     "reserve_s": clock.reserve_s, "dtype": settings.dtype, "device": None, "peak_tflops": None,
                     "peak_source": None, "tolerance": settings.tolerance, "models": {}, "equivalence": [],
                     "scoring": [], "generation": [], "training": [], "memory": [], "skipped": [], "errors": [],
                     "phases": [], "elapsed_s": 0.0}

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)

    def phase(self, section: str, item: str, kind: str, size: float, fn):
        """Run `fn()` if its estimate fits the budget (else record why not); errors are recorded (re-raised
        with --strict, as in the dry run). Returns fn's value or None."""
        estimate = self.clock.estimate(kind, size)
        if not self.clock.fits(estimate):
            self.add("skipped", {"section": section, "item": item,
                                 "reason": f"time budget: {self.clock.left():.0f} s left of {self.clock.budget_s:.0f}, "
                                           f"needs ~{estimate:.0f} s + {self.clock.reserve_s:.0f} s reserve"})
            self.save()
            return None
        started = time.monotonic()
        try:
            return fn()
        except Exception as exc:  # one failed phase must not cost the others: the device time is scarce
            if self.strict:
                raise
            self.add("errors", {"section": section, "item": item, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc().splitlines()[-12:]})
            return None
        finally:
            seconds = time.monotonic() - started
            self.clock.took(kind, size, seconds)
            self.add("phases", {"section": section, "item": item, "seconds": round(seconds, 2),
                                "at_s": round(self.clock.elapsed(), 1)})
            self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.clock.elapsed(), 1)
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "gpu_check.json").write_text(json.dumps(self.data, indent=2) + "\n")
        (self.output / "gpu_check.md").write_text(markdown(self.data))


# ---- GPU helpers ----------------------------------------------------------------------------------------------


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_peak() -> None:
    import torch

    if cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> int | None:
    import torch

    if not cuda():
        return None
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def release() -> None:
    import torch

    gc.collect()
    if cuda():
        torch.cuda.empty_cache()


def device_peak(given: float | None) -> tuple[float | None, str, str]:
    """(peak bf16 TFLOP/s, where it comes from, the device's name)."""
    import torch

    name = torch.cuda.get_device_name() if cuda() else "cpu"
    if given:
        return given, f"--peak-tflops {given:g}", name
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"{key} dense bf16 peak {tflops:g} TFLOP/s (PEAK_BF16_TFLOPS)", name
    return None, f"unknown for {name}: pass --peak-tflops for MFU", name


# ---- models -------------------------------------------------------------------------------------------------


def parameter_counts(model) -> dict:
    """All parameters, and N: less the input embedding tables (lookups, not matmuls; an untied output head
    stays in)."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = {id(p) for module in model.modules() if type(module).__name__ == "Embedding"
                  for p in module.parameters()}
    head = model.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    n = sum(p.numel() for p in model.parameters() if id(p) not in embeddings or id(p) in head_ids)
    return {"parameters": total, "n": n, "encoder_decoder": bool(model.config.is_encoder_decoder)}


def build_model(kind: str, overrides: dict | None, folder: Path, settings: Settings) -> dict:
    """A random-weight model folder: fmtspec.tiny_models' own (`overrides` None), else of the config's size,
    built on the run's device (the GPU: fast initialisation) and saved in bf16, its tokenizer padded to the
    vocabulary."""
    import torch
    import transformers as tf

    from fmtspec.tiny_models import build_tiny_model, build_tokenizer

    if overrides is None:
        build_tiny_model(kind, folder)
        config = tf.AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            counts = parameter_counts((tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder
                                       else tf.AutoModelForCausalLM).from_config(config))
        return {"kind": kind, **counts, "vocab_size": config.vocab_size}
    tokenizer = build_tokenizer(kind)
    real = len(tokenizer)
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(overrides["vocab_size"] - real)], special_tokens=True)
    ids = dict(pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    if kind == "t5":
        config = tf.T5Config(feed_forward_proj="gated-gelu", decoder_start_token_id=0, dropout_rate=0.0,
                             **ids, **overrides)
        cls = tf.T5ForConditionalGeneration
    else:
        config = tf.LlamaConfig(bos_token_id=3, **ids, **overrides)
        cls = tf.LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(settings.device):
        model = cls(config)
    with torch.no_grad():  # the padding rows: logit 0, next to never the greedy choice (their text is nothing)
        model.get_output_embeddings().weight[real:] = 0.0
    counts = parameter_counts(model)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    release()
    return {"kind": kind, **counts, "vocab_size": config.vocab_size, "tokenizer_tokens": real}


def soft_prompt(folder: Path, model_dir: Path, length: int) -> Path:
    import torch
    from transformers import AutoConfig

    from model_adapters.soft_prompt import save_soft_prompt

    config = AutoConfig.from_pretrained(model_dir)
    width = config.d_model if config.is_encoder_decoder else config.hidden_size
    gen = torch.Generator().manual_seed(1)
    return save_soft_prompt(folder, torch.randn(length, width, generator=gen) * 0.5, base_model=str(model_dir),
                            encoder_decoder=config.is_encoder_decoder)


# ---- scoring and generation -------------------------------------------------------------------------------


def requests(docs: int, gen_requests: int, max_gen_toks: int):
    """`docs` RTE-format documents (0-3 shot contexts) as 2 loglikelihood requests each, and `gen_requests`
    QA-format generation requests that each generate exactly `max_gen_toks` tokens."""
    from lm_eval.api.instance import Instance

    nli = [json.loads(line) for line in (ASSETS / "nli.jsonl").read_text().splitlines()]
    qa = [json.loads(line) for line in (ASSETS / "qa.jsonl").read_text().splitlines()]
    loglik, gen = [], []
    for i in range(docs):
        demos = "".join(f"{d['premise']} question: {d['hypothesis']} Is it true or false? answer: "
                        f"{['True', 'False'][d['label']]}\n\n"
                        for d in (nli[(i + k + 1) % len(nli)] for k in range(i % 4)))
        doc = nli[i % len(nli)]
        context = demos + f"{doc['premise']} question: {doc['hypothesis']} Is it true or false? answer:"
        for choice in (" True", " False"):
            loglik.append(Instance("loglikelihood", doc, (context, choice), len(loglik), ("gpu_check_nli", i, 1)))
    kwargs = {"until": [], "max_gen_toks": max_gen_toks, "min_new_tokens": max_gen_toks, "do_sample": False}
    for i in range(gen_requests):
        demos = "".join(f"Q: {d['question']} A: {d['answer']}\n\n"
                        for d in (qa[(i + k + 1) % len(qa)] for k in range(i % 3)))
        gen.append(Instance("generate_until", {}, (demos + f"Q: {qa[i % len(qa)]['question']} A:", dict(kwargs)), i,
                            ("gpu_check_qa", i, 1)))
    return loglik, gen


def compare(reference: list[float], ours: list[float], tolerance: dict) -> dict:
    diffs = [abs(a - b) for a, b in zip(reference, ours, strict=True)]
    rel = [d / max(abs(a), 1e-12) for d, a in zip(diffs, reference)]
    choices = [(reference[i] >= reference[i + 1]) == (ours[i] >= ours[i + 1]) for i in range(0, len(ours), 2)]
    return {"requests": len(ours), "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
            "max_rel_diff": max(rel), "choice_agreement": sum(choices) / len(choices),
            "within_tolerance": all(d <= tolerance["atol"] + tolerance["rtol"] * abs(a)
                                    for d, a in zip(diffs, reference))}


def timed(fn, *args, repeats: int = 1):
    """(fastest seconds, the last result)."""
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args, disable_tqdm=True)
        if cuda():
            import torch

            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def evaluate_model(name: str, folder: Path, info: dict, settings: Settings, report: Report, work: Path) -> None:
    """Equivalence, scoring and generation of one model: its four variants loaded one at a time."""
    from lm_eval.models.huggingface import HFLM

    from model_adapters.promot_hf import PromotHFLM

    prompt = soft_prompt(work / f"prompt_{name}", folder, settings.prompt_length)
    loglik, gen = requests(settings.docs, settings.gen_requests, settings.max_gen_toks)
    common = dict(pretrained=str(folder), device=settings.device, dtype=settings.dtype, batch_size=settings.batch_size)
    causal = not info["encoder_decoder"]
    variants = [("hf", HFLM, {}), ("promot_hf(off)", PromotHFLM, {"prompt": "off"}),
                ("hf+peft", HFLM, {"peft": str(prompt)}),
                ("promot_hf(on)", PromotHFLM, {"prompt": "on", "soft_prompt": str(prompt)})]
    scores, rates, texts = {}, {}, {}

    def run(label, cls, extra):
        reset_peak()
        start = time.perf_counter()
        lm = cls(**common, **extra)
        load_s = time.perf_counter() - start
        lm.loglikelihood(loglik[:4], disable_tqdm=True)  # warm-up: kernels, allocator
        repeats = settings.repeats if label in ("hf", "promot_hf(off)") else 1
        seconds, out = timed(lm.loglikelihood, loglik, repeats=repeats)
        scores[label], rates[label] = [ll for ll, _ in out], len(loglik) / seconds
        report.add("scoring", {"model": name, "side": label, "requests": len(loglik), "batch_size": settings.batch_size,
                               "seconds": round(seconds, 4), "requests_per_s": round(rates[label], 2),
                               "load_s": round(load_s, 2)})
        if label.startswith("promot_hf") or (label == "hf" and causal):
            for batch in GEN_BATCH_SIZES:
                chunk = gen[:settings.gen_bs1] if batch == 1 else gen
                lm.batch_size_per_gpu = batch
                seconds, out = timed(lm.generate_until, chunk)
                texts[(label, batch)] = out
                report.add("generation", {"model": name, "side": label, "batch_size": batch, "requests": len(chunk),
                                          "max_gen_toks": settings.max_gen_toks, "seconds": round(seconds, 4),
                                          "requests_per_s": round(len(chunk) / seconds, 3),
                                          "new_tokens_per_s": round(len(chunk) * settings.max_gen_toks / seconds, 1)})
            lm.batch_size_per_gpu = settings.batch_size
        report.add("memory", {"model": name, "phase": f"lm_eval {label}", "peak_bytes": peak_memory()})
        del lm
        release()

    for label, cls, extra in variants:
        report.phase("eval", f"{name} {label}", "eval", info["parameters"], lambda: run(label, cls, extra))
    for ours, reference in (("promot_hf(off)", "hf"), ("promot_hf(on)", "hf+peft")):
        if ours in scores and reference in scores:
            report.add("equivalence", {"model": name, "promot_hf": ours, "reference": reference,
                                       "tolerance": settings.tolerance, **compare(scores[reference], scores[ours],
                                                                                  settings.tolerance)})
    for ours, reference in (("promot_hf(off)", "hf"), ("promot_hf(on)", "hf+peft")):
        if ours in rates and reference in rates:
            report.add("scoring", {"model": name, "side": f"{ours} / {reference}",
                                   "ratio": round(rates[ours] / rates[reference], 3)})
    for row in report.data["generation"]:
        if row["model"] != name or row["batch_size"] == 1:
            continue
        bs1 = texts.get((row["side"], 1))
        if bs1 is not None:
            batched = texts[(row["side"], row["batch_size"])]
            row["same_text_as_batch_1"] = sum(a == b for a, b in zip(bs1, batched)) / len(bs1)
        if row["side"] == "promot_hf(off)" and ("hf", row["batch_size"]) in texts:
            mine, stock = texts[(row["side"], row["batch_size"])], texts[("hf", row["batch_size"])]
            row["same_text_as_hf"] = sum(a == b for a, b in zip(mine, stock)) / len(mine)


# ---- training -----------------------------------------------------------------------------------------------


def train_config(model_dir: Path, zero: str, settings: Settings) -> dict:
    t = settings.train
    return {"method": "finetune", "model": str(model_dir), "tasks": ["fmtspec_a2t"], "shots": 1, "seed": 0,
            "batch_size": t["batch_size"], "micro_batch_size": t["batch_size"],
            "max_input_length": t["max_input_length"], "max_target_length": t["max_target_length"],
            "optimizer": "adafactor", "lr_scheduler": "constant", "dropout": 0.0, "label_smoothing": 0.0,
            "model_training": {"steps": t["steps"], "lr": 1e-4, "eval_every": 0},
            "eval": {"limit": 1, "max_new_tokens": 1, "batch_size": 1}, "log_every": t["log_every"],
            "engine": {"deepspeed": zero, "precision": "fp32" if settings.dtype == "float32" else "bf16"}}


def train_worker(config_path: str | Path, out: str | Path) -> dict:
    """`fmtspec train CONFIG --output OUT` in this process; its last logged tokens/s and the peak GPU memory."""
    import torch

    from fmtspec.cli import main

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code = main(["train", str(config_path), "--output", str(out)])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"fmtspec train exited {code}")
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [r for r in rows if "tokens_per_s" in r]
    return {"tokens_per_s": logged[-1]["tokens_per_s"], "loss": logged[-1].get("loss"), "step": logged[-1]["step"],
            "seconds": seconds,
            "peak_bytes": int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None}


def train_model(name: str, folder: Path, info: dict, zero: str, settings: Settings, report: Report, work: Path,
                peak_tflops: float | None) -> None:
    import yaml

    from trainers.config import load_config

    config = train_config(folder, zero, settings)
    load_config(None, raw=config)  # a bad key fails here, not in the subprocess
    path, out = work / f"train_{name}_{zero}.yaml", work / f"run_{name}_{zero}"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        if settings.dry:  # one CPU process: here
            result = train_worker(path, out)
        else:  # a fresh process per stage: its own CUDA memory and DeepSpeed state; killed at the budget
            timeout = max(5.0, report.clock.left() - report.clock.reserve_s / 2)
            result_file = work / f"result_{name}_{zero}.json"
            try:
                proc = subprocess.run([sys.executable, __file__, "--train-worker", str(path), str(out),
                                       str(result_file)], capture_output=True, text=True, timeout=timeout, cwd=REPO)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"killed at the time budget after {timeout:.0f} s") from None
            if proc.returncode != 0 or not result_file.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
                raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail))
            result = json.loads(result_file.read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    per_token = (3 if info["encoder_decoder"] else 6) * info["n"]
    mfu = per_token * result["tokens_per_s"] / (peak_tflops * 1e12) if peak_tflops else None
    t = settings.train
    report.add("training", {"model": name, "zero": zero, "steps": t["steps"],
                            "steps_timed": f"{t['steps'] - t['log_every'] + 1}-{t['steps']}",
                            "batch_size": t["batch_size"],
                            "tokens_per_s": round(result["tokens_per_s"], 1), "flops_per_token": per_token,
                            "mfu": None if mfu is None else round(mfu, 4), "loss": result["loss"],
                            "peak_bytes": result["peak_bytes"], "seconds": round(result["seconds"], 1)})
    report.add("memory", {"model": name, "phase": f"train {zero}", "peak_bytes": result["peak_bytes"]})


# ---- tables -------------------------------------------------------------------------------------------------


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows] + [""]


def markdown(data: dict) -> str:
    tol = data["tolerance"]
    out = [f"# GPU check ({data['mode']})", "",
           f"Device {data['device']}, {data['dtype']}; peak used for MFU: {data['peak_tflops'] or 'n/a'} TFLOP/s "
           f"({data['peak_source']}); {data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget.", "",
           "## Models", ""]
    out += _table(["model", "kind", "parameters", "N (no input embeddings)", "vocabulary"],
                  [[m, v["kind"], f"{v['parameters']:,}", f"{v['n']:,}", v["vocab_size"]]
                   for m, v in data["models"].items()])
    out += ["## promot_hf against stock hf (loglikelihood)", "",
            f"Tolerance per request: |diff| <= {tol['atol']:g} + {tol['rtol']:g} x |reference|.", ""]
    out += _table(["model", "promot_hf", "reference", "requests", "max abs diff", "max rel diff", "same choice",
                   "within"],
                  [[r["model"], r["promot_hf"], r["reference"], r["requests"], f"{r['max_abs_diff']:.3g}",
                    f"{r['max_rel_diff']:.3g}", f"{r['choice_agreement']:.0%}",
                    "yes" if r["within_tolerance"] else "NO"]
                   for r in data["equivalence"]])
    out += ["## Scoring (loglikelihood requests/s)", ""]
    out += _table(["model", "side", "requests", "batch", "requests/s", "ratio"],
                  [[r["model"], r["side"], r.get("requests", ""), r.get("batch_size", ""), r.get("requests_per_s", ""),
                    r.get("ratio", "")] for r in data["scoring"]])
    out += ["## Generation (greedy, every request max_gen_toks new tokens)", ""]
    out += _table(["model", "side", "batch", "requests", "requests/s", "new tokens/s", "text as batch 1", "text as hf"],
                  [[r["model"], r["side"], r["batch_size"], r["requests"], r["requests_per_s"], r["new_tokens_per_s"],
                    "" if "same_text_as_batch_1" not in r else f"{r['same_text_as_batch_1']:.0%}",
                    "" if "same_text_as_hf" not in r else f"{r['same_text_as_hf']:.0%}"] for r in data["generation"]])
    out += ["## Training (`fmtspec train`, one process)", "",
            "MFU = F x tokens/s / peak; F = 6N per token (decoder-only), 3N (encoder-decoder).", ""]
    out += _table(["model", "ZeRO", "steps timed", "batch", "tokens/s", "MFU", "peak GiB", "wall s"],
                  [[r["model"], r["zero"], r["steps_timed"], r["batch_size"], f"{r['tokens_per_s']:,.0f}",
                    "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}", _gib(r["peak_bytes"]), r["seconds"]]
                   for r in data["training"]])
    out += ["## Peak GPU memory (torch.cuda.max_memory_allocated)", ""]
    out += _table(["model", "phase", "GiB"], [[r["model"], r["phase"], _gib(r["peak_bytes"])] for r in data["memory"]])
    if data["skipped"]:
        out += ["## Skipped", ""] + _table(["section", "item", "reason"],
                                           [[r["section"], r["item"], r["reason"]] for r in data["skipped"]])
    if data["errors"]:
        out += ["## Errors", ""] + _table(["section", "item", "error"],
                                          [[r["section"], r["item"], r["error"].replace("|", "/")]
                                           for r in data["errors"]])
    return "\n".join(out)


# ---- main ---------------------------------------------------------------------------------------------------


def check(args) -> dict:
    settings = Settings(args.dry_run, args.dtype)
    clock = Clock(args.budget_s, RESERVE_S if not args.dry_run else 0.0,
                  DEFAULT_ESTIMATE_S if not args.dry_run else {})
    report = Report(Path(args.output), settings, clock, strict=args.dry_run)
    import torch

    if settings.dry:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: no GPU visible (use --dry-run on a CPU)")
    logging_quiet()
    peak, source, name = device_peak(args.peak_tflops)
    report.data.update(device=name, peak_tflops=peak, peak_source=source)
    models = DRY_MODELS if settings.dry else MODELS
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
    sections = set(args.sections.split(","))
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        folders = {}
        for model, (kind, overrides) in models.items():
            size = sum(v for k, v in (overrides or {}).items() if k in ("d_model", "hidden_size")) or 1

            def build(model=model, kind=kind, overrides=overrides):
                started = time.perf_counter()
                info = build_model(kind, overrides, work / model, settings)
                report.data["models"][model] = {**info, "build_s": round(time.perf_counter() - started, 1)}
                folders[model] = work / model

            report.phase("build", model, "build", size, build)
        for model, folder in folders.items():
            if sections & {"equivalence", "scoring", "generation"}:
                evaluate_model(model, folder, report.data["models"][model], settings, report, work)
        if "training" in sections:
            trained = list(folders)[:settings.train_models]
            for model in list(folders)[len(trained):]:
                report.add("skipped", {"section": "training", "item": model,
                                       "reason": "dry run: the first model trains (the same code for every model)"})
            for model in trained:
                info = report.data["models"][model]
                for zero in ZERO_STAGES:
                    report.phase("training", f"{model} {zero}", "train", info["parameters"],
                                 lambda model=model, zero=zero, info=info: train_model(
                                     model, folders[model], info, zero, settings, report, work, peak))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        report.save()
    return report.data


def logging_quiet() -> None:
    import logging
    import warnings

    for name in ("lm_eval", "lm-eval", "transformers", "deepspeed", "accelerate", "model_adapters", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="the tiny models on the CPU in fp32 (what the tests run)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole run's time budget (default 480)")
    parser.add_argument("--peak-tflops", type=float, help="the accelerator's dense bf16 peak for MFU "
                                                          "(default: PEAK_BF16_TFLOPS by device name)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="default: bfloat16 (GPU), float32 (--dry-run); bfloat16 with --dry-run checks that path")
    parser.add_argument("--models", help="a comma-separated subset of the models")
    parser.add_argument("--sections", default="equivalence,scoring,generation,training",
                        help="equivalence, scoring and generation run together per model; training apart")
    parser.add_argument("--train-worker", nargs=3, metavar=("CONFIG", "OUT", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("FMTSPEC_DATA_DIR", str(FIXTURES))):
        os.environ.setdefault(key, value)
    if args.train_worker:  # a training run of the real check, in its own process; the result into a file
        logging_quiet()
        config, out, result = args.train_worker
        Path(result).write_text(json.dumps(train_worker(config, out)))
        return 0
    data = check(args)
    print((Path(args.output) / "gpu_check.md").read_text())
    bad = [r for r in data["equivalence"] if not r["within_tolerance"]]
    return 1 if data["errors"] or bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: fmtspec, trainers, model_adapters
    sys.exit(main())
