"""The functions an fmtspec task YAML names, bound to its data key. Each task folder's utils.py is one
`bind(<key>)` call, so templates, loading and metrics live once, in formats.py, data.py and metrics.py."""

from __future__ import annotations

from harness_tasks.data import load_dataset_dict
from harness_tasks.formats import FORMATS
from harness_tasks.metrics import process_results


def bind(key: str):
    """(load, doc_to_text, doc_to_target, process_results) for lm-eval's custom_dataset, doc_to_* and
    process_results hooks."""
    fmt = FORMATS[key]

    def load(**metadata):  # lm-eval passes --metadata and dataset_kwargs; the data key decides everything
        return load_dataset_dict(key)

    def results(doc, outputs):
        return process_results(key, doc, outputs[0])

    return load, fmt.doc_to_text, fmt.doc_to_target, results
