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
