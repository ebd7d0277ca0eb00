"""Post-processing (ProMoT A.2.2) and metrics of every fmtspec task, shared by the lm-eval YAMLs
(`process_results` + aggregations) and `examples.score`, so both report the same numbers.

Per task: its primary metric (catalog.py), `score` and `norm_avg` (the primary metric on a 0-100 scale,
which the groups average), and `fmt_label_share` (outputs whose first word is True/False/Neither: the
format-specialization signal of the paper's Figure 2). sacrebleu and rouge-score are imported lazily.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from harness_tasks.catalog import BY_KEY, scale_of
from harness_tasks.formats import FORMATS, MCD_CATEGORIES, mcd_labels

SENTINEL_START, SENTINEL_END = "<extra_id_0>", "<extra_id_1>"
UNTIL = ("\n\n",)  # lm-eval stops generations here (the blank line that starts a new example)
LABEL_WORDS = ("True", "False", "Neither")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


# ---- post-processing -------------------------------------------------------------------------------------

def postprocess(text: str, prefix: str | None = None) -> str:
    """The paper's post-processing of one raw generation.

    Cut at lm-eval's stop sequence (as its models do), keep the span after `<extra_id_0>` and before
    `<extra_id_1>`, then cut where the model starts the next example: at the second occurrence of the task's
    prefix token, counting the one that starts the current example (so a prefix the output opens with is
    the first; otherwise the prompt's own prefix was).
    """
    for stop in UNTIL:
        text = text.split(stop, 1)[0]
    if SENTINEL_START in text:
        text = text.split(SENTINEL_START, 1)[1]
    text = text.split(SENTINEL_END, 1)[0].strip()
    if prefix:
        start = len(prefix) if text.startswith(prefix) else 0
        cut = text.find(prefix, start)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def first_word(text: str) -> str:
    """The first word, without the punctuation around it (`True.` -> `True`, `B)` -> `B`)."""
    words = text.split()
    return words[0].strip(string.punctuation) if words else ""


def is_label_word(text: str) -> bool:
    return first_word(text).lower() in {w.lower() for w in LABEL_WORDS}


def parse_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The choice named by the first word: True/False/Neither in any case, option letters in upper case only
    (a lower-case `a` is an article)."""
    word = first_word(text)
    for choice in choices:
        if word == choice or (len(choice) > 1 and word.lower() == choice.lower()):
            return choice
    return None


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_aliases(key: str, doc: dict) -> list[str]:
    if key == "triviaqa":
        return [*doc["answer"]["aliases"], doc["answer"]["value"]]
    return list(doc["answers"])


def parse_labels(text: str) -> tuple[str, ...]:
    """`BadFood, RudeService` -> the categories named (any case, any order), in MCD_CATEGORIES order."""
    named = {part.strip().lower() for part in text.split(",")}
    return tuple(c for c in MCD_CATEGORIES if c.lower() in named)


# ---- corpus-level aggregations (lm-eval `aggregation:` functions) ---------------------------------------

def corpus_bleu(items) -> float:
    """sacreBLEU corpus BLEU (0-100, 13a tokenization) of (prediction, reference) pairs."""
    import sacrebleu

    preds, refs = zip(*items)
    return sacrebleu.corpus_bleu(list(preds), [list(refs)]).score


def corpus_bleu_zh(items) -> float:
    """sacreBLEU corpus BLEU with its Chinese tokenizer."""
    import sacrebleu

    preds, refs = zip(*items)
    return sacrebleu.corpus_bleu(list(preds), [list(refs)], tokenize="zh").score


def macro_f1(items) -> float:
    """Mean of the per-category F1 from (predicted labels, gold labels) pairs, over the McDonald's categories
    that occur in the gold labels or the predictions (F1 is undefined for the others); 1.0 if none occurs."""
    f1s = []
    for category in MCD_CATEGORIES:
        tp = sum(category in pred and category in gold for pred, gold in items)
        fp = sum(category in pred and category not in gold for pred, gold in items)
        fn = sum(category not in pred and category in gold for pred, gold in items)
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 1.0


def mean(items) -> float:
    return sum(items) / len(items)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


# ---- per task ------------------------------------------------------------------------------------------

def _bleu_aggregation(key: str):
    return corpus_bleu_zh if key == "alt_en_zh" else corpus_bleu


def aggregations(key: str) -> dict:
    """metric name -> aggregation ("mean" or a function of the per-doc items), in report order."""
    info = BY_KEY[key]
    bleu = _bleu_aggregation(key)
    if info.kind == "translation":
        metrics = {"bleu": bleu}
    elif info.kind == "summarization":
        metrics = {"rouge2": "mean"}
        if key == "a2t":
            metrics = {"rouge1": "mean", "rouge2": "mean", "rougeL": "mean", "bleu": bleu}
    elif info.kind == "multilabel":
        metrics = {"acc": "mean", "f1": macro_f1}
    else:
        metrics = {info.metric: "mean"}
    scaled = metrics[info.metric]  # `score`/`norm_avg` aggregate like the primary metric
    return {**metrics, "score": scaled, "norm_avg": scaled, "fmt_label_share": "mean"}


def metric_range(key: str, metric: str) -> tuple[float, float] | None:
    """(low, high) of `metric` as task `key` reports it; None for a metric the task does not report.
    fmtspec's `score`/`norm_avg` are on 0-100, every other metric on 0-100 / its scale (catalog.scale_of)."""
    if metric not in aggregations(key):
        return None
    return (0.0, 100.0) if metric in ("score", "norm_avg") else (0.0, 100.0 / scale_of(metric))


def process_results(key: str, doc: dict, output: str) -> dict:
    """Per-doc items of every metric of `key` for one raw generation (lm-eval's `process_results`)."""
    info, fmt = BY_KEY[key], FORMATS[key]
    text = postprocess(output, fmt.prefix)
    items = {}
    if info.kind == "label":
        items["acc"] = float(parse_choice(text, fmt.choices) == fmt.doc_to_target(doc))
    elif info.kind == "qa":
        gold = {normalize_answer(a) for a in answer_aliases(key, doc)}
        items["exact_match"] = float(normalize_answer(text) in gold)
    elif info.kind == "multilabel":
        pred, gold = parse_labels(text), mcd_labels(doc)
        items["acc"], items["f1"] = float(pred == gold), (pred, gold)
    if info.kind == "translation" or key == "a2t":
        items["bleu"] = (text, fmt.doc_to_target(doc))
    if info.kind == "summarization":
        scores = _rouge_scorer().score(fmt.doc_to_target(doc), text)
        wanted = ROUGE_TYPES if key == "a2t" else ("rouge2",)
        items.update({name: scores[name].fmeasure for name in wanted})
    primary = items[info.metric]
    items["score"] = items["norm_avg"] = primary * info.scale if info.scale != 1.0 else primary
    items["fmt_label_share"] = float(is_label_word(text))
    return items


def aggregate(key: str, per_doc: list[dict]) -> dict[str, float]:
    """Corpus numbers from per-doc items, exactly as lm-eval aggregates them."""
    out = {}
    for name, agg in aggregations(key).items():
        values = [items[name] for items in per_doc]
        out[name] = mean(values) if agg == "mean" else agg(values)
    return out

