"""What every fmtspec task is: its data key, primary metric and display name. One table that the
trainers, promot_hf and the leaderboard share with the task YAMLs (which must agree with it)."""

from __future__ import annotations

from dataclasses import dataclass

from harness_tasks import mini_world


@dataclass(frozen=True)
class TaskInfo:
    key: str  # folder under FMTSPEC_DATA_DIR; the task name without `fmtspec_` and the shot suffix
    display: str  # row label in leaderboards
    metric: str  # primary metric as lm-eval reports it
    scale: float  # multiply the metric by this for a 0-100 score: scale_of(metric)
    kind: str  # "label" (first word decides), "qa", "translation", "summarization", "multilabel"


def scale_of(metric: str) -> float:
    """What turns `metric` as lm-eval reports it into a 0-100 score: BLEU (sacreBLEU's) is on 0-100 already,
    every other metric of the fmtspec tasks (accuracy, exact match, ROUGE, F1, fmt_label_share) a fraction."""
    return 1.0 if metric == "bleu" else 100.0


def _t(key, display, metric, kind):
    return TaskInfo(key, display, metric, scale_of(metric), kind)


# The paper's 8 unseen tasks, in the order of its tables.
SUITE = (
    _t("cb", "CB", "acc", "label"),
    _t("wic", "WiC", "acc", "label"),
    _t("triviaqa", "TriviaQA", "exact_match", "qa"),
    _t("webqs", "WebQuestions", "exact_match", "qa"),
    _t("wmt16_en_de", "WMT16 En-De", "bleu", "translation"),
    _t("wmt16_en_ro", "WMT16 En-Ro", "bleu", "translation"),
    _t("xsum", "XSum", "rouge2", "summarization"),
    _t("wikilingua_en", "WikiLingua-en", "rouge2", "summarization"),
)
TARGETS = (
    _t("rte", "RTE", "acc", "label"),
    _t("snli", "SNLI", "acc", "label"),
    _t("openbookqa", "OpenbookQA", "acc", "label"),
    _t("wmt14_en_fr", "WMT14 En-Fr", "bleu", "translation"),
)
TEACH_TWICE = (
    _t("a2t", "Abstract to title", "rouge2", "summarization"),
    _t("alt_en_zh", "ALT En-Zh", "bleu", "translation"),
    _t("mcd_reviews", "McDonald's reviews", "acc", "multilabel"),
)
# The miniature world (harness_tasks/mini_world.py): its 8 pretraining tasks, scored 1-shot, and its target.
MINI = tuple(_t(mini_world.data_key(task), f"Mini {task.replace('_', ' ')}", "exact_match", "qa")
             for task in mini_world.PRETRAIN_TASKS)
MINI_TARGET = _t(mini_world.data_key(mini_world.TARGET_TASK), "Mini target", "exact_match", "qa")
SHOTS = (1, 4)
BY_KEY = {t.key: t for t in SUITE + TARGETS + TEACH_TWICE + MINI + (MINI_TARGET,)}

GROUPS = {
    "fmtspec_suite_1shot": [f"fmtspec_{t.key}_1shot" for t in SUITE],
    "fmtspec_suite_4shot": [f"fmtspec_{t.key}_4shot" for t in SUITE],
    "fmtspec_targets": [f"fmtspec_{t.key}" for t in TARGETS],
    "fmtspec_teach_twice": [f"fmtspec_{t.key}" for t in TEACH_TWICE],
    "fmtspec_mini": [f"fmtspec_{t.key}" for t in MINI],
}
GROUPS["fmtspec_suite"] = GROUPS["fmtspec_suite_1shot"] + GROUPS["fmtspec_suite_4shot"]
ALL_TASKS = (GROUPS["fmtspec_suite"] + GROUPS["fmtspec_targets"] + GROUPS["fmtspec_teach_twice"]
             + GROUPS["fmtspec_mini"] + [f"fmtspec_{MINI_TARGET.key}"])


def parse_task_name(name: str) -> tuple[TaskInfo, int | None]:
    """`fmtspec_cb_4shot` -> (CB info, 4); `fmtspec_rte` -> (RTE info, None). KeyError if not ours."""
    if not name.startswith("fmtspec_"):
        raise KeyError(name)
    rest = name[len("fmtspec_"):]
    shots = None
    for n in SHOTS:
        if rest.endswith(f"_{n}shot"):
            rest, shots = rest[: -len(f"_{n}shot")], n
    return BY_KEY[rest], shots
