"""Wall-time overhead of `promot_hf` against stock lm-eval `hf`, measured side by side in one process.

    python bench/eval_overhead.py [--models DIR] [--n 128] [--batch-size 8] [--repeats 7] [--device cpu]

On the tiny T5 and Llama (built into a temporary folder unless --models names one), the same requests
(the RTE-format loglikelihood task and the QA-format generation task of tests/assets/promot_hf) go through
`hf`, `promot_hf prompt=off` and `promot_hf prompt=on`, interleaved, `--repeats` times; the fastest time of
each (the least disturbed by other work on the machine) gives the ratios:

- loglikelihood  promot_hf(off) / hf           goal <= 1.05
- generation     hf / promot_hf(off), seq2seq  a speed-up: stock generates context+max_gen_toks tokens
- both           promot_hf(on) / promot_hf(off)
Model loading is outside the timed part; each model is loaded once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "promot_hf" / "data"
P = 20  # soft prompt length, as in the paper's smaller settings
MAX_GEN_TOKS = 32


def requests(n: int):
    """n loglikelihood requests (2 choices per doc) and n generation requests, in the test tasks' formats."""
    from lm_eval.api.instance import Instance

    nli = [json.loads(line) for line in (ASSETS / "nli.jsonl").read_text().splitlines()]
    qa = [json.loads(line) for line in (ASSETS / "qa.jsonl").read_text().splitlines()]
    loglik, gen = [], []
    for i in range(n):
        shots = i % 5  # 0- to 4-shot contexts, as in the paper's evaluation
        doc = nli[i % len(nli)]
        demos = "".join(f"{d['premise']} question: {d['hypothesis']} Is it true or false? answer: "
                        f"{['True', 'False'][d['label']]}\n\n"
                        for d in (nli[(i + k + 1) % len(nli)] for k in range(shots)))
        context = demos + f"{doc['premise']} question: {doc['hypothesis']} Is it true or false? answer:"
        for choice in (" True", " False"):
            loglik.append(Instance("loglikelihood", doc, (context, choice), len(loglik), ("bench_nli", i, 1)))
        demos = "".join(f"Q: {d['question']} A: {d['answer']}\n\n"
                        for d in (qa[(i + k + 1) % len(qa)] for k in range(shots)))
        # no stop strings and min_new_tokens: every promot_hf variant generates exactly max_gen_toks tokens
        gen_kwargs = {"until": [], "max_gen_toks": MAX_GEN_TOKS, "min_new_tokens": MAX_GEN_TOKS, "do_sample": False}
        gen.append(Instance("generate_until", {}, (demos + f"Q: {qa[i % len(qa)]['question']} A:", gen_kwargs), i,
                            ("bench_qa", i, 1)))
    return loglik, gen


def timed(fn, requests) -> float:
    start = time.perf_counter()
    fn(requests, disable_tqdm=True)
    return time.perf_counter() - start


def bench_model(kind: str, model_dir: Path, prompt_dir: Path, args) -> dict[str, float]:
    from lm_eval.models.huggingface import HFLM

    from model_adapters.promot_hf import PromotHFLM

    common = dict(pretrained=str(model_dir), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    models = {
        "hf": HFLM(**common),
        "off": PromotHFLM(prompt="off", **common),
        "on": PromotHFLM(prompt="on", soft_prompt=str(prompt_dir), **common),
    }
    loglik, gen = requests(args.n)
    times = {f"{name}_{kind_}": [] for name in models for kind_ in ("ll", "gen")}
    for _ in range(args.repeats):  # interleaved, so that drifts in machine load hit every variant alike
        for name, lm in models.items():
            times[f"{name}_ll"].append(timed(lm.loglikelihood, loglik))
            if kind != "llama" or name != "hf":  # stock causal generation is what promot_hf(off) reproduces
                times[f"{name}_gen"].append(timed(lm.generate_until, gen))
    return {key: min(values) for key, values in times.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="folder with t5/ and llama/ tiny models (built when missing)")
    parser.add_argument("--n", type=int, default=128, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    args = parser.parse_args()

    import torch

    from fmtspec.tiny_models import build_tiny_model
    from model_adapters.soft_prompt import save_soft_prompt

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.models or tmp)
        rows = []
        for kind in ("t5", "llama"):
            model_dir = root / kind
            if not (model_dir / "config.json").exists():
                build_tiny_model(kind, model_dir)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_dir)
            width = config.d_model if config.is_encoder_decoder else config.hidden_size
            prompt_dir = save_soft_prompt(Path(tmp) / f"prompt_{kind}", torch.randn(P, width),
                                          base_model=str(model_dir), encoder_decoder=config.is_encoder_decoder)
            t = bench_model(kind, model_dir, prompt_dir, args)
            rows.append((kind, "loglikelihood", "promot_hf(off) / hf", t["off_ll"] / t["hf_ll"], "goal <= 1.05"))
            if "hf_gen" in t:
                rows.append((kind, "generation", "hf / promot_hf(off)", t["hf_gen"] / t["off_gen"],
                             "speed-up (stock overruns max_gen_toks)"))
            rows.append((kind, "loglikelihood", "promot_hf(on) / promot_hf(off)", t["on_ll"] / t["off_ll"], ""))
            rows.append((kind, "generation", "promot_hf(on) / promot_hf(off)", t["on_gen"] / t["off_gen"], ""))
            print(f"{kind}: fastest seconds " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(t.items())), flush=True)
    print(f"\nn={args.n} docs/task, batch_size={args.batch_size}, repeats={args.repeats}, device={args.device}, "
          f"dtype={args.dtype}, prompt length {P}, max_gen_toks {MAX_GEN_TOKS}")
    print(f"| model | requests | ratio | value | note |\n|---|---|---|---|---|")
    for kind, req, name, value, note in rows:
        print(f"| {kind} | {req} | {name} | {value:.3f} | {note} |")


if __name__ == "__main__":
    main()
