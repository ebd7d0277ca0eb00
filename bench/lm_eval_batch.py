"""Scoring N checkpoints: N stock `lm_eval` processes against one `python -m fmtspec.lm_eval_batch` process
running the same N command lines, side by side in one run (what `fmtspec experiment` and the demo use).

Builds the tiny offline models, points the tasks at the bundled fixtures, then times both ways on the same
jobs, alternating, and prints the wall times and their ratio.

    python bench/lm_eval_batch.py [--jobs 6] [--repeats 2] [--tasks fmtspec_rte,fmtspec_cb_1shot]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fmtspec.tiny_models import build_all  # noqa: E402


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="checkpoints to score (the tiny models, cycled)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", default="fmtspec_rte,fmtspec_cb_1shot")
    args = parser.parse_args()
    env = {**os.environ, "FMTSPEC_DATA_DIR": str(REPO / "harness_tasks" / "fixtures"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    lm_eval = str(Path(sys.executable).parent / "lm_eval")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = list(build_all(tmp / "models").values())

        def argv(i: int, way: str, repeat: int) -> list[str]:
            return ["--model", "promot_hf", "--model_args", f"pretrained={models[i % len(models)]}", "--tasks",
                    args.tasks, "--limit", "4", "--batch_size", "4", "--gen_kwargs", "max_gen_toks=8",
                    "--output_path", str(tmp / way / str(repeat) / str(i))]

        times = {"processes": [], "batch": []}
        for repeat in range(args.repeats):
            start = time.perf_counter()
            for i in range(args.jobs):
                subprocess.run([lm_eval, *argv(i, "processes", repeat)], check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times["processes"].append(time.perf_counter() - start)
            jobs = tmp / f"jobs{repeat}.json"
            jobs.write_text(json.dumps([argv(i, "batch", repeat) for i in range(args.jobs)]))
            times["batch"].append(timed([sys.executable, "-m", "fmtspec.lm_eval_batch", str(jobs)], env))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.jobs} lm_eval command lines ({args.tasks}, --limit 4), median of {args.repeats}")
    print(f"  one lm_eval process each:        {med['processes']:.1f} s")
    print(f"  one fmtspec.lm_eval_batch process: {med['batch']:.1f} s")
    print(f"  ratio processes/batch: {med['processes'] / med['batch']:.2f}")


if __name__ == "__main__":
    main()
