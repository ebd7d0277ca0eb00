"""Writes a real lm-eval results file: stock lm-eval 0.4.x, its `dummy` model, the tiny tasks in
lm_eval_tasks/ (inline data, no download). `real_results/` holds a trimmed copy made by this script;
run it again after an lm-eval upgrade:  python tests/assets/leaderboards/make_real_results.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ["fmtspec_suite_1shot", "fmtspec_rte"]


def write_results(output_path: Path) -> Path:
    """Evaluate the dummy model as `lm_eval --model dummy --output_path OUTPUT_PATH` would; return the file."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(output_path))
    results = simple_evaluate(
        model="dummy",
        model_args="pretrained=dummy-model",
        tasks=TASKS,
        task_manager=TaskManager(include_defaults=False, include_path=str(HERE / "lm_eval_tasks")),
        bootstrap_iters=10,
        log_samples=False,
        evaluation_tracker=tracker,
        random_seed=0,
    )
    tracker.general_config_tracker.log_experiment_args(
        model_source="dummy", model_args="pretrained=dummy-model", system_instruction=None,
        chat_template=None, fewshot_as_multiturn=False)
    tracker.save_results_aggregated(results=results, samples=None)
    (written,) = sorted(Path(output_path).glob("*/results_*.json"))
    return written


def trim(results: dict) -> dict:
    """Drop the machine-specific bulk (environment dump), keep every key and the structure."""
    results = dict(results)
    results["pretty_env_info"] = "(trimmed)"
    for key in ("git_hash", "upper_git_hash"):
        results[key] = None
    return results


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        written = write_results(Path(tmp))
        target = HERE / "real_results" / written.parent.name / written.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(trim(json.loads(written.read_text())), indent=2) + "\n")
        sys.stdout.write(f"wrote {target}\n")
