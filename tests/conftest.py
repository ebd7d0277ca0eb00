"""Shared fixtures: tiny offline models and the bundled dataset fixtures. Nothing here touches the network."""

import os
from pathlib import Path

import pytest
import torch

# Tests never reach the hub: a code path that tries to download fails loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run far faster on one thread than on two busy ones. OMP_NUM_THREADS=2 runs the suite on two
# (other float sums: the suite must pass either way); this process and its subprocesses (lm_eval, trainers)
# use the same count, so what one computes and the other reads back is computed alike.
torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "harness_tasks" / "fixtures"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """{'t5', 'mt5', 'llama', 'gpt2'} -> folder of a tiny random model with its tokenizer."""
    from fmtspec.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture
def offline_data(monkeypatch) -> Path:
    """Point every fmtspec task at the bundled fixture files."""
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
    return FIXTURES


@pytest.fixture(scope="module")
def data_env():
    """`offline_data` for a whole test module (module-scoped fixtures that train need it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        yield


# The longest files first (their measured run times on 2 cores, longest first; the rest keep pytest's order).
# `make test` runs files on two pytest-xdist workers, each file whole on one: a long file started last would
# leave one worker running it alone at the end.
LONGEST_FIRST = ("test_trainers.py", "test_trainers_scale.py", "test_experiment.py", "test_lm_eval_batch.py",
                 "test_lm_eval_plugin.py", "test_run_folder_faults.py", "test_promot_hf.py", "test_mini_pretrain.py",
                 "test_promot_hf_contexts.py", "test_bad_input_data.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
