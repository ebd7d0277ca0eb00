"""The same results on every machine: the shipped miniature base, the locks, the reference comparison that
tolerates near ties only, and a one-process CPU run that needs no compiled DeepSpeed op."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greedy_reference import MARGIN, Greedy, assert_generations_match

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "mini_pretrained"


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The default miniature world (seed 0), generated into an empty cache as a new machine would."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FMTSPEC_DATA_DIR", raising=False)
        mp.setenv("FMTSPEC_CACHE", str(tmp_path_factory.mktemp("cache")))
        from harness_tasks.mini_world import default_world as world

        world()
        yield


def test_the_shipped_base_is_what_configs_mini_pretrain_yaml_trains(default_world, monkeypatch):
    """Its recorded cache key is the one of today's config, architecture, vocabulary and world: a change to any
    of them without `make mini-base` fails here. cached_base hands it out without training."""
    import trainers.train
    from trainers.config import NOT_IN_CACHE_KEY, load_config
    from trainers.pretrain import SHIPPED_BASE, cache_key, cached_base, find_base

    record = json.loads((SHIPPED / "shipped.json").read_text())
    config = load_config(REPO / "configs" / "mini" / "pretrain.yaml")
    assert record["cache_key"] == cache_key(config), "the shipped base is stale: run `make mini-base`"
    manifest = json.loads((SHIPPED / "run.json").read_text())
    # keys added since it was trained that cannot change weights are not in its record
    assert manifest["config"] == {k: v for k, v in json.loads(json.dumps(config)).items()
                                  if k not in NOT_IN_CACHE_KEY or k in manifest["config"]}
    assert SHIPPED_BASE == SHIPPED and find_base(config) == SHIPPED
    monkeypatch.setattr(trainers.train, "train", lambda *a, **k: pytest.fail("the shipped base was retrained"))
    assert cached_base(config, log=lambda line: None) == SHIPPED
    assert find_base(load_config(REPO / "configs" / "mini" / "pretrain.yaml", ["seed=1"])) is None


def test_the_shipped_base_loads_and_its_weights_are_the_recorded_ones():
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from harness_tasks.mini_world import vocabulary
    from fmtspec.core.run_folder import weights_digest

    record = json.loads((SHIPPED / "shipped.json").read_text())
    manifest = json.loads((SHIPPED / "run.json").read_text())
    weights = SHIPPED / "model" / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["model_safetensors_sha256"]
    model = AutoModelForSeq2SeqLM.from_pretrained(SHIPPED / "model")
    assert weights_digest(model.state_dict()) == manifest["model_sha256"] == record["model_sha256"]
    tok = AutoTokenizer.from_pretrained(SHIPPED / "model")
    assert tok.convert_ids_to_tokens(list(range(len(vocabulary())))) == vocabulary()
    assert not (SHIPPED / "checkpoints").exists()  # weights only: no optimizer state in the checkout
    card = (SHIPPED / "README.md").read_text()
    assert record["model_safetensors_sha256"] in card and record["cache_key"] in card


def test_the_demo_and_mini_experiments_start_from_the_shipped_base_from_any_folder(tmp_path, monkeypatch):
    from fmtspec.experiment_file import load_experiment

    monkeypatch.chdir(tmp_path)
    for name in ("demo_mini.yaml", "mini.yaml"):
        exp = load_experiment(REPO / "experiments" / name, tmp_path / "out")
        assert Path(exp.base_model) == SHIPPED / "model"
        assert exp.run("mini_pretrained" if name == "demo_mini.yaml" else "pretrained").model == exp.base_model


def test_ship_base_swaps_a_finished_pretraining_run_in_whole(tmp_path, monkeypatch):
    from fmtspec.core.errors import FmtspecError
    from harness_tasks.mini_world import write_world
    from trainers.config import load_config
    from trainers.pretrain import cache_key, ship_base
    from trainers.train import train

    write_world(tmp_path / "data", seed=0, sizes={"train": 16, "validation": 4, "test": 4})
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(tmp_path / "data"))
    config = load_config(REPO / "configs" / "mini" / "pretrain_tiny.yaml", ["model_training.steps=2"])
    run = train(config, tmp_path / "run")
    dest = tmp_path / "shipped"
    (dest / "model").mkdir(parents=True)
    (dest / "model" / "stale.bin").write_text("old")
    (dest / "README.md").write_text("the model card\n")
    assert ship_base(run, dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "metrics.jsonl", "model", "run.json",
                                                     "shipped.json"]
    assert not (dest / "model" / "stale.bin").exists() and (dest / "README.md").read_text() == "the model card\n"
    record = json.loads((dest / "shipped.json").read_text())
    assert record["cache_key"] == cache_key(config)
    assert record["model_sha256"] == json.loads((run / "run.json").read_text())["model_sha256"]
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "run.json").write_text(json.dumps({"format": "fmtspec-run/1", "method": "finetune"}))
    with pytest.raises(FmtspecError, match="not a pretraining run"):
        ship_base(tmp_path / "ft", dest)


def test_locks_pin_every_package_and_the_build_of_torch():
    """The set-up installs a whole tree at exact versions: every requirement line is `name==version`, the
    CPU lock takes torch's CPU build and the CUDA lock PyPI's CUDA build with its nvidia wheels."""
    import tomllib

    names = {}
    for lock in ("cpu", "cuda"):
        lines = [line for line in (REPO / "requirements" / f"{lock}.txt").read_text().splitlines()
                 if line and not line.startswith((" ", "#"))]
        assert lines and all("==" in line and ";" not in line.split("==")[0] for line in lines), lock
        names[lock] = {line.split("==")[0].lower(): line.split("==")[1] for line in lines}
    assert names["cpu"]["torch"].endswith("+cpu") and "nvidia-nccl-cu13" not in names["cpu"]
    assert "+" not in names["cuda"]["torch"] and any(n.startswith("nvidia-") for n in names["cuda"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [d.split(">")[0].split("<")[0].split("=")[0].strip().lower()
              for d in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for lock in names.values():
        assert set(wanted) <= set(lock), set(wanted) - set(lock)


def test_reference_comparison_tolerates_near_ties_only():
    decode = " ".join  # tokens are words here
    refs = [Greedy(["a", "b", "c"], [1.0, 1.0, 1.0]), Greedy(["a", "b", "c"], [1.0, MARGIN / 2, 1.0])]
    assert_generations_match(["a b c", "a b c"], refs, decode, [])
    assert_generations_match(["a b c", "a x y"], refs, decode, [])  # row 2 may differ after its near tie
    with pytest.raises(AssertionError):
        assert_generations_match(["a b x", "a b c"], refs, decode, [])  # a decisive step taken otherwise
    with pytest.raises(AssertionError):
        assert_generations_match(["a b c", "x"], refs, decode, [])  # differs before the tie
    with pytest.raises(AssertionError, match="decisive"):
        assert_generations_match(["a b c", "a b c"], [refs[1], refs[1]], decode, [])  # too weak to mean much
    assert_generations_match(["a", "a"], refs, decode, [" b"])  # cut at the stop string, decided early


def test_a_one_process_cpu_run_compiles_no_deepspeed_op(tmp_path):
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (a minute of C++ on a new machine):
    one process needs none."""
    import socket

    with socket.socket() as free:  # a port no other test run on this machine holds
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = ("import os; os.environ.update(WORLD_SIZE='1', RANK='0', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1', "
            f"MASTER_PORT='{port}'); from trainers.trainer import init_distributed; init_distributed(); "
            "import deepspeed.ops; print('shm', deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'])")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shm False" in proc.stdout and "built successfully" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").rglob("*.so"))
