"""The functions an fmtspec task YAML names, bound to its data key. Each task folder's utils.py is one
`bind(<key>)` call, so templates, loading and metrics live once, in formats.py, data.py and metrics.py.

lm-eval imports this module when it loads an fmtspec task, whatever the model (`--model hf` never imports
promot_hf). `load`, the first function of a task lm-eval calls (its custom_dataset, before any doc_to_* or
process_results), installs fmtspec's one-line hook, so a data error (a record without a field its task reads,
a file that is not UTF-8) ends the `lm_eval` command with one line, not a traceback."""

from __future__ import annotations

import functools
import logging

from fmtspec.core.errors import install_excepthook
from harness_tasks.data import load_dataset_dict
from harness_tasks.formats import FORMATS, SUMMARY_MAX_TOKENS, cut_articles
from harness_tasks.metrics import process_results

log = logging.getLogger(__name__)


def bind(key: str):
    """(load, doc_to_text, doc_to_target, process_results) for lm-eval's custom_dataset, doc_to_* and
    process_results hooks."""
    fmt = FORMATS[key]

    def load(**metadata):  # lm-eval passes --model_args and --metadata here (and dataset_kwargs)
        install_excepthook()
        docs = load_dataset_dict(key)
        if fmt.article is None:
            return docs
        return cut_articles(key, docs, model_tokenizer(metadata, key))

    def results(doc, outputs):
        return process_results(key, doc, outputs[0])

    return load, fmt.doc_to_text, fmt.doc_to_target, results


def model_tokenizer(metadata: dict, key: str):
    """The tokenizer of the model being scored, found from its `--model_args` (lm-eval merges them into
    every task's metadata): `tokenizer=`, else `pretrained=` (a fmtspec run folder: the run's tokenizer).
    None, with a warning, when there is no such argument (a model built in Python) or it cannot be loaded."""
    from transformers import PreTrainedTokenizerBase

    from fmtspec.core import run_folder

    name = metadata.get("tokenizer") or metadata.get("pretrained")
    if isinstance(name, PreTrainedTokenizerBase):
        return name
    if isinstance(name, str) and run_folder.is_run_folder(name):
        name = run_folder.tokenizer_path(name, run_folder.read_manifest(name))
    if isinstance(name, str) and name:
        trust = str(metadata.get("trust_remote_code")).lower() == "true"
        revision = None if metadata.get("tokenizer") else metadata.get("revision")
        try:
            return _load_tokenizer(name, revision, trust)
        except Exception as exc:  # the model loaded already, so this is rare: say why and cut by words
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("fmtspec_%s: cannot load tokenizer %s (%s)", key, name, reason)
    log.warning("fmtspec_%s: articles cut to %d whitespace words, not %d tokens of the model's tokenizer: "
                "give --model_args tokenizer=<name or folder>", key, SUMMARY_MAX_TOKENS, SUMMARY_MAX_TOKENS)
    return None


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str, revision: str | None, trust_remote_code: bool):
    """Loaded once per process: a run scores XSum and WikiLingua at 1 and 4 shots with the same model."""
    from transformers import AutoTokenizer

    kwargs = {"revision": revision} if revision else {}
    return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
