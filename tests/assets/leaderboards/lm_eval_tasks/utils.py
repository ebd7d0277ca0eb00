"""Inline data for the tiny tasks that produce a real lm-eval results file (no download, no files)."""

import datasets

NLI = [
    {"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.", "label": 0},
    {"premise": "It rained all day.", "hypothesis": "The ground is dry.", "label": 1},
    {"premise": "She bought three apples.", "hypothesis": "She bought fruit.", "label": 0},
    {"premise": "The shop was closed.", "hypothesis": "The shop sold bread that day.", "label": 1},
]
QA = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "How many legs does a spider have?", "answer": "eight"},
    {"question": "Which planet is called the red planet?", "answer": "Mars"},
    {"question": "What colour is the sky on a clear day?", "answer": "blue"},
]


def load_nli(**kwargs):
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(NLI), "test": datasets.Dataset.from_list(NLI)})


def load_qa(**kwargs):
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(QA), "test": datasets.Dataset.from_list(QA)})


def process_qa(doc, results):
    """exact_match plus the format signal the fmtspec tasks also report (here: answered with yes/no)."""
    prediction = results[0].strip()
    return {
        "exact_match": float(prediction.lower() == doc["answer"].lower()),
        "fmt_label_share": float(prediction.lower() in {"yes", "no"}),
    }
