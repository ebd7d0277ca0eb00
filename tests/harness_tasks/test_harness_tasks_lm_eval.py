"""The fmtspec task YAMLs inside lm-eval: they agree with catalog.py, build exactly the prompts
`examples.render` gives, and a real `lm_eval` run on a tiny T5 reports every metric, with the numbers
`examples.score` computes from its logged generations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness_tasks import catalog
from harness_tasks.data import DATA
from harness_tasks.examples import render, score
from harness_tasks.metrics import aggregations

TASKS_DIR = Path(__file__).resolve().parents[2] / "harness_tasks"


@pytest.fixture(scope="module")
def lm_eval_tasks():
    """name -> lm-eval Task object for every fmtspec task, built from the YAMLs on the fixture data."""
    from lm_eval.tasks import TaskManager

    old = os.environ.get("FMTSPEC_DATA_DIR")
    os.environ["FMTSPEC_DATA_DIR"] = str(TASKS_DIR / "fixtures")
    try:
        manager = TaskManager(include_defaults=False, include_path=str(TASKS_DIR))
        loaded = manager.load(catalog.ALL_TASKS)
    finally:
        os.environ.pop("FMTSPEC_DATA_DIR") if old is None else os.environ.__setitem__("FMTSPEC_DATA_DIR", old)
    return manager, {name: task for name, task in loaded["tasks"].items()}


def test_task_and_group_names_match_the_catalog(lm_eval_tasks, offline_data):
    manager, tasks = lm_eval_tasks
    fmtspec_names = {n for n in manager.all_tasks if n.startswith("fmtspec")}
    assert fmtspec_names == set(catalog.ALL_TASKS) | set(catalog.GROUPS)
    assert set(tasks) == set(catalog.ALL_TASKS)
    for group in catalog.GROUPS:
        loaded = manager.load([group])
        leaves = {t.task_name for g in loaded["groups"].values() for t in g.get_all_tasks()}
        assert leaves == set(catalog.GROUPS[group]), group


def test_task_configs_agree_with_the_data_and_metric_tables(lm_eval_tasks):
    _, tasks = lm_eval_tasks
    for name, task in tasks.items():
        info, shots = catalog.parse_task_name(name)
        cfg, spec = task.config, DATA[info.key]
        assert cfg.num_fewshot == (shots or (1 if name in catalog.GROUPS["fmtspec_mini"] else 0))
        assert (cfg.test_split or cfg.validation_split) == spec.eval_split
        assert cfg.fewshot_split == spec.fewshot_split
        if spec.path != "csv":
            assert (cfg.dataset_path, cfg.dataset_name) == (spec.path, spec.name)
        assert [m["metric"] for m in cfg.metric_list] == list(aggregations(info.key))
        assert cfg.generation_kwargs["do_sample"] is False and "num_beams" not in cfg.generation_kwargs


@pytest.mark.parametrize("name", catalog.ALL_TASKS)
def test_render_equals_lm_eval_prompts(lm_eval_tasks, offline_data, name):
    _, tasks = lm_eval_tasks
    task = tasks[name]
    docs = list(task.eval_docs)[:3]
    for shots in (0, 1, 4):
        task.set_fewshot_seed(1234)
        expected = [task.fewshot_context(doc, shots) for doc in docs]
        info, _ = catalog.parse_task_name(name)
        got = render(name, DATA[info.key].eval_split, shots=shots, limit=3)
        assert [e.context for e in got] == expected
        assert [e.target for e in got] == [task.doc_to_target(d) for d in docs]


@pytest.mark.parametrize("name", ["fmtspec_xsum_1shot", "fmtspec_wikilingua_en_4shot"])
def test_render_equals_lm_eval_prompts_for_a_model(tiny_models, offline_data, name):
    """With the model known (lm-eval hands --model_args to the tasks as metadata), lm-eval and `render` cut
    the articles to the same 1,024 tokens of its tokenizer."""
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    manager = TaskManager(include_defaults=False, include_path=str(TASKS_DIR),
                          metadata={"pretrained": str(tiny_models["llama"])})
    task = manager.load([name])["tasks"][name]
    docs = list(task.eval_docs)
    task.set_fewshot_seed(1234)
    info, shots = catalog.parse_task_name(name)
    split = DATA[info.key].eval_split
    got = render(name, split, shots=shots, tokenizer=AutoTokenizer.from_pretrained(tiny_models["llama"]))
    assert [e.context for e in got] == [task.fewshot_context(doc, shots) for doc in docs]
    if info.key == "xsum":  # its fixture has an article longer than 1,024 tokens (and words)
        assert [e.context for e in render(name, split, shots=shots)] != [e.context for e in got]


@pytest.mark.slow
def test_lm_eval_run_reports_every_metric(tiny_models, offline_data, tmp_path):
    out = tmp_path / "out"
    # max_length=5: lm-eval's hf seq2seq lets the decoder run to len(context) + max_gen_toks tokens, and a
    # random model never says EOS; capping the decoder keeps this run to seconds.
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
           f"pretrained={tiny_models['t5']},backend=seq2seq",
           "--tasks", "fmtspec_suite,fmtspec_targets,fmtspec_teach_twice,fmtspec_mini,fmtspec_mini_target",
           "--limit", "2",
           "--gen_kwargs", "max_gen_toks=4,max_length=5", "--batch_size", "16", "--log_samples", "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]

    for name in catalog.ALL_TASKS:
        info, _ = catalog.parse_task_name(name)
        reported = {k.split(",")[0] for k in results[name] if k.endswith(",none") and "_stderr" not in k}
        assert reported == set(aggregations(info.key)), name
        # examples.score on lm-eval's raw generations gives lm-eval's own numbers
        samples = [json.loads(line) for line in next(out.rglob(f"samples_{name}_*.jsonl")).read_text().splitlines()]
        assert len(samples) == 2
        ours = score(name, [s["resps"][0][0] for s in samples], [s["doc"] for s in samples])
        for metric, value in ours.items():
            assert results[name][f"{metric},none"] == pytest.approx(value, abs=1e-9), (name, metric)

    for group, members in catalog.GROUPS.items():
        expected = sum(results[t]["norm_avg,none"] for t in members) / len(members)
        assert results[group]["norm_avg,none"] == pytest.approx(expected)
        assert results[group]["score,none"] == pytest.approx(expected)
