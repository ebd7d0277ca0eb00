"""Config `logging` (trainers/run_logs.py): a tiny run's TensorBoard events and offline W&B run hold what
metrics.jsonl holds (same steps, same numbers), a resumed run shows no step twice, the libraries load only when
configured, problems are one line, and `fmtspec experiment` gives every run its own logging. Offline."""

import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
RECORD = {"step": 2, "stage": 1, "loss": 1.5, "lr": 0.001, "tokens_per_s": 10.0}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, quiet, its files in tmp_path/wandb_dir."""
    folder = tmp_path / "wandb_dir"
    folder.mkdir()
    for key, value in {"WANDB_DIR": str(folder), "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return folder


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(records) -> dict:
    """tag -> [(step, value)] as metrics.jsonl has them."""
    out = {}
    for record in records:
        for key, value in record.items():
            if key not in ("step", "stage"):
                out.setdefault(key, []).append((record["step"], value))
    return out


def tensorboard_scalars(folder) -> dict:
    """tag -> [(step, value)] as TensorBoard's reader shows them (restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_steps(folder, tag) -> list[int]:
    """Every event of `tag` in every event file, as written (nothing purged)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6, abs=1e-12), tag


def wandb_records(path):
    """The protobuf records of an offline run's .wandb file (LevelDB log format: 7-byte file header, 32 KiB
    blocks, each record a 7-byte header (crc, length, type) and its bytes, split across blocks if need be)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, parts = Path(path).read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(folder: Path) -> tuple:
    """(run record, {step: {key: value}}) of one offline-run-* folder."""
    files = list(folder.glob("run-*.wandb"))
    assert len(files) == 1, list(folder.iterdir())
    run, history = None, {}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            row = {k: v for k, v in row.items() if not k.startswith("_")}  # _step, _runtime, _timestamp
            history.setdefault(record.history.step.num, {}).update(row)
    return run, history


def test_tensorboard_and_wandb_hold_metrics_jsonl_and_resume_shows_no_step_twice(tiny_models, offline_data,
                                                                                 wandb_env, tmp_path):
    from trainers.config import load_config
    from trainers.train import train

    config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}", "logging.tensorboard=true",
                                                  "logging.wandb.project=fmtspec-tests",
                                                  "logging.wandb.mode=offline"])
    run = train(config, tmp_path / "run")
    first = metrics(run)
    assert [r["step"] for r in first] == [1, 2, 2, 3, 4, 4]  # losses every step, validations at 2 and 4
    want = expected_scalars(first)
    assert {"loss", "lr", "tokens_per_s", "val_score"} <= set(want)
    assert_same(tensorboard_scalars(run / "tensorboard"), want)

    run_id = json.loads((run / "wandb.json").read_text())["id"]
    [folder] = (wandb_env / "wandb").glob(f"offline-run-*-{run_id}*")  # -1 etc.: another in the same second
    record, history = wandb_run(folder)
    assert (record.run_id, record.display_name, record.project) == (run_id, "run", "fmtspec-tests")
    config_items = {item.key: json.loads(item.value_json) for item in record.config.update}
    assert config_items["method"] == "finetune" and config_items["logging"]["tensorboard"] is True  # resolved
    keys = {}
    for r in first:
        keys.setdefault(r["step"], set()).update(set(r) - {"step", "stage"})
    assert {step: set(row) for step, row in history.items()} == keys  # W&B's steps are ours
    for tag, points in want.items():
        assert [history[step][tag] for step, _ in points] == pytest.approx([v for _, v in points], rel=1e-6)

    # interrupted after step 4 without its checkpoint: --resume trains steps 3 and 4 again
    shutil.rmtree(run / "checkpoints" / "step-4")
    (run / "run.json").unlink()
    train(config, run, resume=True)
    second = metrics(run)
    assert [r["step"] for r in second] == [1, 2, 2, 3, 4, 4]
    assert raw_steps(run / "tensorboard", "loss") == [1, 2, 3, 4, 3, 4]  # both attempts are in the files ...
    assert_same(tensorboard_scalars(run / "tensorboard"), expected_scalars(second))  # ... the reader shows one
    resumed = sorted((wandb_env / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert len(resumed) == 2 and json.loads((run / "wandb.json").read_text())["id"] == run_id  # the same W&B run
    [again] = [f for f in resumed if f != folder]
    assert sorted(wandb_run(again)[1]) == [3, 4]


def test_logging_off_imports_neither_library(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from trainers.config import defaults
        from trainers.run_logs import RunLogs
        logs = RunLogs(defaults(), {str(tmp_path)!r})
        logs.log({RECORD!r})
        logs.close()
        print(sorted(m for m in ('wandb', 'tensorboard', 'torch') if m in sys.modules), logs.write)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stdout.split() == ["[]", "False"], proc.stderr
    assert list(tmp_path.iterdir()) == []


def _logging(**section):
    from trainers.config import load_config

    return load_config(None, raw={"method": "finetune", "model": "m", "tasks": ["fmtspec_rte"], "logging": section})


def test_a_missing_package_or_a_wandb_key_without_project_is_one_line(tmp_path, monkeypatch):
    from fmtspec.core import run_folder as rf
    from trainers import run_logs

    monkeypatch.setattr(run_logs, "_installed", lambda package: False)
    with pytest.raises(FmtspecError, match=r"^config key 'logging.tensorboard' needs the tensorboard package: "
                                           r"pip install tensorboard \(or remove logging.tensorboard\)$"):
        run_logs.RunLogs(_logging(tensorboard=True), tmp_path)
    with pytest.raises(FmtspecError, match=r"^config key 'logging.wandb' needs the wandb package: pip install wandb"):
        run_logs.check(_logging(wandb={"project": "p"}))
    run_logs.check(_logging(wandb={"project": "p", "mode": "disabled"}))  # off: nothing needed
    with pytest.raises(FmtspecError, match=r"^config key 'logging.wandb.mode' is set but 'logging.wandb.project' "
                                           r"is not: set the W&B project"):
        run_logs.check(_logging(wandb={"mode": "offline"}))
    with pytest.raises(FmtspecError, match=r"^config key 'logging.wandb.mode' is 'ofline'; choose one of online, "
                                           r"offline, disabled \(did you mean 'offline'\?\)$"):
        _logging(wandb={"project": "p", "mode": "ofline"})
    assert rf.tensorboard_dir(_logging(tensorboard="tb"), tmp_path) == tmp_path / "tb"  # the run folder's
    assert rf.tensorboard_dir(_logging(tensorboard="/x/tb"), tmp_path) == Path("/x/tb")
    assert rf.tensorboard_dir(_logging(), tmp_path) is None


def test_a_failing_wandb_init_is_one_warning_line_and_tensorboard_goes_on(tmp_path, monkeypatch, capsys):
    import wandb

    from trainers import run_logs

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", refuse)
    logs = run_logs.RunLogs(_logging(tensorboard=True, wandb={"project": "p"}), tmp_path)
    logs.log(RECORD)
    logs.log({**RECORD, "step": 3})
    logs.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["fmtspec train: warning: W&B logging is off for this run: wandb.init failed: UsageError: "
                     "api_key not configured (no-tty). call wandb.login(key=[your_api_key])"]
    assert tensorboard_scalars(tmp_path / "tensorboard")["loss"] == [(2, 1.5), (3, 1.5)]


def test_a_failed_start_with_logging_files_starts_again(tmp_path):
    from fmtspec.core import run_folder as rf

    (tmp_path / "config.json").write_text(json.dumps({"logging": {"tensorboard": "tb"}}))
    for name in ("tb", "tensorboard"):
        (tmp_path / name).mkdir()
    (tmp_path / "wandb.json").write_text("{}")
    assert rf.never_started(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert not rf.never_started(tmp_path)


def test_experiment_train_section_gives_every_run_its_logging(tmp_path):
    from fmtspec.experiment_file import load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: logged
        base_model: some/model
        tasks: [fmtspec_rte]
        train:
          tasks: [fmtspec_rte]
          logging: {{tensorboard: {tmp_path / 'tb'}, wandb: {{project: p, mode: offline}}}}
        runs:
          - {{label: pretrained, method: pretrained}}
          - {{label: ft, method: finetune, seeds: [0, 1]}}
          - {{label: pt, method: prompt_tuning, train: {{logging: {{tensorboard: true, wandb: {{name: mine}}}}}}}}
        """))
    exp = load_experiment(path, tmp_path / "out")
    logging = {spec.label: spec.raw_config["logging"] for spec in exp.runs if spec.raw_config}
    assert logging["ft_s0"] == {"tensorboard": str(tmp_path / "tb" / "ft_s0"),
                                "wandb": {"project": "p", "mode": "offline", "name": "ft_s0", "group": "logged"}}
    assert logging["ft_s1"]["tensorboard"] == str(tmp_path / "tb" / "ft_s1")
    assert logging["pt"] == {"tensorboard": True, "wandb": {"project": "p", "mode": "offline", "name": "mine",
                                                            "group": "logged"}}
