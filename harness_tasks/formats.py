"""The input template and gold answer of every fmtspec task: ProMoT's Table 4 (A.2.1) and the teach-twice
prefixes (seed 001, section 3.2). The lm-eval YAMLs, the trainers and `examples.render` all call these.

Each `Format` maps a raw record (in its dataset's own schema) to the text before the answer and the answer.
lm-eval joins demonstrations as `text + " " + answer`, separated by a blank line. It also names the record
fields that its template, answer and metrics read (`fields`), which `harness_tasks.data` checks in every
record it loads, so a record without one stops with one line instead of being scored as the text "None".
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Callable

from fmtspec.core.errors import FmtspecError
from harness_tasks import mini_world

# Summarization inputs are cut to this many tokens of the model's tokenizer: seed 002, section 5.1 ("For
# summarization, we cut each input to 1024 tokens"). Only the article is cut, never a demonstration.
SUMMARY_MAX_TOKENS = 1024

NLI_2WAY = "{premise} question: {hypothesis} Is it true or false? answer:"
NLI_3WAY = "{premise} question: {hypothesis} Is it true or false or neither? answer:"
WIC = ("{sentence1} {sentence2} question: The word {word} is used in the same way in the two sentences. "
       "Is it true or False? answer:")

# McDonald's review categories in the fixed order of the target text (seed 001, section 2.3; the CSV's
# spelling).
MCD_CATEGORIES = ("OrderProblem", "BadFood", "SlowService", "Filthy", "RudeService", "Cost", "ScaryMcDs",
                  "MissingFood")
MCD_NONE = "none"


@dataclass(frozen=True)
class Format:
    doc_to_text: Callable[[dict], str]
    doc_to_target: Callable[[dict], str]
    prefix: str | None = None  # the token that starts every example; a second one starts the next example
    choices: tuple[str, ...] = ()  # label tasks: the words the first output word is matched against
    article: str | None = None  # summarization: the record field cut to SUMMARY_MAX_TOKENS (`cut_articles`)
    # The fields the template, the answer and the metrics read, each present and not null in every record:
    # `a.b` a nested field, `a[]` a list (may be empty), `a[0]` a non-empty list whose first item is read.
    fields: tuple[str, ...] = ()


def cut_words(text: str, max_words: int = SUMMARY_MAX_TOKENS) -> str:
    """`text` up to its `max_words`-th whitespace-separated word (unchanged when shorter)."""
    match = re.match(r"\s*(?:\S+\s+){%d}" % max_words, text)
    return text if match is None else text[: match.end()].rstrip()


def cut_to_tokens(texts: list[str], tokenizer, max_tokens: int = SUMMARY_MAX_TOKENS) -> list[str]:
    """Each text up to the end of its `max_tokens`-th token of `tokenizer` (unchanged when shorter).

    The cut is made in the original string, at the character offset where that token ends, so the
    text keeps its own spelling (decoding ids would normalize it); tokenizers without offsets decode."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    out = []
    for i, (text, ids) in enumerate(zip(texts, enc["input_ids"], strict=True)):
        if len(ids) <= max_tokens:
            out.append(text)
        elif tokenizer.is_fast:
            out.append(text[: enc["offset_mapping"][i][max_tokens - 1][1]])
        else:
            out.append(tokenizer.decode(ids[:max_tokens]))
    return out


def cut_articles(key: str, docs, tokenizer=None):
    """`docs` (a `datasets.Dataset`/`DatasetDict` or a list of records) with the article of a summarization
    task cut to SUMMARY_MAX_TOKENS tokens of the model's `tokenizer`; other tasks' docs are returned as they
    are. Without a tokenizer (the model is unknown) the article is cut to as many whitespace words."""
    field = FORMATS[key].article
    if field is None:
        return docs

    def cut(batch):
        texts = batch[field]
        return {field: cut_to_tokens(texts, tokenizer) if tokenizer is not None else [cut_words(t) for t in texts]}

    if isinstance(docs, list):
        return [doc | {field: text} for doc, text in zip(docs, cut({field: [d[field] for d in docs]})[field],
                                                          strict=True)]
    if isinstance(docs, dict):  # a DatasetDict
        return type(docs)({split: cut_articles(key, rows, tokenizer) for split, rows in docs.items()})
    name = "words" if tokenizer is None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    fingerprint = hashlib.sha256(f"{docs._fingerprint}|{name}|{SUMMARY_MAX_TOKENS}".encode()).hexdigest()[:16]
    # in memory, with a fingerprint of our own: hashing the tokenizer object is slow and not stable
    return docs.map(cut, batched=True, keep_in_memory=True, load_from_cache_file=False,
                    new_fingerprint=fingerprint, desc=f"cutting {key} articles to {SUMMARY_MAX_TOKENS} tokens")


def one_line(text: str) -> str:
    """arXiv abstracts and titles are hard-wrapped: collapse their whitespace."""
    return " ".join(text.split())


def _label(names: dict[int, str]):
    def target(doc):
        if doc["label"] not in names:  # -1: SuperGLUE test labels are hidden, SNLI annotators disagreed
            raise FmtspecError(f"record has no gold label (label {doc['label']!r}): {str(doc)[:80]}")
        return names[doc["label"]]

    return target


def _nli(template: str, names: dict[int, str]) -> Format:
    return Format(lambda d: template.format(premise=d["premise"], hypothesis=d["hypothesis"]), _label(names),
                  choices=tuple(names[i] for i in sorted(names)), fields=("premise", "hypothesis", "label"))


def _openbookqa_text(doc: dict) -> str:
    options = " ".join(f"{label}) {text}" for label, text in zip(doc["choices"]["label"], doc["choices"]["text"]))
    return f"Q: {doc['question_stem']} {options} A:"


def _translation(source: str, target: str, name: str, prefix: str = "Translate") -> Format:
    return Format(lambda d: f"{prefix} English to {name}: {d['translation'][source]}",
                  lambda d: d["translation"][target], prefix=prefix,
                  fields=(f"translation.{source}", f"translation.{target}"))


def _summary(document: str, summary: str) -> Format:
    return Format(lambda d: f"Article: {d[document]} One sentence summary:", lambda d: d[summary],
                  prefix="Article:", article=document, fields=(document, summary))


def mcd_labels(doc: dict) -> tuple[str, ...]:
    """The gold categories of a CrowdFlower row, in MCD_CATEGORIES order (`na` means none)."""
    given = {part.strip().lower() for part in (doc.get("policies_violated") or "").splitlines()}
    return tuple(c for c in MCD_CATEGORIES if c.lower() in given)


def mcd_target(doc: dict) -> str:
    return ", ".join(mcd_labels(doc)) or MCD_NONE


FORMATS: dict[str, Format] = {
    "rte": _nli(NLI_2WAY, {0: "True", 1: "False"}),  # 0 entailment, 1 not_entailment
    "cb": _nli(NLI_3WAY, {0: "True", 1: "False", 2: "Neither"}),  # 0 entailment, 1 contradiction, 2 neutral
    "snli": _nli(NLI_3WAY, {0: "True", 2: "False", 1: "Neither"}),  # 0 entailment, 1 neutral, 2 contradiction
    "wic": Format(lambda d: WIC.format(sentence1=d["sentence1"], sentence2=d["sentence2"], word=d["word"]),
                  _label({1: "True", 0: "False"}), choices=("True", "False"),
                  fields=("sentence1", "sentence2", "word", "label")),
    "openbookqa": Format(_openbookqa_text, lambda d: d["answerKey"], prefix="Q:", choices=("A", "B", "C", "D"),
                         fields=("question_stem", "choices.text[]", "choices.label[]", "answerKey")),
    # TriviaQA's aliases may be empty (rc.nocontext), WebQuestions' answers may not: the first is the target
    "triviaqa": Format(lambda d: f"Q: {d['question']} A:", lambda d: d["answer"]["value"], prefix="Q:",
                       fields=("question", "answer.value", "answer.aliases[]")),
    "webqs": Format(lambda d: f"Q: {d['question']} A:", lambda d: d["answers"][0], prefix="Q:",
                    fields=("question", "answers[0]")),
    "wmt14_en_fr": _translation("en", "fr", "French"),
    "wmt16_en_de": _translation("en", "de", "German"),
    "wmt16_en_ro": _translation("en", "ro", "Romanian"),
    "xsum": _summary("document", "summary"),
    "wikilingua_en": _summary("source", "target"),
    "a2t": Format(lambda d: f"abstract to title: {one_line(d['abstract'])}", lambda d: one_line(d["title"]),
                  prefix="abstract to title:", fields=("abstract", "title")),
    "alt_en_zh": _translation("en", "zh", "Chinese", prefix="translate"),
    # an empty `policies_violated` is a row no contributor judged (dropped by data.py), a missing one an error
    "mcd_reviews": Format(lambda d: f"multi-label classification: {d['review']}", mcd_target,
                          prefix="multi-label classification:", fields=("review", "policies_violated")),
}


def _mini_fields(task: str) -> tuple[str, ...]:
    """A miniature task's fields: those its generator writes (what its template reads), `answers` the target's
    list (as WebQuestions)."""
    record = mini_world.GENERATORS[task](random.Random(0))
    return tuple("answers[0]" if name == "answers" else name for name in record)


# The miniature world's tasks: templates in mini_world.py, the answer in `answers` (as WebQuestions).
FORMATS.update({mini_world.data_key(task): Format(t.doc_to_text, mini_world.doc_to_target, prefix=t.prefix,
                                                  fields=_mini_fields(task))
                for task, t in mini_world.TEMPLATES.items()})
