"""Optimizer-state bytes per parameter at ZeRO stages 0-3, side by side in one run, on 2 CPU processes.

Two processes (gloo, DS_ACCELERATOR=cpu) train the same small T5 (5.2M parameters; every weight matrix but the
32 x 4 relative attention bias is >= 128 x 128, so T5X's rule factors it) for a few steps through
deepspeed.initialize, with each optimizer of `trainers.trainer.make_optimizer` at each ZeRO stage: `adafactor_t5x`
(trainers/optim.py), Hugging Face's `adafactor` and torch's `adamw`. For every run it reports the bytes of the
optimizer's own state (its moments) on each process, divided by the model's parameter count, beside DeepSpeed's
fp32 master copy of the weights, and how far the final weights are from the same optimizer's ZeRO-0 run (max |w - w_zero0| over the largest
weight change of the ZeRO-0 run, and in float32 spacings at each tensor's largest weight): a few spacings is
float summation order, an optimizer that stays the same rule; Hugging Face's Adafactor drifts (its factored
rule turns unfactored on flat partitions).

    python bench/optimizer_state.py [--steps 3]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OPTIMIZERS = ("adafactor_t5x", "adafactor", "adamw")
LR = {"adafactor_t5x": 1e-3, "adafactor": 1e-3, "adamw": 1e-4}


def worker(steps: int, out: Path) -> None:
    import deepspeed
    import torch
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
    from transformers import T5Config, T5ForConditionalGeneration

    from trainers.trainer import make_optimizer
    from trainers.optim import attach

    torch.set_num_threads(1)
    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False  # plain gloo: no C++ build
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    config = T5Config(vocab_size=2048, d_model=256, d_kv=64, d_ff=1024, num_layers=2, num_decoder_layers=2,
                      num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                      decoder_start_token_id=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(1, 2048, (2 * world, 32), generator=gen),
                torch.randint(1, 2048, (2 * world, 8), generator=gen)) for _ in range(steps)]
    rows, reference = [], {}
    for name in OPTIMIZERS:
        for stage in range(4):
            torch.manual_seed(0)
            model = T5ForConditionalGeneration(config)
            initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            n_params = initial.numel()
            optimizer = make_optimizer(list(model.parameters()), {"optimizer": name, "weight_decay": 0.0}, LR[name])
            ds = {"train_batch_size": 2 * world, "train_micro_batch_size_per_gpu": 2,
                  "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
                  "gradient_clipping": 0.0, "steps_per_print": 10**9}
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
            if name == "adafactor_t5x":
                attach(engine.optimizer, optimizer)
            for inputs, labels in batches:
                loss = engine(input_ids=inputs[2 * rank:2 * rank + 2], labels=labels[2 * rank:2 * rank + 2]).loss
                engine.backward(loss)
                engine.step()
            state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                              if torch.is_tensor(t))
            per_rank = [0] * world
            dist.all_gather_object(per_rank, state_bytes)
            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                final = [p.detach().reshape(-1).clone() for p in model.parameters()]
            if stage == 0:
                reference[name] = final
            ref = reference[name]
            drift = float(max((a - b).abs().max() for a, b in zip(final, ref))
                          / (torch.cat(ref) - initial).abs().max())
            ulps = 0.0  # the largest gap in float32 spacings at the largest weight of its tensor
            for a, b in zip(final, ref):
                top = b.abs().max()
                ulps = max(ulps, float((a - b).abs().max() / (torch.nextafter(top, top + 1) - top)))
            master = getattr(engine.optimizer, "single_partition_of_fp32_groups", None) \
                or getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or []
            masters = [0] * world
            dist.all_gather_object(masters, sum(t.numel() * t.element_size() for t in master))
            rows.append({"optimizer": name, "stage": stage, "params": n_params, "bytes": per_rank, "drift": drift,
                         "ulps": ulps, "master": sum(masters),
                         "wrapper": type(engine.optimizer).__name__})
            del engine, optimizer, model
    if rank == 0:
        out.write_text(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.out)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        procs = []
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu",
                   "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
            procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "--steps", str(args.steps),
                                           "--out", str(out)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            sys.exit("a worker failed:\n" + "\n".join(e[-3000:] for e in errors))
        rows = json.loads(out.read_text())
    params = rows[0]["params"]
    print(f"T5 with {params:,} parameters, 2 CPU processes, {args.steps} steps; optimizer state in bytes per "
          "parameter (the model's count), on each process and summed over both")
    print("(fp32 master: DeepSpeed's own fp32 copy of the weights, summed; drift: max |w - w_ZeRO-0| over the "
          "ZeRO-0 run's largest weight change; ulps: the same gap in float32 spacings at its tensor's largest weight)")
    print(f"{'optimizer':<14} {'ZeRO':>4}  {'wrapper':<30} {'rank 0':>8} {'rank 1':>8} {'sum':>8} "
          f"{'fp32 master':>11}  {'drift':>9} {'ulps':>8}")
    for r in rows:
        b = [x / params for x in r["bytes"]]
        print(f"{r['optimizer']:<14} {r['stage']:>4}  {r['wrapper']:<30} {b[0]:>8.4f} {b[1]:>8.4f} {sum(b):>8.4f} "
              f"{r['master'] / params:>11.4f}  {r['drift']:>9.2e} {r['ulps']:>8.1f}")
    t5x = {r["stage"]: sum(r["bytes"]) for r in rows if r["optimizer"] == "adafactor_t5x"}
    adamw = {r["stage"]: sum(r["bytes"]) for r in rows if r["optimizer"] == "adamw"}
    print("adamw / adafactor_t5x state, summed over processes: "
          + ", ".join(f"ZeRO-{s} {adamw[s] / t5x[s]:.0f}x" for s in range(4)))


if __name__ == "__main__":
    main()
