"""The fmtspec tasks as (context, target) pairs, for trainers that must train on exactly the format that is
scored, and their metrics on raw generations, for choosing checkpoints.

    from harness_tasks.examples import render, score
    train = render("fmtspec_rte", "train", shots=1, fewshot_split="train",   # ProMoT + 1-shot training inputs
                   limit=400_000, sample_seed=0)                            # (a seeded sample of the split)
    val = render("fmtspec_rte", "validation")
    score("fmtspec_rte", generations, [e.doc for e in val])  # {"acc": ..., "score": ..., ...}

`render(task, <scored split>, shots=k)` gives the very prompts `lm_eval --num_fewshot k` builds for the
first docs of that split (same loader, template, demonstration sampler and seed; `limit` alone is lm-eval's
`--limit`: the first N docs). The trainers pass `sample_seed` (a seeded random sample of N rows of the whole
split, never its first N: WMT14's train split is its sub-corpora one after the other) and `fewshot_split`
(demonstrations from the training split, never from the split checkpoints are chosen on). Import-light:
data libraries are imported when a function needs them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fmtspec.core.errors import FmtspecError
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
    row: int | None = None  # its index in the split (lm-eval's doc_id for the scored split)


def task_key(task: str) -> str:
    """`fmtspec_cb_4shot` -> `cb`; a clear error for a name that is not an fmtspec task."""
    try:
        return catalog.parse_task_name(task)[0].key
    except KeyError:
        raise FmtspecError(f"unknown fmtspec task {task!r}; known: {', '.join(catalog.ALL_TASKS)}") from None


def sample_rows(n_rows: int, limit: int | None, sample_seed: int | None = None, *, key: str = "",
                split: str = "") -> list[int] | None:
    """The row indices `limit` keeps of a split of `n_rows` rows, in split order; None: every row.

    `sample_seed` None: the first `limit` (lm-eval's `--limit`). Else a random sample of `limit` rows of the
    whole split, drawn from range(n_rows) without touching a row (`random.Random(...).sample` of a range holds
    only the chosen indices: cheap on a 40M-row split), seeded by (key, split, seed): the same seed gives the
    same sample on every machine, and another task or split of the same size gets its own."""
    if limit is None or limit >= n_rows:
        return None
    if sample_seed is None:
        return list(range(limit))
    rnd = random.Random(f"fmtspec-sample|{key}|{split}|{sample_seed}")  # str seeds: sha512, stable
    return sorted(rnd.sample(range(n_rows), limit))


def _select(task: str, split: str, limit: int | None, sample_seed: int | None):
    """(the split's `datasets.Dataset`, the rows kept or None for all) of `sample_rows`."""
    key = task_key(task)
    rows = load_split(key, split)
    return rows, sample_rows(len(rows), limit, sample_seed, key=key, split=split)


def load_docs(task: str, split: str, limit: int | None = None, tokenizer=None, *,
              sample_seed: int | None = None) -> list[dict]:
    """The records of one split (hub, or `$FMTSPEC_DATA_DIR/<key>/<split>.jsonl`), as the lm-eval task loads
    them for a model with `tokenizer` (summarization articles cut to its tokens, `formats.cut_articles`);
    with `limit`, only the rows `sample_rows` keeps are turned into dicts (WMT train splits hold millions):
    the first `limit`, or with `sample_seed` a seeded random sample of the whole split."""
    rows, kept = _select(task, split, limit, sample_seed)
    return cut_articles(task_key(task), list(rows if kept is None else rows.select(kept)), tokenizer)


class _Pool:
    """The docs demonstrations are drawn from: a split's rows, read (and their articles cut) only when drawn,
    so that a multi-million-row training split is never turned into dicts."""

    CACHED = 100_000  # a pool up to this size keeps the docs it read (lm-eval's few-shot splits)

    def __init__(self, key: str, rows, tokenizer):
        self.key, self.rows, self.tokenizer = key, rows, tokenizer
        self.cache = {} if len(rows) <= self.CACHED else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        doc = cut_articles(self.key, [self.rows[int(i)]], self.tokenizer)[0]
        if self.cache is not None:
            self.cache[i] = doc
        return doc


def _demonstrations(rnd: random.Random, pool: _Pool, n: int, eval_doc: dict | None) -> list[dict]:
    """lm-eval's `ContextSampler.sample(n, eval_doc)`, drawn by index: `rnd.sample` picks the same positions
    of a range as of a list of the same length, so the demonstrations (and the generator's state after them)
    are lm-eval's, without copying the pool for every doc as lm-eval does."""
    if eval_doc is None:
        return [pool[i] for i in rnd.sample(range(len(pool)), n)]
    drawn = [d for d in (pool[i] for i in rnd.sample(range(len(pool)), n + 1)) if d != eval_doc][:n]
    if len(drawn) < n:  # the pool holds copies of eval_doc and two were drawn: lm-eval's fallback
        others = [i for i in range(len(pool)) if pool[i] != eval_doc]
        drawn = [pool[i] for i in rnd.sample(others, n)]
    return drawn


def fewshot_text(key: str, doc: dict) -> str:
    fmt = FORMATS[key]
    return fmt.doc_to_text(doc) + TARGET_DELIMITER + fmt.doc_to_target(doc) + FEWSHOT_DELIMITER


def render(task: str, split: str = "train", *, shots: int = 0, seed: int = DEFAULT_SEED,
           limit: int | None = None, sample_seed: int | None = None, fewshot_split: str | None = None,
           tokenizer=None) -> list[Example]:
    """Every doc of `split` (with `limit`: the first N, or with `sample_seed` a seeded random sample of N,
    `sample_rows`) with `shots` demonstrations drawn from `fewshot_split` (default: the task's lm-eval
    few-shot split), as lm-eval renders them for a model with `tokenizer` (None: articles cut by words).

    Demonstrations are sampled like lm-eval does (one sampler seeded once with `seed`, drawn doc after doc,
    from the whole demonstration split, whatever `limit` keeps of `split`); when `split` is the
    demonstration split itself, a doc is never its own demonstration.
    """
    key = task_key(task)
    if shots < 0:
        raise FmtspecError(f"shots must be >= 0, got {shots}")
    fmt, spec = FORMATS[key], DATA[key]
    demo_split = fewshot_split or spec.fewshot_split
    rows, kept = _select(task, split, limit, sample_seed)
    docs = cut_articles(key, list(rows if kept is None else rows.select(kept)), tokenizer)
    same = split == demo_split
    rnd = pool = None
    if shots:
        pool = _Pool(key, rows if same else load_split(key, demo_split), tokenizer)
        if len(pool) < shots + same:
            raise FmtspecError(f"{task}: {shots}-shot needs more than the {len(pool)} docs of split "
                               f"{demo_split!r}")
        rnd = random.Random(seed)  # lm-eval's ContextSampler(rnd=seed)
    examples = []
    for i, doc in enumerate(docs):
        demos = _demonstrations(rnd, pool, shots, doc if same else None) if shots else []
        context = "".join(fewshot_text(key, d) for d in demos) + fmt.doc_to_text(doc)
        examples.append(Example(context, fmt.doc_to_target(doc), doc, i if kept is None else kept[i]))
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
