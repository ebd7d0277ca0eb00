"""`fmtspec experiment` on a node with GPUs (issue 18), on the CPU with fake device lists: which GPUs each training
run and each lm_eval worker gets (its environment and command line), that no two workers running at once share
a GPU, that training gets every GPU, and that on a machine without GPUs nothing changes. The process start is
stubbed (fmtspec.experiment's `subprocess`): nothing is trained or scored."""

import io
import json
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

import fmtspec.devices as devices
import fmtspec.experiment as experiment
import fmtspec.processes as procs
import fmtspec.scoring as scoring
from fmtspec.core.errors import FmtspecError

REPO = Path(__file__).resolve().parents[2]
BASE = """\
name: x
base_model: some/model
tasks: [fmtspec_rte]
train: {tasks: [fmtspec_rte], batch_size: 64, micro_batch_size: 8}
runs:
  - {label: pretrained, method: pretrained}
  - {label: ft, method: finetune}
"""


def load(tmp_path, extra="", runs=""):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE + runs + textwrap.dedent(extra))
    return experiment.load_experiment(path, tmp_path / "out")


class Processes:
    """A stand-in for `subprocess` in fmtspec.processes and fmtspec.scoring: records every process started (command, environment,
    the lm_eval command lines of a worker's job file), lets each "run" for `seconds`, and checks that no two
    processes running at once were given the same GPU. A training process writes its run.json; an lm_eval worker
    writes a results file for each of its jobs and prints lm_eval_batch's markers."""

    PIPE, STDOUT = subprocess.PIPE, subprocess.STDOUT
    SubprocessError = subprocess.SubprocessError
    run = staticmethod(subprocess.run)

    def __init__(self, seconds=0.0):
        self.seconds, self.started, self.lock = seconds, [], threading.Lock()
        self.running: dict[int, set] = {}
        self.clashes, self.most_at_once = [], 0
        self.Popen = self._popen

    def _popen(self, cmd, env=None, **_):
        env = dict(env or {})
        gpus = {g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g}
        started = {"cmd": list(cmd), "env": env, "gpus": gpus}
        lines = []
        if "fmtspec.lm_eval_batch" in cmd:
            started["jobs"] = json.loads(Path(cmd[-1]).read_text())
            for i, argv in enumerate(started["jobs"]):
                out = Path(argv[argv.index("--output_path") + 1]) / "model"
                out.mkdir(parents=True, exist_ok=True)
                tasks = argv[argv.index("--tasks") + 1].split(",")
                (out / f"results_{i}.json").write_text(json.dumps({"results": {t: {} for t in tasks}}))
                lines += [f"fmtspec-batch: job {i}: lm_eval ...\n", f"scoring job {i}\n",
                          f"fmtspec-batch: job {i} done\n"]
        else:
            run_dir = Path(cmd[cmd.index("--output") + 1])
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "run.json").write_text(json.dumps({"format": "fmtspec-run/1"}))
            lines.append("trained\n")
        with self.lock:
            for other in self.running.values():
                if other & gpus:
                    self.clashes.append(sorted(other & gpus))
            key = len(self.started)
            self.running[key] = gpus
            self.started.append(started)
            self.most_at_once = max(self.most_at_once, len(self.running))
        time.sleep(self.seconds)
        return types.SimpleNamespace(stdout=io.StringIO("".join(lines)), wait=lambda: self._end(key))

    def _end(self, key):
        with self.lock:
            self.running.pop(key, None)
        return 0

    def of(self, kind):
        return [s for s in self.started if ("fmtspec.lm_eval_batch" in s["cmd"]) == (kind == "score")]


@pytest.fixture
def processes(monkeypatch):
    fake = Processes(seconds=0.15)
    for module in (procs, scoring):  # the modules that start processes
        monkeypatch.setattr(module, "subprocess", fake)
    return fake


@pytest.fixture
def gpus(monkeypatch):
    """gpus("0,1,2,3"): the machine shows these (CUDA_VISIBLE_DEVICES); gpus(None): none, no nvidia-smi."""
    monkeypatch.setattr(devices, "_nvidia_smi_count", lambda: 0)
    for name in ("DEEPSPEED", "PYTHON"):  # the launcher's own settings: not this machine's
        monkeypatch.delenv(name, raising=False)

    def show(ids):
        if ids is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ids)

    return show


def score_jobs(tmp_path, n):
    return [scoring.score_job({"pretrained": f"model{i}"}, ["fmtspec_rte"], tmp_path / f"r{i}", {"batch_size": 4},
                                 tmp_path / "logs" / f"{i}.log", what=f"job {i}") for i in range(n)]


# ---- the setting and the devices --------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ("gpus: -1", "'gpus' must be auto, a number of GPUs (0: none) or a list of distinct GPU numbers"),
    ("gpus: all", "got 'all'"),
    ("gpus: [0, 0]", "got [0, 0]"),
    ("gpus: []", "got []"),
    ("gpus: [0, cuda1]", "got [0, 'cuda1']"),
    ("gpu: 2", "unknown key 'gpu' (did you mean 'gpus'?)"),
])
def test_bad_gpus_fail_with_one_line(tmp_path, value, message):
    with pytest.raises(FmtspecError) as err:
        load(tmp_path, value + "\n")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gpus_setting_auto_count_and_list(tmp_path, gpus):
    assert load(tmp_path).gpus == "auto" and load(tmp_path, "gpus: null\n").gpus == "auto"
    gpus("4,5,6,7")
    assert devices.experiment_gpus(load(tmp_path)) == ["4", "5", "6", "7"]
    assert devices.experiment_gpus(load(tmp_path, "gpus: 2\n")) == ["4", "5"]
    assert devices.experiment_gpus(load(tmp_path, "gpus: [7, 5]\n")) == ["7", "5"]
    assert devices.experiment_gpus(load(tmp_path, "gpus: 0\n")) == []
    with pytest.raises(FmtspecError,
                       match=r"gpus: 8, but this machine shows 4 GPU\(s\) \(CUDA_VISIBLE_DEVICES='4,5,6,7'\)"):
        devices.experiment_gpus(load(tmp_path, "gpus: 8\n"))
    with pytest.raises(FmtspecError, match="gpus: GPU 1 is not one this machine shows"):
        devices.experiment_gpus(load(tmp_path, "gpus: [4, 1]\n"))
    gpus(None)
    assert devices.experiment_gpus(load(tmp_path)) == []  # a CPU machine: none, and no error
    with pytest.raises(FmtspecError, match=r"shows 0 GPU\(s\) \(nvidia-smi -L\)"):
        devices.experiment_gpus(load(tmp_path, "gpus: 1\n"))


def test_visible_gpus_reads_cuda_visible_devices_else_nvidia_smi(monkeypatch):
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at an invalid entry
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f2a"}) == ["GPU-8f2a"]
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)\n"
               "  MIG 3g.40gb     Device  0: (UUID: MIG-c)\n")
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi")
    fake = types.SimpleNamespace(run=lambda *a, **k: types.SimpleNamespace(stdout=listing),
                                 SubprocessError=subprocess.SubprocessError)
    monkeypatch.setattr(devices, "subprocess", fake)
    assert devices.visible_gpus({}) == ["0", "1"]
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert devices.visible_gpus({}) == []


# ---- a CPU machine: as before ------------------------------------------------------------------------------


def test_without_gpus_nothing_changes(tmp_path, gpus, processes):
    """No GPU: `python -m fmtspec train` (or `launcher:`), `jobs` lm_eval workers, the environment and command
    lines of before (no CUDA_VISIBLE_DEVICES, no --device, no accelerate)."""
    gpus(None)
    exp = load(tmp_path, "jobs: 2\n", "  - {label: b, method: finetune}\n")
    experiment.train_all(exp)
    trains = processes.of("train")
    assert sorted(s["cmd"][-1] for s in trains) == [str(exp.run_dir("b")), str(exp.run_dir("ft"))]
    for started in trains:
        label = Path(started["cmd"][-1]).name
        assert started["cmd"] == [sys.executable, "-m", "fmtspec", "train",
                                  str(exp.output / "configs" / f"{label}.yaml"), "--output", str(exp.run_dir(label))]
        assert started["env"] == procs.offline_env(exp)
    assert processes.most_at_once == 2
    scoring.score_all(exp)
    scores = processes.of("score")
    assert len(scores) == 2 and sum(len(s["jobs"]) for s in scores) == 3  # 3 runs in `jobs` workers
    for started in scores:
        assert started["cmd"][:3] == [sys.executable, "-m", "fmtspec.lm_eval_batch"]
        assert started["env"] == procs.offline_env(exp) and "CUDA_VISIBLE_DEVICES" not in started["env"]
        assert not any("--device" in argv or "accelerate" in " ".join(argv) for argv in started["jobs"])
    assert all((exp.output / "results" / label / "score.json").is_file() for label in ("pretrained", "ft", "b"))
    assert scoring.run_scores.__defaults__[0] == 1  # fmtspec diagnose: one worker, as before


# ---- training on GPUs ------------------------------------------------------------------------------------


def test_training_gets_every_gpu_through_the_launcher(tmp_path, gpus, processes):
    gpus("0,1,2,3")
    exp = load(tmp_path)
    experiment.train_all(exp)
    (started,) = processes.of("train")
    config, run_dir = exp.output / "configs" / "ft.yaml", exp.run_dir("ft")
    assert started["cmd"] == [str(REPO / "scripts" / "train_single_node.sh"), str(config), "--output", str(run_dir)]
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert started["env"]["DEEPSPEED"] == f"{sys.executable} -m deepspeed.launcher.runner"
    # what the launcher does with them: one process per GPU, on those GPUs
    dry = subprocess.run(["bash", started["cmd"][0], "--dry_run", *started["cmd"][1:]], capture_output=True,
                         text=True, env={**started["env"], "DEEPSPEED": "deepspeed"}, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.split()[:3] == ["deepspeed", "--include", "localhost:0\\,1\\,2\\,3"]
    # DeepSpeed's own --num_gpus N would take GPUs 0..N-1 whatever CUDA_VISIBLE_DEVICES says: the first N listed
    dry = subprocess.run(["bash", started["cmd"][0], "--num_gpus", "2", "--dry_run", *started["cmd"][1:]],
                         capture_output=True, text=True, timeout=30,
                         env={**started["env"], "DEEPSPEED": "deepspeed", "CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert dry.returncode == 0 and dry.stdout.split()[:3] == ["deepspeed", "--include", "localhost:4\\,5"], dry.stderr


def test_a_run_takes_the_gpus_its_batch_fits(tmp_path, gpus, processes, capsys):
    """DeepSpeed needs batch_size = micro_batch_size x processes x accumulation: batch 64 in micro-batches of 8
    trains on 4 of 6 GPUs, of 32 on 2; without micro_batch_size (no accumulation) on one."""
    gpus("0,1,2,3,4,5")
    exp = load(tmp_path, "", "  - {label: b, method: finetune, train: {micro_batch_size: 32}}\n"
                             "  - {label: c, method: finetune, train: {micro_batch_size: null}}\n")
    experiment.train_all(exp)
    used = {Path(s["cmd"][-1]).name: s["env"]["CUDA_VISIBLE_DEVICES"] for s in processes.of("train")}
    assert used == {"ft": "0,1,2,3", "b": "0,1", "c": "0"}
    assert "train c: batch_size 64 with micro_batch_size 64 trains on 1 of its 6 GPUs" in capsys.readouterr().out


def test_a_given_launcher_is_kept_and_gets_the_gpus(tmp_path, gpus, processes):
    gpus("0,1")
    exp = load(tmp_path, f"launcher: {REPO / 'scripts' / 'train_single_node.sh'} --num_gpus 2\n")
    experiment.train_all(exp)
    (started,) = processes.of("train")
    assert started["cmd"][:3] == [str(REPO / "scripts" / "train_single_node.sh"), "--num_gpus", "2"]
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_runs_side_by_side_share_out_the_gpus(tmp_path, gpus, processes):
    """jobs: 2 on 4 GPUs: two runs at once on 2 GPUs each (their own rendezvous port); a chain after its parent."""
    gpus("0,1,2,3")
    exp = load(tmp_path, "jobs: 2\n",
               "  - {label: b, method: finetune}\n  - {label: c, method: finetune, init_from: ft}\n")
    experiment.train_all(exp)
    trains = processes.of("train")
    assert len(trains) == 3 and processes.most_at_once == 2 and not processes.clashes
    assert {started["env"]["CUDA_VISIBLE_DEVICES"] for started in trains} == {"0,1", "2,3"}
    for started in trains:
        port = started["cmd"][started["cmd"].index("--master_port") + 1]
        assert port == str(29500 + ["0,1", "2,3"].index(started["env"]["CUDA_VISIBLE_DEVICES"]))
    labels = [Path(s["cmd"][-1]).name for s in trains]
    assert labels.index("c") > labels.index("ft")
    # more runs at once than GPUs: one GPU each, as many at once as GPUs
    exp = load(tmp_path, "jobs: 8\n", "".join(f"  - {{label: r{i}, method: finetune}}\n" for i in range(5)))
    assert devices.train_slots(exp) == [["0"], ["1"], ["2"], ["3"]]


def test_gpus_0_trains_and_scores_on_the_cpu(tmp_path, gpus, processes):
    gpus("0,1")
    exp = load(tmp_path, "gpus: 0\n")
    experiment.train_all(exp)
    scoring.score_all(exp)
    (train,) = processes.of("train")
    assert train["cmd"][:4] == [sys.executable, "-m", "fmtspec", "train"] and train["env"]["CUDA_VISIBLE_DEVICES"] == ""
    (score,) = processes.of("score")
    assert score["env"]["CUDA_VISIBLE_DEVICES"] == "" and not any("--device" in argv for argv in score["jobs"])


# ---- scoring on GPUs ---------------------------------------------------------------------------------------


def test_many_checkpoints_one_worker_per_gpu(tmp_path, gpus, processes):
    """6 command lines on 4 GPUs: 4 workers at once, each pinned to its own GPU (--device cuda:0)."""
    gpus("4,5,6,7")
    exp = load(tmp_path)
    jobs = score_jobs(tmp_path, 6)
    workers = scoring.score_workers(exp, 6)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["4", "5", "6", "7"]
    scoring.run_scores(jobs, workers, procs.offline_env(exp))
    scores = processes.of("score")
    assert len(scores) == 4 and processes.most_at_once == 4 and not processes.clashes
    assert sorted(s["env"]["CUDA_VISIBLE_DEVICES"] for s in scores) == ["4", "5", "6", "7"]
    for started in scores:
        assert started["cmd"] == [sys.executable, "-m", "fmtspec.lm_eval_batch", started["cmd"][-1]]
        assert all(argv[-2:] == ["--device", "cuda:0"] for argv in started["jobs"])
        assert started["env"]["OMP_NUM_THREADS"]
    assert sorted(len(s["jobs"]) for s in scores) == [1, 1, 2, 2]
    assert all(job.results and job.ran for job in jobs)
    assert all(json.loads((job.out_dir / "score.json").read_text())["device"] is None for job in jobs)  # same key


def test_few_checkpoints_data_parallel(tmp_path, gpus, processes):
    """2 command lines on 8 GPUs: 2 workers, each `accelerate launch` in 4 processes on its own 4 GPUs; 3 on 8:
    3 workers of 2 GPUs (2 idle)."""
    gpus("0,1,2,3,4,5,6,7")
    exp = load(tmp_path)
    scoring.run_scores(score_jobs(tmp_path, 2), scoring.score_workers(exp, 2), procs.offline_env(exp))
    scores = processes.of("score")
    assert len(scores) == 2 and processes.most_at_once == 2 and not processes.clashes
    assert sorted(s["env"]["CUDA_VISIBLE_DEVICES"] for s in scores) == ["0,1,2,3", "4,5,6,7"]
    ports = set()
    for started in scores:
        cmd = started["cmd"]
        assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
        assert cmd[cmd.index("--num_processes") + 1] == "4"
        assert cmd[-3:-1] == ["-m", "fmtspec.lm_eval_batch"]
        ports.add(cmd[cmd.index("--main_process_port") + 1])
        assert not any("--device" in argv for argv in started["jobs"])
    assert len(ports) == 2
    three = scoring.score_workers(exp, 3)
    assert [(w.env["CUDA_VISIBLE_DEVICES"], w.processes) for w in three] == [("0,1", 2), ("2,3", 2), ("4,5", 2)]


def test_score_all_dispatches_by_the_rule(tmp_path, gpus, processes, capsys):
    gpus("0,1")
    exp = load(tmp_path, "", "  - {label: b, method: finetune}\n")
    scoring.score_all(exp)
    assert "3 lm_eval run(s) of 3 in 2 worker processes, one per GPU" in capsys.readouterr().out
    assert sorted(s["env"]["CUDA_VISIBLE_DEVICES"] for s in processes.of("score")) == ["0", "1"]
    assert not processes.clashes


def test_lm_eval_device_or_parallelize_as_written(tmp_path, gpus):
    gpus("0,1,2,3")
    written = scoring.score_workers(load(tmp_path, "jobs: 2\nlm_eval: {device: 'cuda:1'}\n"), 5)
    assert [(w.env["CUDA_VISIBLE_DEVICES"], w.args, w.processes) for w in written] == [("0,1,2,3", [], 1)] * 2
    split = scoring.score_workers(load(tmp_path, "jobs: 2\nlm_eval: {model_args: {parallelize: true}}\n"), 5)
    assert [(w.env["CUDA_VISIBLE_DEVICES"], w.args, w.processes) for w in split] == [("0,1", [], 1), ("2,3", [], 1)]


def test_lm_eval_batch_prints_its_markers_once_under_accelerate(monkeypatch, capsys):
    """Data-parallel, every process runs every job; only RANK 0 prints the lines `_run_batch` reads."""
    import lm_eval._cli.harness
    import lm_eval.utils

    from fmtspec import lm_eval_batch

    ran = []

    class CLI:
        def parse_args(self):
            return list(sys.argv)

        def execute(self, args):
            ran.append(args)

    monkeypatch.setattr(lm_eval._cli.harness, "HarnessCLI", CLI)
    monkeypatch.setattr(lm_eval.utils, "setup_logging", lambda: None)
    monkeypatch.setattr(lm_eval_batch, "_reuse_task_index", lambda: None)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for rank, printed in (("1", ""), ("0", "fmtspec-batch: job 0 done")):
        monkeypatch.setenv("RANK", rank)
        lm_eval_batch.run_jobs([["--tasks", "x"]])
        assert (printed in capsys.readouterr().out) if printed else capsys.readouterr().out == ""
    assert ran == [["lm_eval", "--tasks", "x"]] * 2
