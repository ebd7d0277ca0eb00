"""The bad inputs and faults a new user meets, as one table walked through the real commands: `fmtspec train`,
`fmtspec experiment --check`, `fmtspec leaderboard` and `lm_eval --model promot_hf|hf`. Every row must end with
a non-zero exit, exactly one line naming the problem (no traceback), and the run folder it touched unchanged
(or, for a run that could not start, nothing that blocks the corrected command).

The `fmtspec` rows run in this process (`fmtspec.cli.main`). The `lm_eval` rows run in one subprocess, each
through lm-eval's own command-line parser, with an exception that escapes handed to `sys.excepthook` as the
interpreter would (the hook fmtspec installs is what makes them one line)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "harness_tasks" / "fixtures"
TINY = REPO / "configs" / "tiny"


@dataclass
class Row:
    name: str
    command: str  # train | experiment | leaderboard | lm_eval
    args: list[str]
    expect: str  # a piece of the one line
    env: dict = field(default_factory=dict)
    untouched: Path | None = None  # a folder that must come out byte for byte as it went in
    not_started: Path | None = None  # a run folder that must not look started (no run.json, no checkpoint)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def one_line(stderr: str, prefixes=("fmtspec:", "fmtspec ", "promot_hf:")) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith(prefixes)]


@pytest.fixture(scope="module")
def world(tiny_models, tmp_path_factory):
    """Everything the rows break: data with a missing field and with a non-UTF-8 byte, a model whose weights
    are cut short, a soft prompt of the wrong width, a finished run, results files that are not sound."""
    from model_adapters.soft_prompt import save_soft_prompt
    from trainers.config import load_config
    from trainers.train import train

    root = tmp_path_factory.mktemp("bad_inputs")
    w = {"root": root, "t5": tiny_models["t5"], "mt5": tiny_models["mt5"]}

    missing = root / "data_missing_field"  # RTE records without their hypothesis
    shutil.copytree(FIXTURES / "rte", missing / "rte")
    for split in ("train", "validation"):
        path = missing / "rte" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "hypothesis"}) + "\n" for r in rows))
    w["missing"] = missing
    latin1 = root / "data_latin1"  # a byte of another encoding on line 2
    shutil.copytree(FIXTURES / "rte", latin1 / "rte")
    for split in ("train", "validation"):
        path = latin1 / "rte" / f"{split}.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[1] = lines[1].replace(b"The", b"Th\xe9", 1)
        path.write_bytes(b"".join(lines))
    w["latin1"] = latin1

    corrupt = root / "corrupt_t5"
    shutil.copytree(tiny_models["t5"], corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    w["corrupt"] = corrupt

    w["narrow_prompt"] = save_soft_prompt(root / "narrow_prompt", torch.zeros(4, 8), base_model=str(tiny_models["t5"]),
                                          encoder_decoder=True)
    w["prompt"] = save_soft_prompt(root / "prompt", torch.zeros(4, 64), base_model=str(tiny_models["t5"]),
                                   encoder_decoder=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        w["run"] = train(load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}"]), root / "run")

    w["results_scale"] = root / "results_scale.json"  # acc reported on 0-100 where lm-eval writes a fraction
    w["results_scale"].write_text(json.dumps(_results_file({"fmtspec_rte": {"acc,none": 55.0}})))
    w["results_foreign"] = root / "results_foreign.json"
    w["results_foreign"].write_text(json.dumps({"accuracy": 0.5}))

    experiment = (REPO / "experiments" / "demo_tiny.yaml").read_text()
    for name, change in {"launcher": "launcher: no-such-launcher\n", "base": None, "batch": None}.items():
        text = experiment
        if name == "launcher":
            text = change + text
        elif name == "base":
            text = text.replace("base_model: tiny:mt5", "base_model: ./no/such/model")
        else:
            text = text.replace("{batch_size: 8,", "{batch_size: -3,")
        assert text != experiment
        (root / f"experiment_{name}.yaml").write_text(text)
    return w


def _results_file(tasks: dict) -> dict:
    """An lm-eval 0.4.13 results file holding `tasks` (metric dicts), in its layout."""
    data = {"results": {t: {"alias": t, **m} for t, m in tasks.items()}, "group_subtasks": {t: [] for t in tasks},
            "configs": {t: {"task": t, "num_fewshot": 0, "output_type": "generate_until"} for t in tasks},
            "versions": {t: 1.0 for t in tasks}, "n-shot": {t: 0 for t in tasks},
            "higher_is_better": {t: {"acc": True} for t in tasks},
            "n-samples": {t: {"original": 10, "effective": 10} for t in tasks},
            "config": {"model": "hf", "model_args": "pretrained=x", "limit": None}, "lm_eval_version": "0.4.13",
            "date": 1764600000.0}
    return data


def rows(w) -> list[Row]:
    run, t5 = w["run"], w["t5"]
    finetune = str(TINY / "finetune.yaml")
    model = ["--set", f"model={w['mt5']}"]
    lm = ["--device", "cpu", "--limit", "2"]
    root = w["root"]
    return [
        # fmtspec train
        Row("unknown config key", "train", [finetune, *model, "--set", "batch_sise=4", "--output", root / "t1"],
            "batch_size", not_started=root / "t1"),
        Row("batch size out of range", "train", [finetune, *model, "--set", "batch_size=0", "--output", root / "t2"],
            "'batch_size' must be at least 1", not_started=root / "t2"),
        Row("negative steps", "train", [finetune, *model, "--set", "model_training.steps=-5", "--output", root / "t3"],
            "model_training.steps", not_started=root / "t3"),
        Row("model folder missing", "train", [finetune, "--set", "model=/no/such/model", "--output", root / "t4"],
            "no such folder", not_started=root / "t4"),
        Row("model weights cut short", "train", [finetune, "--set", f"model={w['corrupt']}", "--output", root / "t5"],
            "cannot load the weights", not_started=root / "t5"),
        Row("record without a field", "train", [finetune, *model, "--output", root / "t6"],
            "field 'hypothesis' is missing", env={"FMTSPEC_DATA_DIR": str(w["missing"])}, not_started=root / "t6"),
        Row("data not UTF-8", "train", [finetune, *model, "--output", root / "t7"], "not UTF-8",
            env={"FMTSPEC_DATA_DIR": str(w["latin1"])}, not_started=root / "t7"),
        Row("resume of nothing", "train", [finetune, *model, "--resume", "--output", root / "t8"], "does not exist"),
        Row("output is a file", "train", [finetune, *model, "--output", w["results_foreign"]], "is a file"),
        Row("resume with another config", "train", [finetune, *model, "--set", "seed=3", "--resume", "--output", run],
            "seed (was", untouched=run),
        Row("a finished run without --resume", "train", [finetune, *model, "--output", run], "not empty",
            untouched=run),
        # fmtspec experiment --check
        Row("launcher that does not exist", "experiment", [root / "experiment_launcher.yaml", "--check"],
            "no-such-launcher"),
        Row("base model missing", "experiment", [root / "experiment_base.yaml", "--check"], "no such folder"),
        Row("lm_eval batch size negative", "experiment", [root / "experiment_batch.yaml", "--check"],
            "lm_eval.batch_size"),
        # fmtspec leaderboard
        Row("score outside its range", "leaderboard",
            [f"x={w['results_scale']}", "--baseline", "x", "--output", root / "b1.md"], "outside 0..1"),
        Row("not an lm-eval results file", "leaderboard",
            [f"x={w['results_foreign']}", "--baseline", "x", "--output", root / "b2.md"], str(w["results_foreign"])),
        Row("results path missing", "leaderboard", ["x=/no/such/results", "--baseline", "x", "--output", root / "b3.md"],
            "/no/such/results"),
        # lm_eval --model promot_hf | hf
        Row("pretrained folder missing", "lm_eval",
            ["--model", "promot_hf", "--model_args", "pretrained=/no/such/model", "--tasks", "fmtspec_rte", *lm],
            "no such folder"),
        Row("hub id that cannot be loaded", "lm_eval",
            ["--model", "promot_hf", "--model_args", "pretrained=nobody-here/no-such-model", "--tasks", "fmtspec_rte",
             *lm], "cannot load pretrained=nobody-here/no-such-model"),
        Row("misspelt model argument", "lm_eval",
            ["--model", "promot_hf", "--model_args", f"pretrained={t5},soft_promt={w['prompt']}", "--tasks",
             "fmtspec_rte", *lm], "did you mean soft_prompt"),
        Row("model weights cut short (lm_eval)", "lm_eval",
            ["--model", "promot_hf", "--model_args", f"pretrained={w['corrupt']}", "--tasks", "fmtspec_rte", *lm],
            "cannot read model weights"),
        Row("prompt of another width", "lm_eval",
            ["--model", "promot_hf", "--model_args", f"pretrained={t5},soft_prompt={w['narrow_prompt']},prompt=on",
             "--tasks", "fmtspec_rte", *lm], "width"),
        Row("prompt_tasks matching no task", "lm_eval",
            ["--model", "promot_hf", "--model_args", f"pretrained={t5},soft_prompt={w['prompt']},prompt_tasks=fmtspec_nli",
             "--tasks", "fmtspec_rte", *lm], "matches none of the tasks"),
        Row("cache with prompts switched per task", "lm_eval",
            ["--model", "promot_hf", "--model_args", f"pretrained={t5},soft_prompt={w['prompt']},prompt_tasks=fmtspec_rte",
             "--tasks", "fmtspec_rte,fmtspec_cb_1shot", "--use_cache", root / "cache", *lm], "--use_cache"),
        Row("record without a field (stock hf)", "lm_eval",
            ["--model", "hf", "--model_args", f"pretrained={t5}", "--tasks", "fmtspec_rte", *lm],
            "field 'hypothesis' is missing", env={"FMTSPEC_DATA_DIR": str(w["missing"])}),
        Row("data not UTF-8 (lm_eval)", "lm_eval",
            ["--model", "promot_hf", "--model_args", f"pretrained={t5}", "--tasks", "fmtspec_rte", *lm], "not UTF-8",
            env={"FMTSPEC_DATA_DIR": str(w["latin1"])}),
    ]


def _fmtspec(row: Row, capsys, monkeypatch) -> tuple[int, str]:
    from fmtspec.cli import main

    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    rc = main([row.command, *map(str, row.args)])
    return rc, capsys.readouterr().err


DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, sys
    from lm_eval._cli.harness import HarnessCLI
    from fmtspec.lm_eval_batch import _reuse_task_index
    _reuse_task_index()  # lm-eval's task index built once, as fmtspec.lm_eval_batch does for its jobs
    out = []
    for case in json.load(open(sys.argv[1])):
        os.environ.update(case["env"])
        sys.argv = ["lm_eval", *case["argv"]]
        err, code = io.StringIO(), 0
        with contextlib.redirect_stderr(err):
            try:
                cli = HarnessCLI()
                cli.execute(cli.parse_args())
            except SystemExit as exc:
                code = exc.code
            except BaseException as exc:  # what the interpreter does with an exception that escapes
                sys.excepthook(type(exc), exc, exc.__traceback__)
                code = 1
        out.append({"rc": code, "stderr": err.getvalue()})
    print("RESULTS " + json.dumps(out))
""")


def test_every_bad_input_is_one_line_and_loses_nothing(world, capsys, monkeypatch, tmp_path):
    table = rows(world)
    assert len({row.name for row in table}) == len(table)
    before = {row.name: digest(row.untouched) for row in table if row.untouched}
    outcomes = {}
    for row in (r for r in table if r.command != "lm_eval"):
        outcomes[row.name] = _fmtspec(row, capsys, monkeypatch)

    lm_rows = [r for r in table if r.command == "lm_eval"]
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"argv": list(map(str, r.args)), "env": {"FMTSPEC_DATA_DIR": str(FIXTURES), **r.env}}
                                 for r in lm_rows]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(cases)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))[8:])
    for row, result in zip(lm_rows, results, strict=True):
        outcomes[row.name] = (result["rc"], result["stderr"])

    for row in table:
        rc, stderr = outcomes[row.name]
        assert rc not in (0, None), (row.name, stderr[-2000:])
        lines = one_line(stderr)
        assert len(lines) == 1 and row.expect in lines[0], (row.name, lines, stderr[-2000:])
        if row.untouched:
            assert digest(row.untouched) == before[row.name], row.name
        if row.not_started:
            from fmtspec.core.run_folder import never_started

            assert not row.not_started.exists() or never_started(row.not_started), row.name
    # the finished run is still a run readers load
    from fmtspec.core.run_folder import model_path, read_manifest

    manifest = read_manifest(world["run"])
    assert Path(model_path(world["run"], manifest), "model.safetensors").is_file()


def test_a_good_row_of_each_command_passes(world, capsys, monkeypatch):
    """The table's commands do succeed on sound input, so its failures are the inputs' doing."""
    good = [Row("experiment", "experiment", [REPO / "experiments" / "demo_tiny.yaml", "--check"], ""),
            Row("leaderboard", "leaderboard", [f"x={world['root'] / 'good.json'}", "--baseline", "x", "--output",
                                               world["root"] / "good.md"], "")]
    (world["root"] / "good.json").write_text(json.dumps(_results_file({"fmtspec_rte": {"acc,none": 0.55}})))
    for row in good:
        rc, stderr = _fmtspec(row, capsys, monkeypatch)
        assert rc == 0, (row.name, stderr[-2000:])
