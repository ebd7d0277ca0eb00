"""Training throughput of `fmtspec train` against Hugging Face `Seq2SeqTrainer` (and PEFT prompt tuning for
`prompt_tuning`), side by side in one process tree.

    python bench/train_throughput.py [--models DIR] [--methods finetune,prompt_tuning] [--steps 40] [--skip 4]
                                     [--batch-size 8] [--repeats 2] [--optimizer adafactor]
    # on a GPU, a real model in bf16 under ZeRO-2, with model FLOPs utilisation:
    python bench/train_throughput.py --model google/t5-v1_1-base --data-limit 256 --batch-size 32 \
        --max-input-length 512 --deepspeed zero2 --precision bf16 --steps 60 --repeats 1 --peak-tflops 989

Both sides train the same model on the same tokenized examples (the fmtspec_rte fixtures, rendered and
tokenized by fmtspec's own data code) with the same batch size, optimizer, learning rate, constant schedule,
label smoothing and dropout, each in a fresh subprocess (`fmtspec train` is the real CLI). Each side times
every step (data, forward, backward, optimizer): fmtspec logs tokens/s per step (log_every=1) and the bench
replays the step's token count from the same seeded sampler; HF's side is a callback timing one step end to
the next. The first `--skip` steps (warm-up) are left out; the fastest of `--repeats` interleaved runs is
kept. tokens/s = steps/s x mean tokens per batch (input + target tokens, no padding).
Prints steps/s, tokens/s and ratio = fmtspec / HF (goal >= 1.0), and MFU when --peak-tflops is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK = "fmtspec_rte"
CONFIGS = {"finetune": REPO / "configs" / "tiny" / "finetune.yaml",
           "prompt_tuning": REPO / "configs" / "tiny" / "prompt_tuning.yaml"}
LR = {"finetune": 1e-3, "prompt_tuning": 0.3}


def fmtspec_overrides(args, method: str, steps: int) -> list[str]:
    section = "prompt_training" if method == "prompt_tuning" else "model_training"
    return [f"model={args.model}", f"batch_size={args.batch_size}", f"micro_batch_size={args.batch_size}",
            f"{section}.steps={steps}", f"{section}.eval_every=0", f"{section}.lr={LR[method]}",
            f"optimizer={args.optimizer}", "lr_scheduler=constant", "weight_decay=0", "warmup_steps=0",
            f"data.limit={args.data_limit}", f"max_input_length={args.max_input_length}",
            f"max_target_length={args.max_target_length}", f"prompt.length={args.prompt_length}",
            "eval.limit=1", "eval.max_new_tokens=1", "log_every=1", f"engine.deepspeed={args.deepspeed}",
            f"engine.precision={args.precision}"]


def load_config(args, method: str, steps: int) -> dict:
    from trainers.config import load_config as load

    return load(CONFIGS[method], fmtspec_overrides(args, method, steps))


def features(config: dict):
    """The training examples exactly as `fmtspec train` tokenizes them."""
    from trainers.data import Encoder, render_examples, uses_sentinel
    from trainers.models import load_model

    model, tokenizer, enc_dec = load_model(config["model"], config["dropout"])
    encoder = Encoder(tokenizer, encoder_decoder=enc_dec,
                      sentinel=uses_sentinel(config["sentinel"], tokenizer, enc_dec),
                      max_input_length=config["max_input_length"], max_target_length=config["max_target_length"])
    examples = render_examples(TASK, "train", limit=config["data"]["limit"])
    return model, tokenizer, [encoder.feature(e.context, e.target, 0) for e in examples]


def smoothed_loss(label_smoothing: float):
    """Token cross-entropy with label smoothing, as fmtspec computes it. (Seq2SeqTrainer's own
    `label_smoothing_factor` fails on a PEFT prompt-tuning model: it looks for `base_model.model`.)"""
    import torch.nn.functional as F

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               label_smoothing=label_smoothing)

    return loss


def hf_worker(args, method: str) -> None:
    """Train with Seq2SeqTrainer (+ PEFT prompt tuning) in this process, print each step's seconds."""
    steps = args.steps
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    config = load_config(args, method, steps)
    torch.manual_seed(0)
    model, tokenizer, feats = features(config)
    # decoder inputs made by the collator from the labels (PEFT's prompt-tuning forward passes none on)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    if method == "prompt_tuning":
        from peft import PromptTuningConfig, TaskType, get_peft_model

        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM,
                                                         num_virtual_tokens=args.prompt_length))
    rows = [{"input_ids": f.input_ids, "attention_mask": [1] * len(f.input_ids), "labels": f.labels} for f in feats]
    bf16 = config["engine"]["precision"] == "bf16" or (config["engine"]["precision"] == "auto"
                                                       and torch.cuda.is_available())
    class StepClock(TrainerCallback):
        """Seconds from one step's end to the next's: data loading, forward, backward, optimizer, as fmtspec's."""
        seconds: list = []
        last = 0.0

        def on_step_end(self, *_, **__):
            now = time.perf_counter()
            self.seconds.append(now - self.last)
            self.last = now

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        training = Seq2SeqTrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=steps,
            learning_rate=LR[method], optim="adafactor" if args.optimizer == "adafactor" else "adamw_torch",
            lr_scheduler_type="constant", weight_decay=0.0, warmup_steps=0, max_grad_norm=0.0,
            logging_steps=1, save_strategy="no",
            report_to=[], disable_tqdm=True, seed=0, bf16=bf16, dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available())
        trainer = Seq2SeqTrainer(model=model, args=training, train_dataset=rows, data_collator=collator,
                                 compute_loss_func=smoothed_loss(config["label_smoothing"]),
                                 callbacks=[clock])
        clock.last = time.perf_counter()
        trainer.train()
    print(json.dumps({"step_seconds": clock.seconds}))


def step_seconds_fmtspec(args, method: str, feats) -> list[float]:
    """Run `fmtspec train` (the CLI, a fresh process) and read each step's duration back from metrics.jsonl:
    it logs tokens/s of every step (log_every=1); the step's token count is replayed from the same seeded
    sampler over the same features."""
    from trainers.data import MixtureSampler

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fmtspec", "train", str(CONFIGS[method]), "--output", f"{tmp}/run"]
        cmd += [a for o in fmtspec_overrides(args, method, args.steps) for a in ("--set", o)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode:
            sys.exit(f"fmtspec train failed:\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    rate = {r["step"]: r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    sampler = MixtureSampler([len(feats)], [1.0], 0)
    seconds = []
    for step in range(1, args.steps + 1):
        drawn = [feats[sampler.next()[1]] for _ in range(args.batch_size)]
        tokens = sum(len(f.input_ids) + sum(t != -100 for t in f.labels) for f in drawn)
        seconds.append(tokens / rate[step])
    return seconds


def step_seconds_hf(args, method: str) -> list[float]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--worker", method, *args.passthrough]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        sys.exit(f"HF {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["step_seconds"]


def model_flops_per_token(model) -> float:
    """Training FLOPs per token: 6 N for decoder-only; an encoder-decoder token passes through about half the
    weights (encoder for inputs, decoder for targets): 3 N. Embedding lookups are not matmuls: left out."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "shared" not in name)
    return (3 if model.config.is_encoder_decoder else 6) * n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="folder from `fmtspec tiny-models` (default: built in a temporary folder)")
    parser.add_argument("--model", help="a model folder or hub id instead of the tiny mt5")
    parser.add_argument("--methods", default="finetune,prompt_tuning")
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run")
    parser.add_argument("--skip", type=int, default=4, help="first steps left out of the timing (warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-limit", type=int, default=32)
    parser.add_argument("--max-input-length", type=int, default=128)
    parser.add_argument("--max-target-length", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"])
    parser.add_argument("--deepspeed", default="zero0")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="accelerator peak (H100 bf16 dense: 989) for MFU")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("FMTSPEC_DATA_DIR", str(REPO / "harness_tasks" / "fixtures"))

    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            from fmtspec.tiny_models import build_all

            args.model = str(Path(args.models or tmp) / "mt5")
            if not Path(args.model).is_dir():
                build_all(tmp)
                args.model = str(Path(tmp) / "mt5")
        args.passthrough = [a for k, v in vars(args).items() if k not in ("worker", "models", "methods", "repeats",
                                                                          "peak_tflops", "passthrough")
                            for a in (f"--{k.replace('_', '-')}", str(v))]
        if args.worker:
            hf_worker(args, args.worker)
            return 0
        return compare(args)


def compare(args) -> int:
    if args.skip >= args.steps:
        sys.exit(f"--skip {args.skip} leaves no step of --steps {args.steps} to time")
    print(f"model {args.model}, batch {args.batch_size}, {args.optimizer}, {args.deepspeed}, precision "
          f"{args.precision}, steps {args.skip + 1}-{args.steps} timed, best of {args.repeats} runs")
    print(f"| method | side | steps/s | tokens/s |{' MFU |' if args.peak_tflops else ''}")
    print(f"| --- | --- | --- | --- |{' --- |' if args.peak_tflops else ''}")
    ratios = {}
    for method in args.methods.split(","):
        config = load_config(args, method, args.steps)
        model, _, feats = features(config)
        tokens_per_step = args.batch_size * sum(len(f.input_ids) + len(f.labels) for f in feats) / len(feats)
        flops_per_token = model_flops_per_token(model)
        del model
        best = {"fmtspec": float("inf"), "hf": float("inf")}
        for _ in range(args.repeats):  # interleaved: a slow phase of the machine hits both sides
            best["fmtspec"] = min(best["fmtspec"], sum(step_seconds_fmtspec(args, method, feats)[args.skip:]))
            best["hf"] = min(best["hf"], sum(step_seconds_hf(args, method)[args.skip:]))
        rate = {}
        for side, seconds in best.items():
            rate[side] = (args.steps - args.skip) / seconds
            tokens = rate[side] * tokens_per_step
            mfu = f" {tokens * flops_per_token / (args.peak_tflops * 1e12):.1%} |" if args.peak_tflops else ""
            label = side if side == "fmtspec" else ("HF Seq2SeqTrainer + PEFT" if method == "prompt_tuning"
                                                    else "HF Seq2SeqTrainer")
            print(f"| {method} | {label} | {rate[side]:.2f} | {tokens:,.0f} |{mfu}", flush=True)
        ratios[method] = rate["fmtspec"] / rate["hf"]
    for method, ratio in ratios.items():
        print(f"{method}: fmtspec / HF steps per second = {ratio:.3f} (goal >= 1.0)")
    print(json.dumps({"ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
