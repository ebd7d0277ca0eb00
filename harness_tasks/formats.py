"""The input template and gold answer of every fmtspec task: ProMoT's Table 4 (A.2.1) and the teach-twice
prefixes (seed 001, section 3.2). The lm-eval YAMLs, the trainers and `examples.render` all call these.

Each `Format` maps a raw record (in its dataset's own schema) to the text before the answer and the answer.
lm-eval joins demonstrations as `text + " " + answer`, separated by a blank line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from fmtspec.errors import FmtspecError
from harness_tasks import mini_world

# Summarization inputs are cut to this many (whitespace-separated) tokens, as in the paper's A.2.4.
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


def cut_tokens(text: str, max_tokens: int = SUMMARY_MAX_TOKENS) -> str:
    """`text` up to its `max_tokens`-th whitespace-separated token (unchanged when shorter)."""
    match = re.match(r"\s*(?:\S+\s+){%d}" % max_tokens, text)
    return text if match is None else text[: match.end()].rstrip()


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
                  choices=tuple(names[i] for i in sorted(names)))


def _openbookqa_text(doc: dict) -> str:
    options = " ".join(f"{label}) {text}" for label, text in zip(doc["choices"]["label"], doc["choices"]["text"]))
    return f"Q: {doc['question_stem']} {options} A:"


def _translation(source: str, target: str, name: str, prefix: str = "Translate") -> Format:
    return Format(lambda d: f"{prefix} English to {name}: {d['translation'][source]}",
                  lambda d: d["translation"][target], prefix=prefix)


def _summary(document: str, summary: str) -> Format:
    return Format(lambda d: f"Article: {cut_tokens(d[document])} One sentence summary:", lambda d: d[summary],
                  prefix="Article:")


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
                  _label({1: "True", 0: "False"}), choices=("True", "False")),
    "openbookqa": Format(_openbookqa_text, lambda d: d["answerKey"], prefix="Q:", choices=("A", "B", "C", "D")),
    "triviaqa": Format(lambda d: f"Q: {d['question']} A:", lambda d: d["answer"]["value"], prefix="Q:"),
    "webqs": Format(lambda d: f"Q: {d['question']} A:", lambda d: d["answers"][0], prefix="Q:"),
    "wmt14_en_fr": _translation("en", "fr", "French"),
    "wmt16_en_de": _translation("en", "de", "German"),
    "wmt16_en_ro": _translation("en", "ro", "Romanian"),
    "xsum": _summary("document", "summary"),
    "wikilingua_en": _summary("source", "target"),
    "a2t": Format(lambda d: f"abstract to title: {one_line(d['abstract'])}", lambda d: one_line(d["title"]),
                  prefix="abstract to title:"),
    "alt_en_zh": _translation("en", "zh", "Chinese", prefix="translate"),
    "mcd_reviews": Format(lambda d: f"multi-label classification: {d['review']}", mcd_target,
                          prefix="multi-label classification:"),
}
# The miniature world's tasks: templates in mini_world.py, the answer in `answers` (as WebQuestions).
FORMATS.update({mini_world.data_key(task): Format(t.doc_to_text, mini_world.doc_to_target, prefix=t.prefix)
                for task, t in mini_world.TEMPLATES.items()})
