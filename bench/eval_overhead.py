"""Wall-time overhead of `promot_hf` against stock lm-eval `hf`, measured side by side in one process.

    python bench/eval_overhead.py [--models DIR] [--n 128] [--batch-size 8] [--repeats 7] [--device cpu]
                                  [--parts overhead,stops]

On the tiny T5 and Llama (built into a temporary folder unless --models names one), the same requests
(the RTE-format loglikelihood task and the QA-format generation task of tests/assets/promot_hf) go through
`hf`, `promot_hf prompt=off` and `promot_hf prompt=on`, interleaved, `--repeats` times; the fastest time of
each (the least disturbed by other work on the machine) gives the ratios:

- loglikelihood  promot_hf(off) / hf           goal <= 1.05
- generation     hf / promot_hf(off), seq2seq  a speed-up: stock generates context+max_gen_toks tokens
- both           promot_hf(on) / promot_hf(off)
Model loading is outside the timed part; each model is loaded once.

`stops` (issue 18): where promot_hf(on)'s generation spends its time at batch 16 (`--stop-batch-size`) with
the QA task's stop strings ["Q:", "\n"], `max_gen_toks` 32, greedy and beam search (`--stop-beams 1,4`;
transformers checks 2 * num_beams candidates per input at each step): tokenizing (`tok_encode`, `tok_batch_encode`),
the stop-string check (`StopStrings.__call__`, host work at every step), the rest of `generate`, and the
rest (decoding, cutting). Side by side: `before`, the check as it was (every row's tail decoded at every
step; `OldStopStrings` below, a copy), and `after`, the check with its `TokenText` filter (only rows whose
last token a stop string can end in are decoded). Both must give the same texts; the ratio is before/after.
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


class OldStopStrings:
    """The stop check before issue 18 (model_adapters/stop_strings.py then): the tail of every row decoded at
    every step. Kept here as the `before` of the `stops` part."""

    def __init__(self, stops, decode, start, token_text=None):  # token_text: the new check's; ignored
        from model_adapters.stop_strings import MARGIN

        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.decode = decode
        self.start = int(start)
        self.tail = max((len(s) for s in self.stops), default=0) + MARGIN

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [False] * input_ids.shape[0]
        if self.stops and input_ids.shape[1] > self.start:
            tail_start = max(self.start, input_ids.shape[1] - self.tail)
            for i, row in enumerate(input_ids[:, tail_start:].tolist()):
                text = self.decode(row)
                done[i] = any(s in text for s in self.stops)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


STOPS = ["Q:", "\n"]  # the QA task's


def stop_requests(n: int, beams: int):
    """n generation requests of the QA format with its stop strings (0- to 4-shot contexts)."""
    from lm_eval.api.instance import Instance

    _, gen = requests(n)
    kwargs = {"until": STOPS, "max_gen_toks": MAX_GEN_TOKS, "do_sample": False, "num_beams": beams}
    return [Instance("generate_until", {}, (r.args[0], dict(kwargs)), r.idx, ("bench_qa", r.idx, 1)) for r in gen]


class Clock:
    """Seconds spent in the wrapped callables, by name (nested calls are not subtracted)."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start
        return timed_call


def bench_stops(kind: str, model_dir: Path, prompt_dir: Path, args, beams: int) -> dict[str, dict[str, float]]:
    """{variant: {part: seconds}} of the fastest of `repeats` interleaved runs of each variant."""
    import model_adapters.promot_hf as promot_hf
    from model_adapters.stop_strings import StopStrings

    lm = promot_hf.PromotHFLM(prompt="on", soft_prompt=str(prompt_dir), pretrained=str(model_dir),
                              device=args.device, dtype=args.dtype, batch_size=args.stop_batch_size)
    gen = stop_requests(args.n, beams)
    variants = {"before": OldStopStrings, "after": StopStrings}
    best: dict[str, dict[str, float]] = {}
    texts = {}
    model_generate, tok_encode, tok_batch_encode = lm.model.generate, lm.tok_encode, lm.tok_batch_encode
    try:
        for _ in range(args.repeats):
            for name, check in variants.items():
                clock = Clock()

                class Check(check):  # the variant, timed
                    __call__ = clock.wrap("stop check", check.__call__)

                promot_hf.StopStrings = Check
                lm.model.generate = clock.wrap("generate", model_generate)
                lm.tok_encode = clock.wrap("tokenize", tok_encode)
                lm.tok_batch_encode = clock.wrap("tokenize", tok_batch_encode)
                start = time.perf_counter()
                texts[name] = lm.generate_until(gen, disable_tqdm=True)
                parts = {"total": time.perf_counter() - start, **clock.spent}
                if name not in best or parts["total"] < best[name]["total"]:
                    best[name] = parts
    finally:
        promot_hf.StopStrings = StopStrings
        lm.model.generate, lm.tok_encode, lm.tok_batch_encode = model_generate, tok_encode, tok_batch_encode
    assert texts["before"] == texts["after"], f"{kind}: the two stop checks gave different texts"
    for parts in best.values():
        parts["generate w/o stop check"] = parts["generate"] - parts.get("stop check", 0.0)
        parts["rest"] = parts["total"] - parts["generate"] - parts.get("tokenize", 0.0)
    return best


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
    parser.add_argument("--parts", default="overhead,stops", help="overhead (promot_hf vs hf), stops, or both")
    parser.add_argument("--stop-batch-size", type=int, default=16, help="batch size of the `stops` part")
    parser.add_argument("--stop-beams", default="1,4", help="num_beams of the `stops` part (comma-separated)")
    args = parser.parse_args()
    parts = {part.strip() for part in args.parts.split(",")}

    import torch

    from fmtspec.tiny_models import build_tiny_model
    from model_adapters.soft_prompt import save_soft_prompt

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.models or tmp)
        rows, stop_rows = [], []
        for kind in ("t5", "llama"):
            model_dir = root / kind
            if not (model_dir / "config.json").exists():
                build_tiny_model(kind, model_dir)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_dir)
            width = config.d_model if config.is_encoder_decoder else config.hidden_size
            prompt_dir = save_soft_prompt(Path(tmp) / f"prompt_{kind}", torch.randn(P, width),
                                          base_model=str(model_dir), encoder_decoder=config.is_encoder_decoder)
            if "stops" in parts:
                for beams in map(int, args.stop_beams.split(",")):
                    stop_rows.append((f"{kind}, beams {beams}", bench_stops(kind, model_dir, prompt_dir, args, beams)))
            if "overhead" not in parts:
                continue
            t = bench_model(kind, model_dir, prompt_dir, args)
            rows.append((kind, "loglikelihood", "promot_hf(off) / hf", t["off_ll"] / t["hf_ll"], "goal <= 1.05"))
            if "hf_gen" in t:
                rows.append((kind, "generation", "hf / promot_hf(off)", t["hf_gen"] / t["off_gen"],
                             "speed-up (stock overruns max_gen_toks)"))
            rows.append((kind, "loglikelihood", "promot_hf(on) / promot_hf(off)", t["on_ll"] / t["off_ll"], ""))
            rows.append((kind, "generation", "promot_hf(on) / promot_hf(off)", t["on_gen"] / t["off_gen"], ""))
            print(f"{kind}: fastest seconds " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(t.items())), flush=True)
    if rows:
        print(f"\nn={args.n} docs/task, batch_size={args.batch_size}, repeats={args.repeats}, device={args.device}, "
              f"dtype={args.dtype}, prompt length {P}, max_gen_toks {MAX_GEN_TOKS}")
        print("| model | requests | ratio | value | note |\n|---|---|---|---|---|")
        for kind, req, name, value, note in rows:
            print(f"| {kind} | {req} | {name} | {value:.3f} | {note} |")
    if stop_rows:
        print(f"\nstops: promot_hf(on) generate_until, n={args.n}, batch_size={args.stop_batch_size}, until={STOPS!r}, "
              f"max_gen_toks {MAX_GEN_TOKS}, fastest of {args.repeats}; seconds (share of total)")
        names = ["total", "tokenize", "generate w/o stop check", "stop check", "rest"]
        print("| model | check | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 2))
        for kind, best in stop_rows:
            for variant, t in best.items():
                cells = [f"{t['total']:.3f}"] + [f"{t.get(n, 0.0):.3f} ({t.get(n, 0.0) / t['total']:.1%})"
                                                  for n in names[1:]]
                print(f"| {kind} | {variant} | " + " | ".join(cells) + " |")
        print("| model | before/after: total | stop check |\n|---|---|---|")
        for kind, best in stop_rows:
            b, a = best["before"], best["after"]
            print(f"| {kind} | {b['total'] / a['total']:.3f} | {b['stop check'] / max(a['stop check'], 1e-9):.1f} |")


if __name__ == "__main__":
    main()
