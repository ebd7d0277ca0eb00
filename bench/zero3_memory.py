"""Peak host memory per process of loading and training a ~200M-parameter model in 2 CPU processes, under ZeRO-0
and ZeRO-3, side by side in one run (issue 17: under ZeRO-3 no process is to hold the whole model).

    python bench/zero3_memory.py [--steps 3] [--d-model 768] [--layers 12] [--model DIR]
                                 [--plain-zero3] [--deepspeed-sizes] [--malloc-mmap-threshold 1048576]

A random T5 (d_model 768, d_ff 3072, 12 + 12 layers, untied head, the tiny models' 1k-token vocabulary: ~200M
parameters, 0.74 GiB in fp32) is built once and saved with save_pretrained into a temporary folder (in a
subprocess: a child's ru_maxrss starts from its parent's). Then, for each run, two worker processes (gloo, one
thread each) do what `fmtspec train` does: `build_trainer` (the load: trainers.train.load_model; under ZeRO-3
partitioned by trainers.trainer.partitioned_loading) and `Trainer.train_stage` (deepspeed.initialize, then
`--steps` AdamW steps on the fmtspec_rte fixtures, batch 2 = 1 per process, inputs <= 128 tokens, fp32).
Validation and checkpoints are left out (stubbed): they read whole weights, which under ZeRO-3 gathers the whole
model in every process, and are neither the load nor the training step.

Runs: `zero0` and `zero3` (configs/deepspeed/zero{0,3}.json as the trainer builds them: under ZeRO-3 the
partitioned load, trainers.trainer.zero3_sizes, share_fp32_partitions and release_freed_host_memory);
`--plain-zero3` adds ZeRO-3 with the load of before (every process loads the whole model, deepspeed.initialize
partitions it); `--deepspeed-sizes` adds ZeRO-3 with DeepSpeed's own 1e9-element stage3_max_live_parameters,
stage3_max_reuse_distance and sub_group_size (DEEPSPEED_SIZES below) instead of the trainer's P / 10.
`--malloc-mmap-threshold` sets glibc's MALLOC_MMAP_THRESHOLD_ in every worker, ZeRO-0's included (the trainer
sets the same threshold itself under ZeRO-3 on a CPU, where the user has not set it).

Memory is the process's peak resident set size: `ru_maxrss` (getrusage, the kernel's high-water mark, exact),
read after the load and at the end; also psutil's RSS sampled every 10 ms in a thread, as a check (it can miss
a short peak, never exceed one). Mapped checkpoint pages count (RSS includes them). Prints, per run and rank,
the peaks after the imports, after the load and overall, and the ratios to ZeRO-0 of the larger rank's peaks
(goal for zero3: overall <= 0.6).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "harness_tasks" / "fixtures"
CONFIG = REPO / "configs" / "tiny" / "finetune.yaml"
GB = 1024 ** 3


def build_model(folder: Path, d_model: int, layers: int) -> int:
    """A random T5 of about 200M parameters (at the defaults) and its tokenizer in `folder`; its size."""
    import torch
    import transformers as tf

    from fmtspec.tiny_models import build_tokenizer

    tokenizer = build_tokenizer("t5")
    config = tf.T5Config(vocab_size=-(-len(tokenizer) // 128) * 128, d_model=d_model, d_kv=64,
                         d_ff=4 * d_model, num_layers=layers, num_decoder_layers=layers, num_heads=d_model // 64,
                         tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = tf.T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


# -- one worker process -----------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """psutil's RSS of this process every 10 ms; `peak(phase)` the highest while `phase` was current."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.phase, self.peaks, self.stop = psutil.Process(), "imports", {}, False

    def run(self):
        while not self.stop:
            rss = self.proc.memory_info().rss
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(0.01)


def maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker(args) -> None:
    sampler = Sampler()
    sampler.start()
    import torch

    from trainers.config import load_config
    from trainers.methods import Stage
    from trainers.trainer import Evaluation, init_distributed, rank
    from trainers.train import build_trainer

    torch.set_num_threads(1)
    init_distributed()
    out = {"rank": rank(), "after_imports": maxrss()}
    overrides = [f"model={args.model}", f"engine.deepspeed={args.zero}", "optimizer=adamw", "batch_size=2",
                 "micro_batch_size=1", f"model_training.steps={args.steps}", "max_input_length=128",
                 "data.limit=16", "dropout=0"]
    config = load_config(CONFIG, overrides)
    if args.plain_load:  # the load of before: every process loads the whole model
        from contextlib import contextmanager

        import trainers.train as train_module

        @contextmanager
        def plain(config):
            yield None

        train_module.partitioned_loading = plain
    sampler.phase = "load"
    tick = time.perf_counter()
    trainer, _ = build_trainer(config, Path(args.run_dir), args.model)
    out.update(after_load=maxrss(), load_s=time.perf_counter() - tick, start_digest=trainer.start_digest)
    # validation and checkpoints left out: they gather whole weights (see the module docstring)
    trainer.evaluate = lambda: Evaluation(trainer.step, {}, {}, 0.0)
    trainer.save_checkpoint = lambda *a, **k: None
    trainer.choose = lambda *a, **k: None
    sampler.phase = "train"
    tick = time.perf_counter()
    trainer.train_stage(Stage(1, ("model",), args.steps, 1e-4, 0))
    out.update(overall=maxrss(), train_s=time.perf_counter() - tick)
    sampler.stop = True
    sampler.join()
    out["sampled"] = sampler.peaks
    Path(args.out).write_text(json.dumps(out))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # a live gloo group at exit can abort the process


# -- the side-by-side run ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEEPSPEED_SIZES = {key: 1_000_000_000 for key in
                   ("sub_group_size", "stage3_max_live_parameters", "stage3_max_reuse_distance")}


def run_stage(args, name: str, zero: str, plain_load: bool, tmp: Path) -> list[dict]:
    env = {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    run_dir = tmp / f"run-{name}"
    run_dir.mkdir()
    procs = []
    for r in range(2):
        cmd = [sys.executable, __file__, "--worker", "--zero", zero, "--model", str(args.model), "--steps",
               str(args.steps), "--run-dir", str(run_dir), "--out", str(tmp / f"{name}-{r}.json")]
        log = (tmp / f"{name}-{r}.log").open("w")
        procs.append(subprocess.Popen(cmd + (["--plain-load"] if plain_load else []), stdout=log, stderr=log,
                                      env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=REPO))
    for r, proc in enumerate(procs):
        if proc.wait() != 0:
            sys.exit(f"{name} rank {r} failed:\n{(tmp / f'{name}-{r}.log').read_text()[-3000:]}")
    return [json.loads((tmp / f"{name}-{r}.json").read_text()) for r in range(2)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (and as many decoder layers)")
    parser.add_argument("--model", help="a saved model folder to use instead of building the random T5")
    parser.add_argument("--plain-zero3", action="store_true", help="also ZeRO-3 with the load of before")
    parser.add_argument("--deepspeed-sizes", action="store_true",
                        help=f"also ZeRO-3 with DeepSpeed's default sizes: configs/deepspeed/zero3.json + {DEEPSPEED_SIZES}")
    parser.add_argument("--malloc-mmap-threshold", type=int, metavar="BYTES",
                        help="glibc's MALLOC_MMAP_THRESHOLD_ in every worker (e.g. 1048576)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--zero", help=argparse.SUPPRESS)
    parser.add_argument("--plain-load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.build:
        n = build_model(Path(args.build), args.d_model, args.layers)
        print(f"random T5: {n / 1e6:.1f}M parameters ({n * 4 / GB:.2f} GiB in fp32)")
        return 0
    with tempfile.TemporaryDirectory(prefix="zero3-memory-") as tmp:
        tmp = Path(tmp)
        if args.model is None:  # in a subprocess: a child's ru_maxrss starts from its parent's (kept across exec)
            args.model = tmp / "model"
            subprocess.run([sys.executable, __file__, "--build", str(args.model), "--d-model", str(args.d_model),
                            "--layers", str(args.layers)], check=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        runs = [("zero0", "zero0", False), ("zero3", "zero3", False)]
        if args.plain_zero3:
            runs.append(("zero3, plain load", "zero3", True))
        if args.deepspeed_sizes:
            sized = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())
            sized["zero_optimization"].update(DEEPSPEED_SIZES)
            (tmp / "zero3-deepspeed-sizes.json").write_text(json.dumps(sized))
            runs.append(("zero3, DeepSpeed's sizes", str(tmp / "zero3-deepspeed-sizes.json"), False))
        results = {}
        for i, (label, zero, plain) in enumerate(runs):
            results[label] = run_stage(args, f"run{i}", zero, plain, tmp)
    allocator = (f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}" if args.malloc_mmap_threshold
                 else "glibc default")
    print(f"\npeak RSS per process, GiB: ru_maxrss [psutil sampled]; {args.steps} steps; malloc: {allocator}")
    print("| run | rank | after imports | after load | overall | load s | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, ranks in results.items():
        for r in ranks:
            s = r["sampled"]
            print(f"| {label} | {r['rank']} | {r['after_imports'] / GB:.2f} | {r['after_load'] / GB:.2f} "
                  f"[{s.get('load', 0) / GB:.2f}] | {r['overall'] / GB:.2f} [{max(s.values()) / GB:.2f}] | "
                  f"{r['load_s']:.1f} | {r['train_s']:.1f} |")
    digests = {r["start_digest"] for ranks in results.values() for r in ranks}
    print(f"\nstart weights digest equal in every run and process: {len(digests) == 1}")
    base = results["zero0"]
    for label, ranks in list(results.items())[1:]:
        ratios = [max(r[key] for r in ranks) / max(r[key] for r in base) for key in ("after_load", "overall")]
        print(f"{label} / zero0 (larger rank): after load {ratios[0]:.3f}, overall {ratios[1]:.3f}"
              f"{' (goal <= 0.6)' if label == 'zero3' else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
