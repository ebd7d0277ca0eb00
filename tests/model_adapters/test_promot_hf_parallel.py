"""promot_hf data parallel: two processes give the results file of one.

Two `lm_eval` processes (CPU, gloo) are started with the variables a launcher sets (`torchrun`, `accelerate
launch`): RANK, WORLD_SIZE, MASTER_ADDR/PORT, and LOCAL_RANK=0 in both, as two machines of one process each,
the case where lm-eval's `hf` numbers both processes 0 (it takes the index on the machine; on CPUs it does
not split at all). Each runs the same two `lm_eval` command lines (tiny T5, tiny Llama) through
`fmtspec.lm_eval_batch`, so the start-up is paid once; the reference runs the same command lines in this
process. Everywhere the task index holds the --include_path tasks only (`only_included`): lm-eval's own
thousands of task YAMLs take seconds to index. Under prompt=auto two tasks are prompted and one is not.
Requests are split unevenly (5 documents over 2 ranks), so lm-eval pads rank 1's requests with copies of its
last one: the copies must be neither counted as truncated nor logged, and the records (`task_prompts`,
`truncated_requests`) come from both ranks.

Loglikelihoods are compared to 1e-4: at batch size 4 a rank batches other requests together than one process
does (other padding, other float sums, differences of ~4e-6); every other value of the results file and of the
logged samples (generations, is_greedy, metrics, the config) is compared exactly.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from test_promot_hf import _one_thread, prompts  # noqa: E402,F401  (fixtures)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "promot_hf"
NLI, NLI_B, QA = "promot_test_nli", "promot_test_nli_b", "promot_test_qa"
SAMPLES = {NLI: [0, 1, 2, 3, 4], NLI_B: [2, 5], QA: [0, 1, 2, 3, 4]}  # lm-eval: every rank needs a doc of each
# every NLI request is cut (so are lm-eval's copies of one, which must not count), generation still has room
MAX_LENGTH = {"t5": 20, "llama": 22}
VOLATILE = {"date", "total_evaluation_time_seconds", "task_hashes"}  # task_hashes: of the samples, compared below


def _tasks_folder(root: Path) -> Path:
    """The two test tasks and a copy of the NLI task under another name (prompted under prompt=auto)."""
    root.mkdir(parents=True)
    for name in (NLI, QA):
        shutil.copy(ASSETS / f"{name}.yaml", root)
    text = (ASSETS / f"{NLI}.yaml").read_text().replace(f"task: {NLI}", f"task: {NLI_B}")
    (root / f"{NLI_B}.yaml").write_text(text)
    return root


def _jobs(tiny_models, prompts, tasks: Path, out: Path) -> list[list[str]]:  # noqa: F811
    jobs = []
    for kind, max_length in MAX_LENGTH.items():
        model_args = (f"pretrained={tiny_models[kind]},dtype=float32,soft_prompt={prompts[kind][0]},"
                      f"prompt=auto,prompt_tasks={QA}|{NLI_B},max_length={max_length}")
        jobs.append(["--model", "promot_hf", "--model_args", model_args, "--device", "cpu", "--batch_size", "4",
                     "--tasks", f"{NLI},{NLI_B},{QA}", "--include_path", str(tasks), "--samples",
                     json.dumps(SAMPLES), "--log_samples", "--output_path", str(out / kind)])
    return jobs


def only_included(init):
    """TaskManager.__init__ indexing the --include_path tasks alone."""
    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        init(self, verbosity, include_path, False, metadata)
    return __init__


# a rank: the lm_eval command lines of a job file, with `only_included`
DRIVER = f"""
import sys
from lm_eval.tasks.manager import TaskManager
{inspect.getsource(only_included)}
TaskManager.__init__ = only_included(TaskManager.__init__)
from fmtspec.lm_eval_batch import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(jobs, world: int, root: Path) -> list[subprocess.Popen]:
    """`world` processes running `jobs`, as a launcher would start them (one process per machine)."""
    job_file = root / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.pop("ACCELERATE_USE_CPU", None)  # promot_hf sets it: CPU processes
        with open(root / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(job_file)], cwd=ASSETS, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    return procs


def _in_process(jobs, monkeypatch) -> None:
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.tasks.manager import TaskManager

    monkeypatch.setattr(TaskManager, "__init__", only_included(TaskManager.__init__))
    for job in jobs:
        monkeypatch.setattr(sys, "argv", ["lm_eval", *job])
        cli = HarnessCLI()
        cli.execute(cli.parse_args())


def _read(out: Path) -> tuple[dict, dict]:
    """(results file, {task: samples by doc_id}) of one run."""
    (results,) = out.rglob("results_*.json")
    samples = {}
    for file in out.rglob("samples_*.jsonl"):
        rows = [json.loads(line) for line in file.read_text().splitlines()]
        task = file.name.removeprefix("samples_").rsplit("_", 1)[0]  # samples_<task>_<date>.jsonl
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return json.loads(results.read_text()), samples


def _loglik_close(ours, theirs, where):
    """Per request, [[loglikelihood, is_greedy]]: is_greedy exactly, the value to 1e-4."""
    assert len(ours) == len(theirs), where
    for (a,), (b,) in zip(ours, theirs, strict=True):
        assert a[1] == b[1] and abs(float(a[0]) - float(b[0])) <= 1e-4, (where, a, b)


@pytest.mark.slow
def test_two_processes_write_the_results_file_of_one(tiny_models, prompts, tmp_path, monkeypatch):  # noqa: F811
    tasks = _tasks_folder(tmp_path / "tasks")
    parallel = _launch(_jobs(tiny_models, prompts, tasks, tmp_path / "dp"), 2, tmp_path)
    try:
        monkeypatch.chdir(ASSETS)  # the task YAMLs name their jsonl relative to this folder
        _in_process(_jobs(tiny_models, prompts, tasks, tmp_path / "one"), monkeypatch)
        for proc in parallel:
            proc.wait(timeout=240)
    finally:
        for proc in parallel:
            if proc.poll() is None:
                proc.kill()
    for rank, proc in enumerate(parallel):
        assert proc.returncode == 0, (tmp_path / f"rank{rank}.log").read_text()[-4000:]

    for kind in ("t5", "llama"):
        one, one_samples = _read(tmp_path / "one" / kind)
        dp, dp_samples = _read(tmp_path / "dp" / kind)  # a single results file: rank 0's
        assert {k: v for k, v in dp.items() if k not in VOLATILE} == \
               {k: v for k, v in one.items() if k not in VOLATILE}, kind
        records = one["config"]["promot_hf"]
        assert records["task_prompts"] == {NLI: None, NLI_B: str(prompts[kind][0]), QA: str(prompts[kind][0])}
        assert records["truncated_requests"][NLI] == 2 * len(SAMPLES[NLI])  # the copies are not counted
        assert records["truncated_requests"][NLI_B] == 2 * len(SAMPLES[NLI_B])  # one doc on each rank
        assert set(dp_samples) == {NLI, NLI_B, QA}
        for task, rows in one_samples.items():
            assert [r["doc_id"] for r in dp_samples[task]] == [r["doc_id"] for r in rows] == SAMPLES[task]
            for a, b in zip(dp_samples[task], rows, strict=True):
                where = (kind, task, a["doc_id"])
                assert {k: v for k, v in a.items() if k not in ("resps", "filtered_resps")} == \
                       {k: v for k, v in b.items() if k not in ("resps", "filtered_resps")}, where
                if task == QA:  # one answer per request, as one process logs it (no padding copies)
                    assert a["resps"] == b["resps"] and a["filtered_resps"] == b["filtered_resps"], where
                else:
                    _loglik_close(a["resps"], b["resps"], where)


# ---- the pieces, in one process ----


def test_cpu_processes_join_a_process_group(monkeypatch):
    """Several processes on CPUs: promot_hf has accelerate build a (gloo) process group, which it does only
    when ACCELERATE_USE_CPU says so; one process, or a value already set, is left alone."""
    from model_adapters.promot_hf import _cpu_processes

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    _cpu_processes({"device": "cpu"})
    assert "ACCELERATE_USE_CPU" not in os.environ
    monkeypatch.setenv("WORLD_SIZE", "2")
    _cpu_processes({"device": "cpu", "tp_plan": "auto"})  # tensor parallel: lm-eval's own set-up
    assert "ACCELERATE_USE_CPU" not in os.environ
    _cpu_processes({"device": "cpu"})
    assert os.environ["ACCELERATE_USE_CPU"] == "true"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    _cpu_processes({"device": "cpu"})
    assert os.environ["ACCELERATE_USE_CPU"] == "false"
    if not torch.cuda.is_available():
        monkeypatch.delenv("ACCELERATE_USE_CPU")
        _cpu_processes({})  # `hf`'s default device is cuda; with none on the machine the processes use CPUs
        assert os.environ["ACCELERATE_USE_CPU"] == "true"


def test_padding_copies_are_neither_counted_nor_logged(tiny_models, prompts):  # noqa: F811
    """lm-eval pads a rank's requests with copies of its last Instance and appends every answer to it; the
    copies are not counted as truncated, and `barrier` (called after each request type) drops their answers."""
    from lm_eval.api.instance import Instance

    from model_adapters.promot_hf import PromotHFLM

    lm = PromotHFLM(pretrained=str(tiny_models["t5"]), soft_prompt=str(prompts["t5"][0]), prompt_tasks=QA,
                    device="cpu", dtype="float32", batch_size=2, max_length=8)
    long = "The food was slow and the staff rude at the restaurant. question: the food was good? answer:"
    reqs = [Instance("loglikelihood", {}, (long, f" {c}"), i, (NLI, 0, 1)) for i, c in enumerate(("True", "False"))]
    gen = [Instance("generate_until", {}, (long, {"until": ["\n"], "max_gen_toks": 4}), 0, (QA, 0, 1))]
    for requests in (reqs + [reqs[-1]] * 2, gen + [gen[-1]]):  # as the evaluator runs them
        for answer, request in zip(getattr(lm, requests[0].request_type)(requests), requests, strict=True):
            request.resps.append(answer)
        lm.barrier()
    assert [len(r.resps) for r in reqs + gen] == [1, 1, 1]
    assert lm.get_model_info()["promot_hf"]["truncated_requests"] == {NLI: 2, QA: 1}


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_prompt_goes_to_the_embeddings_device(kind, tiny_models, prompts):  # noqa: F811
    """Under parallelize=True `self.device` stays the device asked for while device_map places the layers:
    the prompt, the token ids and the mask go where the input embeddings are computed. Here `self.device`
    names another device (meta) than the model's (cpu): the prompted forward pass and generation still run
    on the model's device and give what they give with the devices alike."""
    from model_adapters.promot_hf import PromotHFLM

    lm = PromotHFLM(pretrained=str(tiny_models[kind]), soft_prompt=str(prompts[kind][0]), prompt="on",
                    device="cpu", dtype="float32", batch_size=2)
    rows = [lm.tok_encode("Q: Who wrote the book? A:"), lm.tok_encode("Q: Where is the river? A:")]
    ids = torch.tensor([row[:6] for row in rows])
    mask = torch.ones_like(ids)
    labels = ids[:, :3].clone() if lm.backend == "seq2seq" else None
    lm._activate(str(prompts[kind][0]))
    expected = (lm._model_call(ids, mask, labels) if labels is not None else lm._model_call(ids),
                lm._generate_rows(rows, 4, ["\n"], {}))
    lm._device = torch.device("meta")
    got = (lm._model_call(ids, mask, labels) if labels is not None else lm._model_call(ids),
           lm._generate_rows(rows, 4, ["\n"], {}))
    assert got[0].device.type == "cpu" and torch.equal(got[0], expected[0])
    assert got[1] == expected[1]
