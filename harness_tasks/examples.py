"""The fmtspec tasks as (context, target) pairs, for trainers that must train on exactly the format that is
scored, and their metrics on raw generations, for choosing checkpoints.

    from harness_tasks.examples import render, score
    train = render("fmtspec_rte", "train", shots=1)        # ProMoT + 1-shot training inputs
    val = render("fmtspec_rte", "validation")
    score("fmtspec_rte", generations, [e.doc for e in val])  # {"acc": ..., "score": ..., ...}

`render(task, <scored split>, shots=k)` gives the very prompts `lm_eval --num_fewshot k` builds for the
first docs of that split (same loader, template, demonstration sampler and seed). Import-light: data
libraries are imported when a function needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fmtspec.errors import FmtspecError
from harness_tasks import catalog
from harness_tasks.data import DATA, load_split
from harness_tasks.formats import FORMATS, cut_articles
from harness_tasks.metrics import aggregate, process_results

DEFAULT_SEED = 1234  # lm-eval's default --fewshot_random_seed
TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"  # as in every task YAML


@dataclass
class Example:
    context: str  # the text lm-eval feeds the model: demonstrations, a blank line each, then the query
    target: str  # the gold answer the model should produce (no leading delimiter)
    doc: dict  # the raw record


def task_key(task: str) -> str:
    """`fmtspec_cb_4shot` -> `cb`; a clear error for a name that is not an fmtspec task."""
    try:
        return catalog.parse_task_name(task)[0].key
    except KeyError:
        raise FmtspecError(f"unknown fmtspec task {task!r}; known: {', '.join(catalog.ALL_TASKS)}") from None


def load_docs(task: str, split: str, limit: int | None = None, tokenizer=None) -> list[dict]:
    """The records of one split (hub, or `$FMTSPEC_DATA_DIR/<key>/<split>.jsonl`), as the lm-eval task loads
    them for a model with `tokenizer` (summarization articles cut to its tokens, `formats.cut_articles`);
    only the first `limit` are turned into dicts (WMT train splits hold millions)."""
    key = task_key(task)
    rows = load_split(key, split)
    return cut_articles(key, list(rows if limit is None else rows.select(range(min(limit, len(rows))))), tokenizer)


def fewshot_text(key: str, doc: dict) -> str:
    fmt = FORMATS[key]
    return fmt.doc_to_text(doc) + TARGET_DELIMITER + fmt.doc_to_target(doc) + FEWSHOT_DELIMITER


def render(task: str, split: str = "train", *, shots: int = 0, seed: int = DEFAULT_SEED,
           limit: int | None = None, tokenizer=None) -> list[Example]:
    """Every doc of `split` (the first `limit`) with `shots` demonstrations drawn from the task's few-shot split,
    as lm-eval renders them for a model with `tokenizer` (None: articles cut by words).

    Demonstrations are sampled like lm-eval does (one sampler seeded once, drawn doc after doc); when
    `split` is the few-shot split itself, a doc is never its own demonstration.
    """
    from lm_eval.api.samplers import ContextSampler

    key = task_key(task)
    if shots < 0:
        raise FmtspecError(f"shots must be >= 0, got {shots}")
    fmt, spec = FORMATS[key], DATA[key]
    docs = load_docs(task, split, limit, tokenizer)
    sampler = None
    if shots:
        pool = docs if split == spec.fewshot_split and limit is None else load_docs(task, spec.fewshot_split,
                                                                                     tokenizer=tokenizer)
        if len(pool) < shots + (split == spec.fewshot_split):
            raise FmtspecError(f"{task}: {shots}-shot needs more than the {len(pool)} docs of split "
                               f"{spec.fewshot_split!r}")
        sampler = ContextSampler(pool, rnd=seed)
    examples = []
    for doc in docs:
        demos = sampler.sample(n=shots, eval_doc=doc if split == spec.fewshot_split else None) if sampler else []
        context = "".join(fewshot_text(key, d) for d in demos) + fmt.doc_to_text(doc)
        examples.append(Example(context, fmt.doc_to_target(doc), doc))
    return examples


def score(task: str, predictions: list[str], docs: list[dict]) -> dict[str, float]:
    """The task's metrics on raw generations (post-processing included): the numbers lm-eval would report."""
    key = task_key(task)
    if len(predictions) != len(docs):
        raise FmtspecError(f"{task}: {len(predictions)} predictions for {len(docs)} docs")
    if not docs:
        raise FmtspecError(f"{task}: nothing to score")
    return aggregate(key, [process_results(key, doc, pred) for doc, pred in zip(docs, predictions)])


def primary_metric(task: str) -> str:
    return catalog.BY_KEY[task_key(task)].metric
