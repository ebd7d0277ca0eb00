"""The miniature world's lm-eval tasks (harness_tasks/mini/): names and group, every template rendered
through lm-eval on generated data, metrics equal to the suite's QA metrics, and whole runs (a model that
answers right, and promot_hf on the random miniature BART)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402

from harness_tasks import metrics  # noqa: E402
from harness_tasks import mini_world as mw  # noqa: E402

MINI_DIR = Path(__file__).resolve().parents[2] / "harness_tasks" / "mini"
SIZES = {"train": 60, "validation": 10, "test": 10}
PRETRAIN = [mw.task_name(t) for t in mw.PRETRAIN_TASKS]
TARGET = mw.task_name(mw.TARGET_TASK)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = mw.write_world(tmp_path_factory.mktemp("mini_world"), seed=0, sizes=SIZES)
    old = os.environ.get("FMTSPEC_DATA_DIR")
    os.environ["FMTSPEC_DATA_DIR"] = str(folder)  # module-wide: lm-eval reads it when it loads a task
    yield folder
    os.environ.pop("FMTSPEC_DATA_DIR") if old is None else os.environ.__setitem__("FMTSPEC_DATA_DIR", old)


@pytest.fixture(scope="module")
def manager(data_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=str(MINI_DIR))


@pytest.fixture(scope="module")
def tasks(manager):
    return manager.load(PRETRAIN + [TARGET])["tasks"]


def test_task_and_group_names(manager):
    assert {n for n in manager.all_tasks if n.startswith("fmtspec")} == set(PRETRAIN) | {TARGET, "fmtspec_mini"}
    loaded = manager.load(["fmtspec_mini"])
    leaves = [t.task_name for g in loaded["groups"].values() for t in g.get_all_tasks()]
    assert sorted(leaves) == sorted(PRETRAIN)  # all but the target


@pytest.mark.parametrize("task", mw.TASKS)
def test_every_task_renders_its_template_through_lm_eval(tasks, task):
    lm_task, template = tasks[mw.task_name(task)], mw.TEMPLATES[task]
    shots = 0 if task == mw.TARGET_TASK else 1
    assert lm_task.config.num_fewshot == shots
    assert (lm_task.config.test_split, lm_task.config.fewshot_split) == (mw.EVAL_SPLIT, mw.FEWSHOT_SPLIT)
    test, train = mw.load_split(task, "test"), mw.load_split(task, "train")
    docs = list(lm_task.eval_docs)
    assert docs == test  # the test split, records unchanged
    demos = {template.doc_to_text(d) + " " + mw.doc_to_target(d) + "\n\n" for d in train}
    lm_task.set_fewshot_seed(1234)
    for doc in docs[:4]:
        context, query = lm_task.fewshot_context(doc, shots), template.doc_to_text(doc)
        assert context.endswith(query) and query.endswith("summary :" if task == "summarize" else "answer :")
        assert (context[: -len(query)] in demos) if shots else context == query
        assert lm_task.doc_to_target(doc) == doc["answers"][0]


def test_metrics_through_lm_eval(tasks):
    copy = tasks["fmtspec_mini_copy"]
    doc = list(copy.eval_docs)[0]
    gold = doc["answers"][0]
    assert copy.process_results(doc, [gold]) == {"exact_match": 1.0, "score": 100.0, "norm_avg": 100.0,
                                                 "fmt_label_share": 0.0}
    # the model goes on with a next example: the post-processing cuts it at the task's prefix word
    assert copy.process_results(doc, [f"{gold} copy : cat answer : cat"])["exact_match"] == 1.0
    assert copy.process_results(doc, ["True"]) == {"exact_match": 0.0, "score": 0.0, "norm_avg": 0.0,
                                                   "fmt_label_share": 1.0}
    target = tasks[TARGET]
    doc = list(target.eval_docs)[0]
    assert target.process_results(doc, [doc["answers"][0]])["fmt_label_share"] == 1.0


def test_metrics_equal_the_suites_qa_metrics():
    """A mini task is scored as WebQuestions is (metrics.process_results), given the same answers."""
    doc = {"answers": ["cat dog"], "input": "cat dog"}
    for output in ["cat dog", " Cat  dog. ", "cat", "True", "false cat", "cat dog\n\nQ x", ""]:
        ours = metrics.process_results("mini_qa", doc, output)
        assert ours == metrics.process_results("webqs", doc, output), output


class _Oracle(LM):
    """Answers every request with its document's gold answer."""

    def generate_until(self, requests, disable_tqdm=False):
        return [request.doc["answers"][0] for request in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_group_scores_of_a_perfect_model(manager):
    results = lm_eval.simple_evaluate(model=_Oracle(), tasks=["fmtspec_mini", TARGET], task_manager=manager,
                                      bootstrap_iters=0)["results"]
    group = results["fmtspec_mini"]
    assert group["exact_match,none"] == group["norm_avg,none"] / 100 == 1.0
    # True/False is the asked format of 1 of the 8 pretraining tasks (is_sorted)
    assert group["fmt_label_share,none"] == pytest.approx(1 / 8)
    assert results[TARGET]["exact_match,none"] == results[TARGET]["fmt_label_share,none"] == 1.0


@pytest.mark.slow
def test_promot_hf_runs_the_mini_tasks_on_the_random_miniature_bart(manager, tmp_path):
    import torch

    torch.set_num_threads(1)
    model = mw.build_model(tmp_path / "mini_bart", seed=0)
    out = lm_eval.simple_evaluate(model="promot_hf", model_args=f"pretrained={model},device=cpu,dtype=float32",
                                  tasks=["fmtspec_mini", TARGET], task_manager=manager, batch_size=8, limit=3,
                                  bootstrap_iters=0, log_samples=True)
    for name in PRETRAIN + [TARGET]:
        samples = out["samples"][name]
        assert len(samples) == 3
        for sample in samples:
            words = sample["resps"][0][0].split()
            assert len(words) <= 8 and set(words) <= set(mw.vocabulary())  # word-level output, max_gen_toks
        assert 0.0 <= out["results"][name]["fmt_label_share,none"] <= 1.0
