"""ZeRO-3 loads partitioned: under `engine.deepspeed: zero3` the model comes out of `from_pretrained` already
partitioned (transformers' HfDeepSpeedConfig + deepspeed.zero.Init), so no process holds the whole model before
deepspeed.initialize, and the weights loaded are bit for bit those of a plain load; saved and loaded back one
tensor at a time, whole on rank 0 only. Two CPU processes (gloo)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "harness_tasks" / "fixtures"
TINY = REPO / "configs" / "tiny"

# Each process: the load alone (partitioned right after it, before anything else), then the trainer build_trainer
# makes of it (start digest, a vocab-initialised soft prompt partitioned like the weights).
CHILD = r"""
import json, sys
import torch
from trainers.config import load_config
from trainers.trainer import init_distributed, partitioned_loading, rank, state_digest
from trainers.models import load_model
from trainers.train import build_trainer

model_path, run_dir = sys.argv[1], sys.argv[2]
init_distributed()
config = load_config(sys.argv[3], [f"model={model_path}", "engine.deepspeed=zero3", "prompt.init=vocab"])
with partitioned_loading(config) as ds:
    model, _, _ = load_model(model_path, config["dropout"])
params = dict(model.named_parameters())
out = {"rank": rank(), "zero3": ds is not None,
       "partitioned": sorted(n for n, p in params.items()
                             if getattr(p, "ds_status", None) is not None and p.ds_status.name == "NOT_AVAILABLE"
                             and p.numel() == 0),
       "names": sorted(params),
       "slice": sum(p.ds_tensor.numel() for p in params.values()),
       "whole": sum(p.ds_numel for p in params.values()),
       "digest": state_digest(model),
       "partitioned_after_load": all(p.numel() == 0 for p in params.values())}
from transformers.integrations import is_deepspeed_zero3_enabled
out["hf_zero3_after"] = is_deepspeed_zero3_enabled()
trainer, _ = build_trainer(config, run_dir, model_path)
prompt = trainer.module.prompts[0]
out.update(start_digest=trainer.start_digest, trainer_zero3=trainer.zero3, prompt_numel=prompt.numel(),
           prompt_external=id(prompt) in getattr(trainer.module, "_external_params", {}))
with trainer.gathered():
    out["prompt"] = prompt.detach().tolist()
# the save and load one tensor at a time: rank 0 writes and reads the files, the others keep their slices
import deepspeed
from pathlib import Path
saved = Path(run_dir) / "saved"
trainer.save_outputs(saved, model=True)
with deepspeed.zero.GatheredParameters(list(trainer.module.model.parameters()), modifier_rank=0):
    if rank() == 0:
        for p in trainer.module.model.parameters():
            p.data.zero_()
out["zeroed_digest"] = trainer.model_digest()
trainer.load_model_files(sorted((saved / "model").glob("*.safetensors")))
out["reloaded_digest"] = trainer.model_digest()
out["partitioned_after_reload"] = all(p.numel() == 0 for p in trainer.module.model.parameters())
print("RESULT " + json.dumps(out), flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # a live gloo group at exit can abort the process ("terminate called")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_loads_partitioned_through_zero_init_and_bit_identical(tiny_models, tmp_path):
    import torch

    from trainers.config import load_config
    from trainers.models import load_model
    from fmtspec.core.run_folder import weights_digest
    from trainers.soft_prompt_model import init_prompt

    path, config_file = str(tiny_models["mt5"]), str(TINY / "prompt_tuning.yaml")
    port = free_port()
    base = {**os.environ, "FMTSPEC_DATA_DIR": str(FIXTURES), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]  # files, not pipes: a full pipe would stall a collective
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, path, str(tmp_path / "run"), config_file],
                              stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=REPO,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r, log in enumerate(logs)]
    # the plain load meanwhile, in this process
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        config = load_config(config_file, [f"model={path}", "prompt.init=vocab"])
    model, tokenizer, _ = load_model(path, config["dropout"])
    plain = weights_digest(model.state_dict())
    pc = config["prompt"]
    expected_prompt = init_prompt(model, tokenizer, length=pc["length"], init="vocab", init_range=pc["init_range"],
                                  init_text=pc["init_text"], vocab_top=pc["vocab_top"], seed=config["seed"])
    results = []
    for proc, log in zip(procs, logs):
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.read_text()[-3000:]
        results.append(json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:]))
    names = sorted(n for n, _ in model.named_parameters())
    whole = sum(p.numel() for p in model.parameters())
    for out in results:
        assert out["zero3"]
        # partitioned by the load itself: every parameter is an empty local tensor with a slice elsewhere
        assert out["names"] == names and out["partitioned"] == names and out["partitioned_after_load"]
        assert out["whole"] == whole and out["slice"] < 0.6 * whole  # about half each (padding aside)
        assert out["digest"] == out["start_digest"] == plain  # the weights of a plain load, bit for bit
        assert not out["hf_zero3_after"]  # the HfDeepSpeedConfig lived for the load only
        # the soft prompt, partitioned like the weights and gathered by this module's forward
        assert out["trainer_zero3"] and out["prompt_numel"] == 0 and out["prompt_external"]
        assert torch.equal(torch.tensor(out["prompt"]), expected_prompt)
        # saved whole and loaded back one tensor at a time, into the partitions
        assert out["zeroed_digest"] != plain and out["reloaded_digest"] == plain and out["partitioned_after_reload"]
    assert sorted(out["rank"] for out in results) == [0, 1]
    from transformers import AutoModelForSeq2SeqLM

    saved = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "saved" / "model")  # save_pretrained's layout
    assert weights_digest(saved.state_dict()) == plain


def test_below_zero3_the_load_is_plain(tiny_models):
    from transformers.integrations import is_deepspeed_zero3_enabled

    from trainers.config import load_config
    from trainers.trainer import partitioned_loading
    from trainers.models import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMTSPEC_DATA_DIR", str(FIXTURES))
        config = load_config(TINY / "finetune.yaml", [f"model={tiny_models['mt5']}", "engine.deepspeed=zero2"])
    with partitioned_loading(config) as ds:
        assert ds is None and not is_deepspeed_zero3_enabled()
        model, _, _ = load_model(str(tiny_models["mt5"]), None)
    assert not any(hasattr(p, "ds_id") for p in model.parameters())
