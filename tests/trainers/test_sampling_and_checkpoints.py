"""Issue 17: data limits are seeded random samples of the whole split (WMT14's train split is its sub-corpora one
after the other, Europarl first), 1-shot training draws its demonstrations from the training split (never from
the split checkpoints are chosen on), prompt-only stages write no model weights, every checkpoint records its
size, and `keep_checkpoints` (auto: by model size) prunes what no stage reads."""

import json
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
TASK, KEY = "fmtspec_wmt14_en_fr", "wmt14_en_fr"


def _pairs(kind: str, n: int) -> list[dict]:
    return [{"translation": {"en": f"{kind} sentence number {i}.", "fr": f"{kind} phrase numéro {i}."}}
            for i in range(n)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A WMT14-like data dir: train is 20 "Europarl" pairs, then 20 "News" pairs; validation and test are news."""
    root = tmp_path_factory.mktemp("data")
    splits = {"train": _pairs("Europarl", 20) + _pairs("News", 20), "validation": _pairs("Validation", 10),
              "test": _pairs("Test", 10)}
    (root / KEY).mkdir()
    for split, rows in splits.items():
        (root / KEY / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(root))
        yield root


def _corpus(example) -> str:
    return example.doc["translation"]["en"].split()[0]


def test_a_limit_is_a_seeded_sample_of_the_whole_split(corpora):
    from harness_tasks.examples import render, sample_rows

    first = render(TASK, "train", limit=12)  # lm-eval's --limit: the first N, all Europarl here
    assert {_corpus(e) for e in first} == {"Europarl"} and [e.row for e in first] == list(range(12))
    sample = render(TASK, "train", limit=12, sample_seed=0)
    assert {_corpus(e) for e in sample} == {"Europarl", "News"}
    rows = [e.row for e in sample]
    assert rows == sorted(set(rows)) == sample_rows(40, 12, 0, key=KEY, split="train")
    assert [e.doc for e in sample] == [json.loads(line) for i, line in
                                       enumerate((corpora / KEY / "train.jsonl").read_text().splitlines())
                                       if i in rows]
    assert render(TASK, "train", limit=12, sample_seed=0) == sample  # the same seed, the same sample
    assert [e.row for e in render(TASK, "train", limit=12, sample_seed=1)] != rows
    assert render(TASK, "train", limit=40, sample_seed=0) == render(TASK, "train")  # a limit above the split: all
    # another split of the same task gets its own draw; a multi-million-row split costs only the chosen indices
    assert sample_rows(40, 12, 0, key=KEY, split="validation") != rows
    huge = sample_rows(40_836_715, 40_000, 0, key=KEY, split="train")
    assert len(set(huge)) == 40_000 and huge == sorted(huge) and huge[-1] < 40_836_715


def test_the_data_seed_defaults_to_the_runs_seed_and_is_resolved():
    from trainers.config import load_config

    base = {"method": "finetune", "model": "m", "tasks": [TASK]}
    assert load_config(None, raw=base)["data"]["seed"] == 0
    assert load_config(None, raw=base, overrides=["seed=5"])["data"]["seed"] == 5
    assert load_config(None, raw=base, overrides=["seed=5", "data.seed=7"])["data"]["seed"] == 7
    from trainers.data import sample_seed

    assert sample_seed({"seed": 3, "data": {"seed": None}}) == 3
    assert sample_seed({"seed": 3, "data": {"split": "train", "limit": 8}}) is None  # recorded before sampling


def test_keep_checkpoints_is_auto_null_or_a_number_and_the_paper_configs_keep_one():
    from trainers.config import NOT_IN_CACHE_KEY, load_config

    base = {"method": "finetune", "model": "m", "tasks": [TASK]}
    assert load_config(None, raw=base)["keep_checkpoints"] == "auto"
    assert load_config(None, raw=base, overrides=["keep_checkpoints=null"])["keep_checkpoints"] is None
    with pytest.raises(FmtspecError, match=r"^config key 'keep_checkpoints' is 'all'; choose auto, null \(all\)"):
        load_config(None, raw=base, overrides=["keep_checkpoints=all"])
    assert "keep_checkpoints" in NOT_IN_CACHE_KEY  # it never changes the weights: --resume may change it
    for path in sorted((REPO / "configs" / "promot").rglob("*.yaml")):
        config = load_config(path)
        assert config["keep_checkpoints"] == (1 if config["method"] != "prompt_tuning" else "auto"), path


def test_one_shot_training_draws_demonstrations_from_train_and_the_run_records_its_sample(corpora, tiny_models,
                                                                                         tmp_path):
    """WMT14's lm-eval few-shot split is validation, the split checkpoints are chosen on: 1-shot training still
    draws its demonstrations from train, validation stays 0-shot, and run.json records the sample's seed."""
    from harness_tasks.examples import render, sample_rows
    from trainers.config import load_config
    from trainers.train import train, training_examples

    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}", f"tasks=[{TASK}]", "shots=1",
                                                  "data.limit=12", "model_training.steps=2", "eval.max_new_tokens=4"])
    run = train(config, tmp_path / "run")
    m = json.loads((run / "run.json").read_text())
    recorded = m["config"]
    assert (recorded["data"]["seed"], recorded["data"]["limit"], m["seed"]) == (0, 12, 0)
    examples = training_examples(TASK, recorded, 0)  # rebuilt from what run.json records
    assert [e.row for e in examples] == sample_rows(40, 12, 0, key=KEY, split="train")
    assert {_corpus(e) for e in examples} == {"Europarl", "News"}
    train_en = {d["translation"]["en"] for d in (e.doc for e in render(TASK, "train"))}
    for ex in examples:  # "Translate English to French: <en> <fr>\n\n<query>"
        demo, query = ex.context.rsplit("\n\n", 1)
        assert any(demo.startswith(f"Translate English to French: {en} ") for en in train_en)
        assert demo != f"{query} {ex.target}"  # never its own demonstration
    # the scoring path keeps lm-eval's demonstrations (from validation)
    assert all("Validation" in e.context.split("\n\n")[0] for e in render(TASK, "test", shots=1, limit=3))
    # validation: 0-shot, the eval.limit sample by the same seed; predictions name the split's rows
    chosen = run / "checkpoints" / f"step-{m['checkpoint']['step']}"
    predicted = [json.loads(line)["doc"] for line in (chosen / "val_predictions.jsonl").read_text().splitlines()]
    assert predicted == sample_rows(10, 4, 0, key=KEY, split="validation")
    with pytest.raises(FmtspecError, match="has no split 'nope'"):
        render(TASK, "train", shots=1, limit=2, fewshot_split="nope")


def _sizes(run):
    out = {}
    for folder in sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1])):
        out[int(folder.name.split("-")[1])] = json.loads((folder / "trainer_state.json").read_text())
    return out


@pytest.fixture(scope="module")
def promot_runs(tiny_models, tmp_path_factory):
    """ProMoT on the bundled fixtures, 4 prompt + 6 model steps (a checkpoint every 2): keep_checkpoints auto on
    the tiny model (all kept), and auto as for a model of XL size (the threshold lowered)."""
    import trainers.trainer
    from trainers.config import load_config
    from trainers.train import train

    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(REPO / "harness_tasks" / "fixtures"))
        config = load_config(TINY / "promot.yaml", [f"model={tiny_models['mt5']}", "model_training.steps=6",
                                                    "eval.limit=2", "eval.max_new_tokens=4"])
        runs["small"] = train(config, tmp_path_factory.mktemp("small") / "run")
        mp.setattr(trainers.trainer, "AUTO_KEEP_MIN_PARAMETERS", 1)
        runs["xl"] = train(config, tmp_path_factory.mktemp("xl") / "run")
    return runs


def test_prompt_stages_write_no_model_weights_and_checkpoints_record_their_size(promot_runs):
    from trainers.trainer import disk_bytes

    run = promot_runs["small"]
    states = _sizes(run)
    assert sorted(states) == [2, 4, 6, 8, 10]  # auto on a tiny model: every checkpoint kept
    model_bytes = disk_bytes(run / "model")
    for step, state in states.items():
        folder = run / "checkpoints" / f"step-{step}"
        assert state["size_bytes"] == disk_bytes(folder) - disk_bytes(folder / "trainer_state.json")
        assert state["size_bytes"] == sum(state["size_bytes_by_part"].values())
        if state["trains"] == ["prompt"]:  # prompt, its optimizer state, the predictions: no model weights
            assert not (folder / "model").exists() and "model" not in state["size_bytes_by_part"]
            assert state["size_bytes"] < model_bytes / 20 and state["keep_checkpoints"] is None
        else:
            assert state["size_bytes_by_part"]["model"] == model_bytes


def test_auto_keep_keeps_the_chosen_and_the_newest_of_a_big_models_stage(promot_runs):
    run = promot_runs["xl"]
    m = json.loads((run / "run.json").read_text())
    stage1, stage2 = m["stages"]
    states = _sizes(run)
    # stage 1 (the prompt) keeps all; stage 2 (the model) its chosen and its newest
    assert sorted(states) == sorted({2, 4, stage2["chosen"]["step"], 10})
    assert stage1["chosen"]["step"] in states and len(states) < 5
    assert [states[s]["keep_checkpoints"] for s in (2, 4, 10)] == [None, None, 1]
    assert m["config"]["keep_checkpoints"] == "auto"


class _Stub:
    """What Trainer._prune reads, over a folder of empty checkpoints."""

    def __init__(self, run_dir, steps, tasks=1, keep=1):
        from fmtspec.core.run_folder import TRAINER_STATE, checkpoint_dir

        self.run_dir, self.step, self.stages_done = run_dir, max(steps), []
        self.tasks = [{"name": f"t{i}"} for i in range(tasks)]
        self.config = {"keep_checkpoints": keep}
        for step in steps:
            folder = checkpoint_dir(run_dir, step)
            folder.mkdir(parents=True)
            (folder / TRAINER_STATE).write_text("{}")

    def prune(self, stage, local, evaluations):
        from trainers.trainer import StageResult, Trainer

        self._keep_checkpoints = Trainer._keep_checkpoints.__get__(self)
        Trainer._prune(self, stage, local, StageResult(evaluations=evaluations))
        from fmtspec.core.run_folder import checkpoint_steps

        return checkpoint_steps(self.run_dir)


def test_pruning_keeps_each_tasks_best_prompt_and_a_finished_stages_chosen(tmp_path):
    from trainers.methods import Stage
    from trainers.trainer import Evaluation

    def ev(step, a, b):
        return Evaluation(step, {}, {"t0": a, "t1": b}, (a + b) / 2)

    # a multi-task prompt stage: choose() takes each task's prompt from its own best checkpoint
    stub = _Stub(tmp_path / "a", [2, 4, 6, 8], tasks=2)
    evals = [ev(2, 90, 0), ev(4, 0, 80), ev(6, 50, 50), ev(8, 10, 10)]
    assert stub.prune(Stage(1, ("prompt",), 8, 0.2, 2), 8, evals) == [2, 4, 6, 8]
    stub = _Stub(tmp_path / "b", [2, 4, 6, 8], tasks=1)
    evals = [Evaluation(s, {}, {"t0": v}, v) for s, v in ((2, 90), (4, 0), (6, 50), (8, 10))]
    assert stub.prune(Stage(1, ("prompt",), 8, 0.2, 2), 8, evals) == [2, 8]
    # stage 2's first checkpoint (step 10): stage 1 keeps only its chosen; keep 0 is the same as 1
    stub = _Stub(tmp_path / "c", [2, 4, 10], keep=0)
    stub.stages_done = [{"stage": 1, "trains": ["prompt"], "steps": 4, "chosen": {"step": 2}}]
    stub.step = 10
    assert stub.prune(Stage(2, ("model",), 6, 1e-3, 2), 6, [Evaluation(10, {}, {"t0": 1}, 1)]) == [2, 10]
