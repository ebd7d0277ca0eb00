"""Bad input ends with one line naming the problem, never a traceback or a silently wrong number (issue 16):
records without a field their task reads, files that are not UTF-8, results files on the wrong scale, and
promot_hf arguments that name nothing. Through the real entry points: the `lm_eval` command (one line, exit
status 1, no traceback), `lm_eval.simple_evaluate`, `harness_tasks.examples.render` (the trainers' path) and
`fmtspec leaderboard`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError
from harness_tasks.data import DATA, hash_split, load_split, read_jsonl
from harness_tasks.examples import load_docs, render
from harness_tasks.formats import FORMATS
from harness_tasks.metrics import process_results

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
LM_EVAL = Path(sys.executable).with_name("lm_eval")


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture files as $FMTSPEC_DATA_DIR, to break."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(root))
    return root


def edit(root: Path, key: str, split: str, change) -> Path:
    """Rewrite `root/key/split.jsonl` with `change(records)` applied."""
    path = root / key / f"{split}.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    change(records)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _lm_eval(*args, cwd, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([str(LM_EVAL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _only_line(done) -> str:
    """The command failed with one line of ours at the end of stderr and no traceback."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


# ---- records without a field their task reads ----


def _pop(index, *path):
    def change(records):
        record = records[index]
        for name in path[:-1]:
            record = record[name]
        record.pop(path[-1])
    return change


def _null(index, *path):
    def change(records):
        record = records[index]
        for name in path[:-1]:
            record = record[name]
        record[path[-1]] = None
    return change


@pytest.mark.parametrize("task, split, key, change, message", [  # `split` of data `key` is broken and rendered
    ("fmtspec_rte", "validation", "rte", _pop(2, "hypothesis"),
     r"rte/validation\.jsonl:3: field 'hypothesis' is missing \(the rte task reads premise, hypothesis, label; "
     r"1 of \d+ records lack one\)$"),
    ("fmtspec_rte", "validation", "rte", _null(0, "premise"), r"rte/validation\.jsonl:1: field 'premise' is null"),
    ("fmtspec_wmt16_en_de_1shot", "test", "wmt16_en_de", _pop(1, "translation", "de"),
     r"wmt16_en_de/test\.jsonl:2: field 'translation\.de' is missing"),
    ("fmtspec_triviaqa_1shot", "validation", "triviaqa", _null(0, "answer", "value"),
     r"triviaqa/validation\.jsonl:1: field 'answer\.value' is null"),
    ("fmtspec_webqs_1shot", "test", "webqs", lambda rs: rs[3].update(answers=[]),
     r"webqs/test\.jsonl:4: field 'answers' is an empty list"),
    ("fmtspec_openbookqa", "test", "openbookqa", _pop(0, "choices", "text"),
     r"openbookqa/test\.jsonl:1: field 'choices\.text' is missing"),
    # the demonstrations' split is checked too (rendered: validation, 1-shot from train)
    ("fmtspec_cb_1shot", "train", "cb", _null(1, "label"), r"cb/train\.jsonl:2: field 'label' is null"),
    # missing from every record (lm-eval's `Dataset.from_list` would drop the column: a KeyError)
    ("fmtspec_mini_copy", "test", "mini_copy", lambda rs: [r.pop("input") for r in rs],
     r"mini_copy/test\.jsonl:1: field 'input' is missing \(the mini_copy task reads input, answers\[0\]; "
     r"(\d+) of \1 records lack one\)$"),
])
def test_record_without_a_field_stops_rendering(data, task, split, key, change, message):
    edit(data, key, split, change)
    with pytest.raises(FmtspecError, match=message):
        render(task, DATA[key].eval_split, shots=1 if task.endswith("_1shot") else 0)


def test_fields_that_may_be_empty_still_load(data):
    # TriviaQA rc.nocontext aliases may be empty; SNLI's label -1 rows and unjudged McDonald's rows are dropped
    edit(data, "triviaqa", "validation", lambda rs: rs[0]["answer"].update(aliases=[]))
    assert render("fmtspec_triviaqa_1shot", "validation", shots=1)[0].target == read_jsonl(
        data / "triviaqa" / "validation.jsonl")[0]["answer"]["value"]
    before = len(load_docs("fmtspec_snli", "test"))
    edit(data, "snli", "test", lambda rs: rs[0].update(label=-1))
    assert len(load_docs("fmtspec_snli", "test")) == before - 1
    before = len(load_docs("fmtspec_mcd_reviews", "test"))
    edit(data, "mcd_reviews", "test", lambda rs: rs[0].update(policies_violated=""))
    assert len(load_docs("fmtspec_mcd_reviews", "test")) == before - 1


def _first_labelled(key: str) -> dict:
    spec = DATA[key]
    for split in spec.splits:
        for record in read_jsonl(FIXTURES / key / f"{split}.jsonl"):
            if record.get("label", 0) != -1:
                return record
    raise AssertionError(key)


@pytest.mark.parametrize("key", sorted(FORMATS))
def test_declared_fields_are_all_a_format_reads(key):
    """Without any field it does not declare, a record renders and scores the same: `Format.fields` is complete."""
    fmt, record = FORMATS[key], _first_labelled(key)
    declared = {field.split(".")[0].split("[")[0] for field in fmt.fields}
    bare = {name: value for name, value in record.items() if name in declared}
    assert (fmt.doc_to_text(bare), fmt.doc_to_target(bare)) == (fmt.doc_to_text(record), fmt.doc_to_target(record))
    assert process_results(key, bare, "x") == process_results(key, record, "x")


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` answering from a dict {(path, split): records}."""
    import datasets

    rows = {}
    monkeypatch.delenv("FMTSPEC_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, name=None, split=None, **kwargs: datasets.Dataset.from_list(rows[path, split]))
    return rows


def test_hub_rows_without_a_field(hub):
    rte = read_jsonl(FIXTURES / "rte" / "validation.jsonl")
    hub["aps/super_glue", "validation"] = rte[:3] + [dict(rte[3], premise=None)]
    with pytest.raises(FmtspecError, match=r"^hub dataset aps/super_glue \(rte\), split validation, row 3: field "
                                           r"'premise' is null \(the rte task reads premise, hypothesis, label; "
                                           r"1 of 4 records lack one\)$"):
        load_split("rte", "validation")
    webqs = read_jsonl(FIXTURES / "webqs" / "test.jsonl")
    hub["stanfordnlp/web_questions", "test"] = [webqs[0], dict(webqs[1], answers=[]), dict(webqs[2], answers=[None])]
    with pytest.raises(FmtspecError, match=r"split test, row 1: field 'answers' is an empty list .*2 of 3 records"):
        load_split("webqs", "test")
    arxiv = [r for s in ("train", "validation", "test") for r in read_jsonl(FIXTURES / "a2t" / f"{s}.jsonl")]
    hub["librarian-bots/arxiv-metadata-snapshot", "train"] = [dict(r, title=None) for r in arxiv]
    bad = next(r["id"] for r in arxiv if hash_split(r["id"], 20) == "test")
    with pytest.raises(FmtspecError, match=rf"^hub dataset librarian-bots/arxiv-metadata-snapshot, record id={bad} "
                                           r"\(fmtspec split test\): field 'title' is null"):
        load_split("a2t", "test")


# ---- files that are not text in their encoding ----


def test_undecodable_files_name_the_line(data, tmp_path, monkeypatch):
    path = data / "xsum" / "test.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"Officials", b"Offic\xe9ials", 1)  # Latin-1, not UTF-8
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(FmtspecError, match=r"xsum/test\.jsonl:2: not UTF-8 text \(byte 0xe9 at column \d+: "
                                           r"invalid continuation byte\)$"):
        render("fmtspec_xsum_1shot", "test", shots=1)
    csv_path = tmp_path / "reviews.csv"
    monkeypatch.delenv("FMTSPEC_DATA_DIR")
    monkeypatch.setenv("FMTSPEC_MCD_CSV", str(csv_path))
    csv_path.write_bytes(b"_unit_id,policies_violated,review\n1,na,fine\n2,na,\x81\n")  # 0x81: no cp1252 character
    with pytest.raises(FmtspecError, match=r"reviews\.csv:3: not the cp1252 CrowdFlower CSV \(byte 0x81 at column 6: "
                                           r"character maps to <undefined>\)$"):
        load_docs("fmtspec_mcd_reviews", "train")
    csv_path.write_bytes(b"_unit_id,policies_violated,review\n1,RudeService,fine\n2,RudeService\n")  # a short row
    with pytest.raises(FmtspecError, match=r"reviews\.csv:3: field 'review' is missing"):
        for split in ("train", "validation", "test"):
            load_docs("fmtspec_mcd_reviews", split)


# ---- through lm-eval ----


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=str(REPO / "harness_tasks"))


def test_simple_evaluate_stops_at_the_record(data, tiny_models, task_manager):
    import lm_eval

    edit(data, "rte", "validation", _null(1, "hypothesis"))
    with pytest.raises(FmtspecError, match=r"rte/validation\.jsonl:2: field 'hypothesis' is null"):
        lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_models['t5']},backend=seq2seq",
                                tasks=["fmtspec_rte"], task_manager=task_manager, limit=1, device="cpu")


def test_lm_eval_command_one_line_for_a_field_missing_everywhere(data, tiny_models, tmp_path):
    path = edit(data, "rte", "validation", lambda rs: [r.pop("hypothesis") for r in rs])
    n = len(read_jsonl(path))
    done = _lm_eval("--model", "hf", "--model_args", f"pretrained={tiny_models['t5']},backend=seq2seq",
                    "--tasks", "fmtspec_rte", "--limit", "1", "--device", "cpu", cwd=tmp_path,
                    env={"FMTSPEC_DATA_DIR": str(data)})
    assert _only_line(done) == (f"fmtspec: {path}:1: field 'hypothesis' is missing (the rte task reads premise, "
                                f"hypothesis, label; {n} of {n} records lack one)")


# ---- results files on the wrong scale ----


def _results(root: Path, results: dict) -> Path:
    path = root / "out" / "model" / "results_2026-01-01T10-00-00.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"results": results, "config": {"model_args": "pretrained=m"}}))
    return path


@pytest.mark.parametrize("results, message", [
    ({"fmtspec_rte": {"acc,none": 55.0}}, "task fmtspec_rte: acc,none = 55.0 is outside 0..1 (lm-eval reports it "
                                          "as a fraction, which the board shows x100)"),
    ({"fmtspec_wmt16_en_de_1shot": {"bleu,none": 120.5}}, "task fmtspec_wmt16_en_de_1shot: bleu,none = 120.5 is "
                                                          "outside 0..100 (bleu is on 0-100)"),
    ({"fmtspec_cb_1shot": {"acc,none": 0.5, "fmt_label_share,none": 1.5}},
     "task fmtspec_cb_1shot: fmt_label_share,none = 1.5 is outside 0..1 (lm-eval reports it as a fraction, which "
     "the board shows x100)"),
    ({"fmtspec_cb_1shot": {"acc,none": 0.5}, "fmtspec_suite_1shot": {"norm_avg,none": 4200.0}},
     "task fmtspec_suite_1shot: norm_avg,none = 4200.0 is outside 0..100 (norm_avg is on 0-100)"),
    ({"fmtspec_rte": {"acc,none": 0.5, "acc_stderr,none": -0.1}},
     "task fmtspec_rte: acc_stderr,none = -0.1 is negative (a standard error is >= 0)"),
])
def test_leaderboard_refuses_values_outside_their_range(tmp_path, capsys, results, message):
    from fmtspec.cli import main

    path = _results(tmp_path, results)
    assert main(["leaderboard", f"m={tmp_path / 'out'}", "--baseline", "m", "--output", str(tmp_path / "b.md")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fmtspec leaderboard: {path}: {message}"]
    assert not (tmp_path / "b.md").exists()


def test_leaderboard_takes_values_in_range(tmp_path):
    from fmtspec.cli import main

    _results(tmp_path, {"fmtspec_rte": {"acc,none": 1.0, "acc_stderr,none": "N/A", "score,none": 100.0},
                        "fmtspec_wmt16_en_de_1shot": {"bleu,none": 35.2, "bleu_stderr,none": 0.0},
                        "other_task": {"perplexity,none": 5500.0}})
    assert main(["leaderboard", f"m={tmp_path / 'out'}", "--baseline", "m", "--output", str(tmp_path / "b.md")]) == 0
    board = (tmp_path / "b.md").read_text()
    assert "| acc | 100.00 |" in board and "| bleu | 35.20 |" in board
    assert "5500" in board  # another task's metric: shown as it is, no range known


# ---- promot_hf arguments ----


def _promot_error(**kwargs) -> str:
    from model_adapters.promot_hf import PromotHFLM

    with pytest.raises(FmtspecError) as info:
        PromotHFLM(device="cpu", **kwargs)
    assert info.value.where == "promot_hf" and "\n" not in str(info.value)
    return str(info.value)


def test_promot_hf_arguments_that_name_nothing(tiny_models, tmp_path, monkeypatch):
    t5 = tiny_models["t5"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert _promot_error(pretrained="runs/missing") == "pretrained=runs/missing: no such folder"
    assert _promot_error(pretrained="./missing") == "pretrained=./missing: no such folder"
    assert _promot_error(pretrained="a/b/c") == ("pretrained=a/b/c: no such folder, and not a hub model id "
                                                 "(<name> or <namespace>/<name>)")
    assert _promot_error(pretrained=str(t5), soft_promt="x") == (
        "unknown model argument soft_promt= (neither promot_hf's, hf's nor the model's); did you mean soft_prompt=?")
    assert _promot_error(pretrained=str(t5), batchsize="2").endswith("did you mean batch_size=?")
    for name, damage in [("truncated", lambda b: b[: len(b) // 2]), ("random", lambda b: os.urandom(4096))]:
        broken = shutil.copytree(t5, tmp_path / name)
        weights = broken / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        message = _promot_error(pretrained=str(broken))
        assert message.startswith(f"cannot read model weights {weights}: Error while deserializing header: "), message


def test_promot_hf_prompt_tasks_matching_no_task(offline_data, tiny_models, task_manager, tmp_path):
    import lm_eval
    import torch

    from model_adapters.soft_prompt import save_soft_prompt

    t5 = tiny_models["t5"]
    prompt = save_soft_prompt(tmp_path / "prompt", torch.zeros(2, 64), base_model=str(t5), encoder_decoder=True)
    with pytest.raises(FmtspecError, match=r"^prompt_tasks=fmtspec_rt\|fmtspec_cb matches none of the tasks of "
                                           r"this run \(fmtspec_rte, fmtspec_wic_1shot\)") as info:
        lm_eval.simple_evaluate(model="promot_hf", model_args=f"pretrained={t5},soft_prompt={prompt},"
                                "prompt_tasks=fmtspec_rt|fmtspec_cb", tasks=["fmtspec_rte", "fmtspec_wic_1shot"],
                                task_manager=task_manager, limit=1, device="cpu")
    assert info.value.where == "promot_hf"


def test_lm_eval_command_one_line_for_a_missing_model_folder(tmp_path):
    done = _lm_eval("--model", "promot_hf", "--model_args", f"pretrained={tmp_path / 'nope'}", "--device", "cpu",
                    "--tasks", "fmtspec_rte", cwd=tmp_path, env={"FMTSPEC_DATA_DIR": str(FIXTURES)})
    assert _only_line(done) == f"promot_hf: pretrained={tmp_path / 'nope'}: no such folder"
