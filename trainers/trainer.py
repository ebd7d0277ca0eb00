"""The Trainer: DeepSpeed set-up, the steps of one stage, validation, and atomic checkpoints (trainers/train.py
runs it, stage by stage).

The same code runs on a GPU cluster and on a CPU: DeepSpeed's engine in every case (bf16 on GPUs,
since T5 diverges in fp16; fp32 on CPU), the ZeRO stage from `engine.deepspeed`.

Adafactor under ZeRO >= 1: ZeRO hands the optimizer flat 1-D partitions instead of the weight matrices.
`optimizer: adafactor_t5x` (the paper's, trainers/optim.py) is told where each weight sits in them and
all-reduces its row/column statistics, so it stays T5X's factored rule at every ZeRO stage (a manifest note
says so). Hugging Face's `optimizer: adafactor` cannot factor flat partitions and silently becomes a different
(unfactored, more memory-hungry) optimizer: we keep the run going but warn, and record it in the manifest.

Several processes (`deepspeed`, `torchrun`, srun; see scripts/): every process draws the same global batches
and trains on its own slice, so N processes train exactly what one process does with the same global batch
(up to float summation order and per-process dropout draws). Validation batches are shared out and the
predictions gathered (under ZeRO-3 every process generates every batch in lockstep: its forward hooks are
collective). Rank 0 alone writes the run folder; the others wait at barriers.

Exact resume: a checkpoint holds the trained weights (safetensors), the sampler position, every process's
RNG state, and the optimizer and scheduler state in safetensors: `optimizer.safetensors` for a plain
optimizer, or one `optimizer-rank{r}.safetensors` per process for DeepSpeed's wrappers (ZeRO 1-3, bf16: each
process's fp32 master partition and moments). We do not use DeepSpeed's save_checkpoint: its files are pickles.
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmtspec.core import run_folder as rf
from fmtspec.core.atomic_files import atomic_folder, remove_folder
from fmtspec.core.errors import FmtspecError, read_json
from trainers.data import collate
from trainers.methods.base import Stage
from trainers.run_logs import RunLogs

DEEPSPEED_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
# Used when configs/ is not beside the package (a wheel install): the same as configs/deepspeed/zeroN.json.
BUILTIN_ZERO = {f"zero{n}": {"zero_optimization": {"stage": n}} for n in range(4)}


# -- processes ---------------------------------------------------------------------------------------------
# One process per accelerator (launched by `deepspeed`, `torchrun` or srun); every process runs the same code.
# Rank 0 alone writes the run folder (checkpoints, metrics, manifest); the others wait at barriers.
def init_distributed() -> None:
    """The process group (gloo on CPU, NCCL on GPUs), from the launcher's RANK/WORLD_SIZE/MASTER_* variables."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if torch.cuda.is_available():  # NCCL collectives before deepspeed.initialize need the process's own GPU
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if get_accelerator().device_name() == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One CPU process shares memory with nobody: skip DeepSpeed's shared-memory all-reduce op, which its
        # CPU backend otherwise JIT-compiles (a C++ build of a minute or more) on a machine's first run.
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    deepspeed.init_distributed(verbose=False)
    # DeepSpeed 0.19 calls torch's renamed collectives (all_gather_into_tensor, reduce_scatter_tensor); torch
    # warns at every call, hundreds of lines per run that its user can do nothing about
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if not getattr(init_distributed, "ends_at_exit", False):
        atexit.register(_destroy_process_group_at_exit)
        init_distributed.ends_at_exit = True


def _destroy_process_group_at_exit() -> None:
    """A gloo group still alive when the interpreter finalizes is torn down by its destructors in any order,
    which now and then aborts a process (SIGABRT) after a run that succeeded: end it first, at exit (not
    earlier: DeepSpeed keeps the group in its own globals for any later engine of the same process)."""
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    return _dist().get_rank() if _dist() else 0


def world_size() -> int:
    return _dist().get_world_size() if _dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        _dist().barrier()


def all_gather(obj) -> list:
    """Every process's `obj` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def all_sum(values: list[float]) -> list[float]:
    if world_size() == 1:
        return list(values)
    from deepspeed.accelerator import get_accelerator

    t = torch.tensor(values, dtype=torch.float64, device=get_accelerator().current_device_name())
    _dist().all_reduce(t)
    return t.tolist()


def on_main(fn):
    """`fn()` in rank 0 alone, its result in every process; its FmtspecError is raised in every process (the
    others would wait for rank 0 at the next collective forever)."""
    outcome, failure = (None, None), None
    if is_main():
        try:
            outcome = (None, fn())
        except FmtspecError as exc:
            outcome = (str(exc), None)
        except Exception as exc:  # raised here as it is; the others stop with one line
            failure, outcome = exc, (f"rank 0 failed: {type(exc).__name__}: {exc}", None)
    error, value = all_gather(outcome)[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise FmtspecError(error)
    return value


# -- stopping on a signal ----------------------------------------------------------------------------------
class Stopped(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) stopped the run. A KeyboardInterrupt, so that what
    cleans up after Ctrl-C cleans up after it too, and `except Exception` does not swallow it."""

    def __init__(self, signum: int, step: int | None = None, wrote: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.wrote = signum, step, wrote

    def line(self, run_dir: Path) -> str:
        steps = rf.checkpoint_steps(run_dir)
        kept = (f"{'checkpoint' if self.wrote else 'last checkpoint'} step-{steps[-1]} "
                f"{'written' if self.wrote else 'kept'}" if steps else "no checkpoint yet")
        at = f" at step {self.step}" if self.step is not None else ""
        return f"stopped by {signal.Signals(self.signum).name}{at}; {kept}; resume with --resume"


class _Signals:
    deferred = False  # inside a stage's steps: the loop stops at the next step boundary
    received: int | None = None  # the signal it is to stop for


_signals = _Signals()


@contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT stop the run like Ctrl-C: between two steps of a stage at the next step boundary (with a
    checkpoint when the last is older than `preempt_checkpoint_s`, see Trainer._stop), anywhere else at once
    (every write is atomic); a second signal stops at once. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _signals.deferred and _signals.received is None:
            _signals.received = signum
            return
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _signals.deferred, _signals.received = False, None


def rng_state() -> dict:
    """This process's random state (dropout): CPU, and the current GPU's when there is one."""
    state = {"cpu": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


@contextmanager
def single_process_env():
    """Without a launcher, give torch.distributed the variables a launcher would set (a free port), for the
    duration of the run only: a later subprocess (say lm_eval) must not inherit a port that is in use."""
    if "RANK" in os.environ and "MASTER_PORT" in os.environ:
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    added = {k: v for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                "MASTER_PORT": str(port)}.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def deepspeed_config(config: dict, world_size: int = 1) -> dict:
    name = config["engine"]["deepspeed"]
    if name in BUILTIN_ZERO:
        path = DEEPSPEED_DIR / f"{name}.json"
        ds = json.loads(path.read_text()) if path.is_file() else json.loads(json.dumps(BUILTIN_ZERO[name]))
    else:
        path = Path(name)
        if not path.is_file():
            raise FmtspecError(f"engine.deepspeed is {name!r}: neither zero0..zero3 nor a DeepSpeed JSON file")
        ds = read_json(path, "a DeepSpeed JSON file")
    micro = config["micro_batch_size"] or config["batch_size"]
    if config["batch_size"] % (micro * world_size):
        raise FmtspecError(f"batch_size {config['batch_size']} is not divisible by micro_batch_size x processes "
                           f"({micro} x {world_size})")
    precision = config["engine"]["precision"]
    bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_available())
    ds.update({
        "train_batch_size": config["batch_size"],
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config["batch_size"] // (micro * world_size),
        "zero_allow_untested_optimizer": True,  # Adafactor is a client optimizer DeepSpeed has not vetted
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},  # T5 overflows in fp16
        "steps_per_print": 10**9,
    })
    if config["gradient_clipping"]:
        ds["gradient_clipping"] = config["gradient_clipping"]
    else:  # DeepSpeed clips at norm 1.0 unless told otherwise; `gradient_clipping: null` means no clipping
        ds.setdefault("gradient_clipping", 0.0)
    return ds


# -- ZeRO-3: a partitioned model from the start -------------------------------------------------------------
@contextmanager
def partitioned_loading(config: dict):
    """Under ZeRO-3, the models that `from_pretrained` loads inside the block come partitioned: no process builds
    the whole model (without it each process loads all of it before deepspeed.initialize partitions it: mT5-XXL
    on 8 GPUs, ~400 GB of host memory on the node). Yields the run's DeepSpeed config; below ZeRO-3 None, and the
    block changes nothing.

    transformers' DeepSpeed integration does the load: while an HfDeepSpeedConfig of a ZeRO-3 config is alive,
    `from_pretrained` builds the model under `deepspeed.zero.Init` (each parameter partitioned as soon as its
    module is built, in the config's dtype, on the device) and copies the checkpoint in one module at a time: rank
    0 reads the file (memory-mapped: its pages are in rank 0's resident memory while it loads), the module's
    parameters are gathered, filled on rank 0 and partitioned again (the other processes read only names and
    shapes). The weights are bit for bit those of a plain load (tests/trainers/test_zero3_load.py); in bf16 they are
    rounded at the load instead of at deepspeed.initialize, to the same values. Models built by a constructor
    (`mini:` scratch models) are not partitioned by it: `partition_rest` does that.

    The HfDeepSpeedConfig lives for the block only: transformers consults it elsewhere as well (`generate` would
    synchronise every process at each new token), and the Trainer already runs ZeRO-3 validation in lockstep."""
    ds = deepspeed_config(config, world_size())
    if ds.get("zero_optimization", {}).get("stage", 0) != 3:
        yield None
        return
    from deepspeed.accelerator import get_accelerator
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    if get_accelerator().device_name() == "cpu":  # the gathers are host memory from the load on
        release_freed_host_memory()
    keep = HfDeepSpeedConfig(ds)  # noqa: F841 (transformers holds a weak reference: this keeps it alive)
    try:
        yield ds
    finally:
        unset_hf_deepspeed_config()


def zero3_dtype(ds_config: dict) -> torch.dtype:
    """The dtype of ZeRO-3 parameters under `ds_config` (as zero.Init and deepspeed.initialize choose it)."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.half
    return torch.float32


def partition_rest(module, ds_config: dict) -> None:
    """Partition, ZeRO-3 style, the parameters of `module` that are not yet: the soft prompts and LoRA layers
    added on top of a partitioned model, or all of a scratch model (built whole by its constructor: the
    miniature world's, small by design), in the dtype of ZeRO-3 parameters.

    deepspeed.initialize would partition them too, but of a model that already has partitioned parameters
    (zero.Init) it casts none to bf16: an fp32 prompt beside a bf16 model. Cast here as it casts a plain model's,
    the values are those of the run without a partitioned load."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import is_zero_param

    params = list(module.parameters())
    rest = [p for p in params if not is_zero_param(p)]
    if not rest:
        return
    dtype = zero3_dtype(ds_config)
    for p in rest:
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    partitioned = [p for p in params if is_zero_param(p)]
    if partitioned:  # partitioned by the zero.Init of the model's load, in the same process group
        partitioned[0].convert_to_zero_parameters(param_list=rest)
    else:
        deepspeed.zero.Init(module=module, config_dict_or_path=ds_config)


def zero3_sizes(ds_config: dict, model) -> dict:
    """ZeRO-3's sizes (in elements), where the config does not set them, from the model's hidden size h and its
    parameter count P. DeepSpeed's own defaults are absolute and sized for no model.

    - As Hugging Face's Trainer fills its `auto` values: reduce_bucket_size h^2, stage3_prefetch_bucket_size
      0.9 h^2, stage3_param_persistence_threshold 10 h (DeepSpeed: 5e8, 5e7, 1e5; a 5e8-element reduce bucket
      holds every gradient of a model of up to 500M parameters whole, in every process, before it is reduced).
    - stage3_max_live_parameters, stage3_max_reuse_distance and sub_group_size: min(DeepSpeed's 1e9, P / 10).
      DeepSpeed's 1e9 is a tenth of a ~10B model (mT5-XXL keeps it); a model below 1e9 parameters would keep
      every gathered parameter live from forward to backward, and its optimizer step would flatten every
      gradient of the process into one more copy: no partitioning at all between the gathers. At P / 10, at
      most a tenth of the model is gathered at once, and the step runs over ten sub-groups.
    None changes a trained value except sub_group_size, which splits the gradient norm's sum (the clipping) into
    per-sub-group sums: a float summation order, as a process count is."""
    zero = ds_config.get("zero_optimization", {})
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if zero.get("stage", 0) != 3:
        return ds_config
    if isinstance(hidden, int):
        zero.setdefault("reduce_bucket_size", hidden * hidden)
        zero.setdefault("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
        zero.setdefault("stage3_param_persistence_threshold", 10 * hidden)
    tenth = min(DEEPSPEED_SIZE, max(1, sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()) // 10))
    for key in ("stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size"):
        zero.setdefault(key, tenth)
    return ds_config


DEEPSPEED_SIZE = 1_000_000_000  # DeepSpeed's default max_live_parameters, max_reuse_distance, sub_group_size


def share_fp32_partitions(optimizer) -> int:
    """In fp32, let ZeRO-3's "fp32 master" partitions be the parameters' own partitions; the bytes freed.

    DeepSpeed 0.19 means to share them when the parameters already are in the master dtype on the optimizer's
    device (stage3.py, `_create_fp32_partition`: "we don't need another copy of the weights"), but it compares
    the tensor's torch.device with the device's name, a str, which is never equal: every fp32 run keeps a second
    copy of its partitions (P / N parameters per process). Sharing is exact: after each step DeepSpeed copies
    the master partition into the parameters' partition, here onto itself; a checkpoint load writes both.
    Called before the first step. bf16 and fp16 runs (the GPU default) keep their fp32 masters."""
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    params = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    if not masters or not params or len(masters) != len(params):
        return 0
    freed = 0
    for master, flat in zip(masters, params):
        if (master.dtype == flat.dtype and master.device == flat.device and master.shape == flat.shape
                and master.data_ptr() != flat.data_ptr() and torch.equal(master, flat)):
            master.data = flat.data
            freed += flat.numel() * flat.element_size()
    return freed


def release_freed_host_memory() -> None:
    """On a CPU, ZeRO-3's gathers, reductions and their frees are multi-MB host allocations at every layer of
    every step. glibc's malloc raises its mmap threshold to the largest block freed (up to 32 MiB), so those
    blocks come from its heaps, which they fragment: freed memory stays resident (measured: ZeRO-3 of a 200M
    model peaked 1.5 GiB higher; bench/zero3_memory.py). A fixed 1 MiB threshold maps them apart and returns
    them at free. Only where glibc is the allocator and the user set no MALLOC_MMAP_THRESHOLD_ of their own."""
    import ctypes
    import platform

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (malloc.h); also turns the dynamic threshold off
    except (OSError, AttributeError):
        return


class _GatheringState(dict):
    """A state dict (of `state_dict(keep_vars=True)`) whose ZeRO-3 tensors are read whole, one at a time."""

    def __getitem__(self, name):
        t = super().__getitem__(name)
        if not hasattr(t, "ds_id"):
            return t
        import deepspeed

        with deepspeed.zero.GatheredParameters([t]):
            return t.detach().clone()


def state_digest(model) -> str:
    """`rf.weights_digest` of the model's state dict (see `digest_of`)."""
    return digest_of(model.state_dict(keep_vars=True))


def digest_of(state: dict) -> str:
    """`rf.weights_digest` of a `state_dict(keep_vars=True)`. Its ZeRO-3 tensors are gathered alone while they
    are hashed (a collective: every process calls this, and all gather in name order), so that no process holds
    more than one whole tensor beyond its slices."""
    if any(hasattr(t, "ds_id") for t in state.values()):
        return rf.weights_digest(_GatheringState(state))
    return rf.weights_digest(state)


def make_optimizer(params, config: dict, lr: float, module=None):
    """`module`: the PromptedModel, whose parameter names tell adafactor_t5x's prompt group from the model's."""
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config["weight_decay"])
    if config["optimizer"] == "adafactor_t5x":  # the paper's: T5X's Adafactor, prompt-tuning's for prompts
        from trainers import optim

        return optim.build(params, config, lr, module)  # held until optim.attach, after deepspeed.initialize
    from transformers.optimization import Adafactor

    # Hugging Face's Adafactor at a fixed learning rate, without relative step or parameter scaling: NOT T5X's
    # (which scales each step by the weight's RMS and factors only matrices >= 128 x 128); see trainers/optim.py.
    return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                     weight_decay=config["weight_decay"])


def make_scheduler(optimizer, config: dict, total_steps: int):
    warmup = config["warmup_steps"]

    def factor(step):
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config["lr_scheduler"] == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# What a DeepSpeed optimizer wrapper's state_dict() (ZeRO stage 1-3, or bf16 mixed precision) holds of this
# process: moments, fp32 master weights (its partition), paddings, loss-scale counters. The rest (loss scaler
# object, version, parameter mappings) is rebuilt by the live wrapper on resume.
ZERO_STATE_KEYS = ("base_optimizer_state", "single_partition_of_fp32_groups", "optimizer_state_dict",
                   "fp32_flat_groups", "fp32_groups", "fp32_groups_flat", "group_paddings",
                   "param_alignment_paddings", "partition_count", "clip_grad", "cur_scale", "cur_iter",
                   "last_overflow_iter", "scale_factor", "scale_window")


@dataclass
class Evaluation:
    step: int
    metrics: dict  # val_* -> value
    task_scores: dict  # task -> primary metric on 0-100
    score: float  # mean of task_scores


@dataclass
class StageResult:
    evaluations: list[Evaluation] = field(default_factory=list)
    chosen: dict = field(default_factory=dict)  # {"step", "metric", "value"} (+ per task for prompt stages)


class Trainer:
    """Everything one run trains: the prompted model, its data, its run folder. Stages call `train_stage`."""

    def __init__(self, *, config, run_dir, module, tokenizer, tasks, features, encoder, val_examples,
                 sampler, lora: bool, base_model: str, start_digest: str):
        self.config, self.run_dir = config, Path(run_dir)
        self.module, self.tokenizer = module, tokenizer
        self.tasks = tasks  # [{"name", "weight"}]
        self.features = features  # per task: callable index -> Feature
        self.encoder = encoder
        self.val_examples = val_examples  # per task: list[Example]
        self.sampler = sampler
        self.lora = lora
        self.base_model = base_model  # what the run started from (a parent's model/ for a sequential run)
        self.start_digest = start_digest  # of the weights it started from
        self.step = 0  # optimizer steps over all stages: checkpoint names use it
        self.notes: list[str] = []
        self.stages_done: list[dict] = []  # results of finished stages (stored in checkpoints for --resume)
        # TensorBoard / W&B (config `logging`): checked in every process, written by rank 0 (trainers/run_logs.py)
        self.run_logs = RunLogs(config, self.run_dir, write=is_main())
        self.last_predictions: list | None = None  # of the last validation: written beside its checkpoint
        # ZeRO-3 partitions every parameter (from the load on: partitioned_loading; or once deepspeed.initialize
        # has run): gather them to read or write whole weights
        self.zero3 = any(hasattr(p, "ds_id") for p in module.parameters())

    def gathered(self, modify: bool = False):
        """Whole parameters inside the block (a no-op below ZeRO-3); `modify`: writes are re-partitioned."""
        if not self.zero3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=0 if modify else None)

    # -- parameters ------------------------------------------------------------------------------------
    def set_trainable(self, trains) -> list:
        named = list(self.module.named_parameters())
        for name, p in named:
            is_prompt = name.startswith("prompts.")
            is_lora = "lora_" in name
            p.requires_grad = (("prompt" in trains and is_prompt) or ("lora" in trains and is_lora)
                               or ("model" in trains and not is_prompt and not is_lora))
        return [p for _, p in named if p.requires_grad]

    def model_state(self, keep_vars: bool = False) -> dict:
        """The model's own weights, LoRA layers left out (not merged), under their save_pretrained names."""
        state = self.module.model.state_dict(keep_vars=keep_vars)
        if not self.lora:
            return state
        return {name.replace(".base_layer.", "."): t for name, t in state.items() if "lora_" not in name}

    # Under ZeRO-3 the three below go one tensor at a time, as transformers' ZeRO-3 save and load do: each
    # partitioned tensor is gathered alone (a collective: every process calls them, in the same name order), so
    # no process holds the whole model on its device, and only rank 0 holds it in host memory, to write or read
    # it. Tied weights (one tensor under several names) are gathered once.
    def whole_model_state(self) -> dict:
        """model_state() as whole tensors in host memory on rank 0 (under ZeRO-3 the other processes get {})."""
        if not self.zero3:
            return self.model_state()
        import deepspeed

        state, copies = {}, {}
        for name, t in self.model_state(keep_vars=True).items():
            if id(t) not in copies:
                with deepspeed.zero.GatheredParameters([t]) if hasattr(t, "ds_id") else nullcontext():
                    copies[id(t)] = t.detach().to("cpu", copy=True) if is_main() else None
            if is_main():
                state[name] = copies[id(t)]
        return state

    def model_digest(self) -> str:
        """`rf.weights_digest(model_state())`, the same in every process (a collective under ZeRO-3)."""
        return digest_of(self.model_state(keep_vars=True))

    @torch.no_grad()
    def load_model_files(self, files: list[Path]) -> None:
        """Copy the tensors of save_pretrained safetensors files into the model (names it lacks are skipped;
        under ZeRO-3 rank 0 alone reads the files, lazily)."""
        from safetensors import safe_open

        targets = self.model_state(keep_vars=True)
        if not self.zero3:
            state = {}
            for f in files:
                with safe_open(str(f), "pt") as handle:
                    state.update({k: handle.get_tensor(k) for k in handle.keys() if k in targets})
            for name, t in targets.items():
                if name in state:
                    t.copy_(state[name])
            return
        import deepspeed

        with ExitStack() as opened:
            handles = [opened.enter_context(safe_open(str(f), "pt")) for f in files] if is_main() else []
            where = all_gather({k: i for i, h in enumerate(handles) for k in h.keys()})[0]  # rank 0's names
            done = set()
            for name, t in targets.items():
                if name not in where or id(t) in done:
                    continue
                done.add(id(t))
                value = handles[where[name]].get_tensor(name) if is_main() else None
                if hasattr(t, "ds_id"):
                    with deepspeed.zero.GatheredParameters([t], modifier_rank=0):
                        if is_main():
                            t.copy_(value)
                else:  # a buffer, the same in every process
                    if is_main():
                        t.copy_(value)
                    if _dist():
                        _dist().broadcast(t.data, src=0)

    # -- the loop --------------------------------------------------------------------------------------
    def train_stage(self, stage: Stage, resume_state: dict | None = None) -> StageResult:
        import deepspeed
        from tqdm.auto import tqdm

        config = self.config
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        params = self.set_trainable(stage.trains)
        if not params:
            raise FmtspecError(f"stage {stage.number} has nothing to train ({', '.join(stage.trains)})")
        optimizer = make_optimizer(params, config, stage.lr, self.module)
        scheduler = make_scheduler(optimizer, config, stage.steps)
        ds_config = zero3_sizes(deepspeed_config(config, world_size()), self.module.model)
        zero = ds_config.get("zero_optimization", {}).get("stage", 0)
        if zero >= 1 and config["optimizer"] == "adafactor":
            note = (f"ZeRO stage {zero} gives Adafactor flat partitions: its second moments are not factored "
                    "(a different optimizer than the paper's); use zero0 or optimizer: adamw")
            if note not in self.notes:
                warnings.warn(note, stacklevel=1)
                self.notes.append(note)
        engine, _, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        self.client_optimizer = optimizer  # engine.optimizer is it, or a ZeRO/bf16 wrapper around it
        if zero == 3:
            share_fp32_partitions(engine.optimizer)
        if config["optimizer"] == "adafactor_t5x":  # where each weight sits in DeepSpeed's flat partitions
            from trainers import optim

            note = optim.attach(engine.optimizer, optimizer)
            if note and note not in self.notes:
                self.notes.append(note)
        if engine.optimizer is optimizer and world_size() == 1:
            engine.enable_backward_allreduce = False  # a plain optimizer in one process: nothing to average
        self.zero3 = engine.zero_optimization_stage() == 3
        result = StageResult()
        first = 1
        if resume_state is not None:
            first = self._restore(engine, resume_state, result) + 1
        start_step = self.step - (first - 1)  # global step before this stage's first step
        bar = tqdm(total=stage.steps, initial=first - 1, desc=f"stage {stage.number} ({'+'.join(stage.trains)})",
                   dynamic_ncols=True, disable=not is_main())
        _signals.deferred = True
        try:
            self._steps(stage, engine, result, first, start_step, bar)
        except BaseException:  # nan loss, a signal, a failed write: the run ends here
            self.close(failed=True)
            raise
        finally:
            _signals.deferred = False
        bar.close()
        self.choose(stage, result)
        return result

    def _steps(self, stage: Stage, engine, result: StageResult, first: int, start_step: int, bar) -> None:
        config = self.config
        gas = engine.gradient_accumulation_steps()
        micro = engine.train_micro_batch_size_per_gpu()
        rank, world = engine.global_rank, engine.world_size
        self.training_since = time.time()  # what a signal checkpoint would save: the steps since then (_stop)
        for local in range(first, stage.steps + 1):
            tick, losses, tokens = time.perf_counter(), [], 0
            engine.train()
            for _ in range(gas):
                # every process draws the same global micro-batches and keeps its own slice
                drawn = [self._next_feature() for _ in range(micro * world)]
                batch = collate(drawn[rank * micro:(rank + 1) * micro], self.tokenizer.pad_token_id,
                                self.module.encoder_decoder)
                tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                loss = engine(**batch)
                if all_sum([float(not torch.isfinite(loss))])[0]:  # every process stops, not only the one that saw it
                    bar.close()
                    last = rf.checkpoint_steps(self.run_dir)
                    kept = f"the last good checkpoint is checkpoints/step-{last[-1]}" if last else "no checkpoint yet"
                    raise FmtspecError(f"loss is {'nan' if torch.isfinite(loss) else loss.item()} at step {start_step + local} "
                                       f"(stage {stage.number}); stopped, {kept}")
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
            self.step = start_step + local
            # the step's loss over the whole global batch (mean of every process's micro-batches)
            loss_sum, count, tokens = all_sum([sum(losses), len(losses), tokens])
            elapsed = time.perf_counter() - tick
            lr = engine.get_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", lr=f"{lr:.3g}")
            if local % config["log_every"] == 0 or local == stage.steps:
                self.log({"step": self.step, "stage": stage.number, "loss": loss_sum / count, "lr": lr,
                          "tokens_per_s": tokens / max(elapsed, 1e-9)})
            if (stage.eval_every and local % stage.eval_every == 0) or local == stage.steps:
                evaluation = self.evaluate()
                result.evaluations.append(evaluation)
                self.log({"step": self.step, "stage": stage.number, **evaluation.metrics})
                self.save_checkpoint(stage, local, engine, result)
            if all_sum([float(_signals.received is not None)])[0]:  # a signal reached a process: all stop here
                bar.close()
                self._stop(stage, local, engine, result)

    def _stop(self, stage: Stage, local: int, engine, result: StageResult) -> None:
        """Stop for a signal after this step (every process). Checkpoint it first when more than
        `preempt_checkpoint_s` seconds of training would be lost (since the last checkpoint, or since this
        process resumed from it; with no checkpoint yet, always), so that a preempted run resumes close to where
        it stopped without a checkpoint written twice in a row. A step that validates is stopped after its
        validation and checkpoint: resuming from a checkpoint that skipped one would change the chosen step."""
        interval = self.config.get("preempt_checkpoint_s", 300)
        write = False
        if is_main() and interval:
            steps = rf.checkpoint_steps(self.run_dir)
            if not steps:
                write = True
            elif steps[-1] != self.step:
                written = (rf.checkpoint_dir(self.run_dir, steps[-1]) / rf.TRAINER_STATE).stat().st_mtime
                write = time.time() - max(written, self.training_since) > interval
        write = all_gather(write)[0]
        if write:
            self.last_predictions = None  # not validated at this step: no val_predictions.jsonl
            self.save_checkpoint(stage, local, engine, result)
        raise Stopped(_signals.received or signal.SIGTERM, self.step, wrote=write)

    def _next_feature(self):
        task, index = self.sampler.next()
        return self.features[task](index)

    def log(self, record: dict) -> None:
        if not is_main():
            return
        rf.append_metrics(self.run_dir, record)
        self.run_logs.log(record)  # the same record to TensorBoard / W&B, when configured

    def close(self, failed: bool = False) -> None:
        """The end of the run: flush and end its TensorBoard and W&B writers."""
        self.run_logs.close(failed)

    # -- validation ------------------------------------------------------------------------------------
    def evaluate(self) -> Evaluation:
        with self.gathered(), torch.no_grad():
            return self._evaluate()

    def _evaluate(self) -> Evaluation:
        from harness_tasks import catalog, examples

        module = self.module
        was_training = module.training
        module.eval()
        device = next(module.parameters()).device
        metrics, task_scores = {}, {}
        self.last_predictions = []  # written beside the checkpoint: what the model answered
        single = len(self.tasks) == 1
        for t, task in enumerate(self.tasks):
            exs = self.val_examples[t]
            bs = self.config["eval"]["batch_size"]
            # each process generates every world_size-th batch (the same batches as one process would);
            # every process then has all predictions, in order. ZeRO-3's forward hooks are collective, so
            # there every process generates every batch in lockstep (same weights, same greedy lengths).
            starts = list(range(0, len(exs), bs))
            shards, me = (1, 0) if self.zero3 else (world_size(), rank())
            mine = {i: self._generate([e.context for e in exs[i: i + bs]], t, device) for i in starts[me::shards]}
            done = {i: p for part in (all_gather(mine) if shards > 1 else [mine]) for i, p in part.items()}
            predictions = [p for i in starts for p in done[i]]
            scores = examples.score(task["name"], predictions, [e.doc for e in exs])
            # doc: the row of the split (lm-eval's doc_id), also when eval.limit sampled the rows
            self.last_predictions += [{"task": task["name"], "doc": i if e.row is None else e.row, "prediction": p}
                                      for i, (e, p) in enumerate(zip(exs, predictions))]
            primary = examples.primary_metric(task["name"])
            info, _ = catalog.parse_task_name(task["name"])
            task_scores[task["name"]] = float(scores[primary]) * info.scale
            for name, value in scores.items():
                metrics[f"val_{name}" if single else f"val_{task['name']}_{name}"] = float(value)
        score = sum(task_scores.values()) / len(task_scores)
        metrics["val_score"] = score
        module.train(was_training)
        return Evaluation(self.step, metrics, task_scores, score)

    def _generate(self, contexts: list[str], task: int, device) -> list[str]:
        ids = [self.encoder.input_ids(c) for c in contexts]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(ids):  # causal: left padding, so that generation continues the text
            sl = slice(0, len(row)) if self.module.encoder_decoder else slice(width - len(row), width)
            input_ids[i, sl], mask[i, sl] = torch.tensor(row), 1
        out = self.module.generate(input_ids.to(device), mask.to(device),
                                   torch.full((len(ids),), task, dtype=torch.long, device=device),
                                   max_new_tokens=self.config["eval"]["max_new_tokens"],
                                   num_beams=self.config["eval"]["num_beams"],
                                   pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id)
        drop = {pad, self.tokenizer.eos_token_id}
        texts = []
        for row in out.tolist():
            kept = []
            for token in row:
                if token == self.tokenizer.eos_token_id:
                    break
                if token not in drop:
                    kept.append(token)
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=not self.encoder.sentinel))
        return texts

    # -- checkpoints -----------------------------------------------------------------------------------
    def gathered_adapters(self, modify: bool = False):
        """The soft prompts and LoRA layers whole inside the block (small; a no-op below ZeRO-3)."""
        if not self.zero3:
            return nullcontext()
        import deepspeed

        small = [p for name, p in self.module.named_parameters() if name.startswith("prompts.") or "lora_" in name]
        return deepspeed.zero.GatheredParameters(small, modifier_rank=0 if modify else None)

    def save_outputs(self, folder: Path, *, model: bool) -> None:
        """The trained pieces in run-folder layout: model/ (if asked) and every prompt (or LoRA adapter).
        Every process calls it (ZeRO-3 gathers collectively); rank 0 writes."""
        state = self.whole_model_state() if model else None
        with self.gathered_adapters():
            if is_main():
                self._save_outputs(folder, state)

    def _save_outputs(self, folder: Path, state: dict | None) -> None:
        """`state`: the model's weights to write as model/ (whole_model_state), or None for none."""
        from model_adapters.soft_prompt import save_soft_prompt

        base = self.base_model
        if state is not None:
            self.module.model.save_pretrained(folder / "model", state_dict=state)
            self.tokenizer.save_pretrained(folder / "model")
        n = len(self.tasks)
        mconf = self.module.model.config
        for t, task in enumerate(self.tasks):
            target = folder / rf.prompt_folder(task["name"], n, self.lora)
            if self.lora:
                save_lora(target, self.module.model, base_model=base)
            elif self.module.has_prompts:
                save_soft_prompt(target, self.module.prompts[t].detach(), base_model=base,
                                 encoder_decoder=self.module.encoder_decoder,
                                 num_layers=getattr(mconf, "num_layers", None) or getattr(mconf, "num_hidden_layers", None),
                                 num_attention_heads=getattr(mconf, "num_heads", None)
                                 or getattr(mconf, "num_attention_heads", None))

    def save_checkpoint(self, stage: Stage, local: int, engine, result: StageResult) -> None:
        """Every process calls it; rank 0 writes the folder (atomically), then all wait for it.

        Optimizer state: a plain (ZeRO 0, fp32) optimizer is the same in every process and rank 0 saves it;
        a ZeRO (or bf16) optimizer holds one partition of the fp32 master weights and moments per process, and
        each process writes its own `optimizer-rank{r}.safetensors` (resume then needs the same process count)."""
        rngs = all_gather(rng_state())
        staging = None
        try:
            if engine.optimizer is not self.client_optimizer:
                final = rf.checkpoint_dir(self.run_dir, self.step)
                staging = final.parent / f"{rf.TMP}{final.name}-optimizer"
                staging.mkdir(parents=True, exist_ok=True)
                saved = engine.optimizer.state_dict()
                rf.save_nested(staging / rf.optimizer_rank_file(rank()),
                               {"optimizer": {k: v for k, v in saved.items() if k in ZERO_STATE_KEYS},
                                "scheduler": engine.lr_scheduler.state_dict()})
                barrier()
            state = self.whole_model_state() if "model" in stage.trains else None
            with self.gathered_adapters():
                if is_main():
                    self._write_checkpoint(stage, local, engine, result, rngs, staging, state)
        except BaseException:  # a full disk, a signal: no partial folder stays (the checkpoint's own is removed)
            if staging is not None and is_main():
                shutil.rmtree(staging, ignore_errors=True)
            raise
        barrier()

    def _write_checkpoint(self, stage: Stage, local: int, engine, result: StageResult, rngs: list,
                          staging: Path | None, state: dict | None) -> None:
        final = rf.checkpoint_dir(self.run_dir, self.step)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(final) as tmp:
            self._save_outputs(tmp, state)
            if staging is None:
                rf.save_nested(tmp / rf.OPTIMIZER_FILE, {"optimizer": engine.optimizer.state_dict(),
                                                         "scheduler": engine.lr_scheduler.state_dict()})
            else:
                for f in staging.iterdir():
                    os.replace(f, tmp / f.name)
                staging.rmdir()
            if self.last_predictions is not None:
                (tmp / rf.PREDICTIONS).write_text("".join(json.dumps(p) + "\n" for p in self.last_predictions))
            # what it costs on disk (every file but this record), by part: model/, prompts, optimizer files
            parts = {p.name: disk_bytes(p) for p in sorted(tmp.iterdir())}
            state = {"step": self.step, "stage": stage.number, "stage_step": local, "trains": list(stage.trains),
                     "sampler": self.sampler.state_dict(), "torch_rng": rngs[0]["cpu"], "world_size": len(rngs),
                     "rng": rngs, "optimizer_saved": True,
                     "optimizer_partitions": 0 if staging is None else len(rngs), "stages_done": self.stages_done,
                     "evaluations": [e.__dict__ for e in result.evaluations],
                     "size_bytes": sum(parts.values()), "size_bytes_by_part": parts,
                     "keep_checkpoints": self._keep_checkpoints(stage.trains)}
            (tmp / rf.TRAINER_STATE).write_text(json.dumps(state))
        self._prune(stage, local, result)

    def _keep_checkpoints(self, trains) -> int | None:
        """How many of its newest checkpoints a stage training `trains` keeps (None: all): `keep_checkpoints`,
        whose `auto` is 1 for a stage that trains the model's weights when the model has at least
        AUTO_KEEP_MIN_PARAMETERS (a ZeRO-3 mT5-XXL checkpoint is 78-130 GB, README), else all."""
        keep = self.config["keep_checkpoints"]
        if keep != "auto":
            return keep
        if "model" not in trains:
            return None
        # ZeRO-3 leaves each process an empty slice of a parameter; ds_numel is its whole size
        size = sum(getattr(p, "ds_numel", p.numel()) for p in self.module.model.parameters())
        return 1 if size >= AUTO_KEEP_MIN_PARAMETERS else None

    def _prune(self, stage: Stage, local: int, result: StageResult) -> None:
        """While a stage trains it keeps its best checkpoint(s) so far and its N newest (`_keep_checkpoints`);
        once the next stage has written one, a finished stage keeps only its chosen ones (a stage whose N is
        None keeps all). Never removed: the newest (resume starts there) and every checkpoint `choose` or a
        later stage reads (the best of this stage, each task's best for a multi-task prompt, the chosen of
        finished stages)."""
        steps = rf.checkpoint_steps(self.run_dir)
        first = self.step - local  # the step before this stage's first
        protected, remove = {self.step}, []
        evals = result.evaluations
        if evals:
            protected.add(max(evals, key=lambda e: e.score).step)  # as `choose`: the first of equals
            if stage.trains == ("prompt",) and len(self.tasks) > 1:
                protected.update(max(evals, key=lambda e: e.task_scores[t["name"]]).step for t in self.tasks)
        keep = self._keep_checkpoints(stage.trains)
        if keep is not None:
            ours = [s for s in steps if s > first]
            remove += ours[:-keep] if keep else ours
        start = 0
        for done in self.stages_done:
            if "from" in done:  # a stage reused from another run (stage1_from): its checkpoints are there
                continue
            protected.add(done["chosen"]["step"])
            protected.update(t["step"] for t in done["chosen"].get("per_task", {}).values())
            end = start + done["steps"]
            if self._keep_checkpoints(tuple(done["trains"])) is not None:
                remove += [s for s in steps if start < s <= end]
            start = end
        for step in sorted(set(remove) - protected):
            remove_folder(rf.checkpoint_dir(self.run_dir, step))

    def _restore(self, engine, state: dict, result: StageResult) -> int:
        """Load the optimizer, scheduler, data position and RNG of a checkpoint; return its stage step."""
        folder = rf.checkpoint_dir(self.run_dir, state["step"])
        partitions = state.get("optimizer_partitions", 0)
        partitioned = engine.optimizer is not self.client_optimizer
        if state.get("optimizer_saved") and (partitions > 0) != partitioned:
            raise FmtspecError(f"--resume: checkpoint step-{state['step']} holds a "
                               f"{'partitioned' if partitions else 'plain'} optimizer state but this run's is "
                               f"{'partitioned' if partitioned else 'plain'}: resume with the same "
                               "engine.deepspeed and precision")
        if state.get("optimizer_saved") and partitions:
            if partitions != world_size():
                raise FmtspecError(f"--resume: checkpoint step-{state['step']} holds the optimizer in {partitions} "
                                   f"ZeRO partitions; resume with {partitions} processes (this run has {world_size()})")
            saved = rf.load_nested(folder / rf.optimizer_rank_file(rank()))
            merged = engine.optimizer.state_dict()  # live bookkeeping (loss scaler, version, mappings) ...
            merged.update(saved["optimizer"])  # ... with the saved moments and fp32 master partition
            if "state_dict_list" in inspect.signature(engine.optimizer.load_state_dict).parameters:  # ZeRO, bf16
                engine.optimizer.load_state_dict([merged] * world_size(), load_optimizer_states=True,
                                                 load_from_fp32_weights=True)
            else:  # DeepSpeed's FP16_Optimizer family (bf16 at ZeRO 0 on some versions): one dict, fp32 copies
                engine.optimizer.load_state_dict(merged, load_optimizer_states=True)
            engine.lr_scheduler.load_state_dict(saved["scheduler"])
        elif state.get("optimizer_saved"):
            saved = rf.load_nested(folder / rf.OPTIMIZER_FILE)
            engine.optimizer.load_state_dict(saved["optimizer"])
            engine.lr_scheduler.load_state_dict(saved["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if state.get("world_size", 1) == world_size() and "rng" in state:
            set_rng_state(state["rng"][rank()])
        else:  # another number of processes: dropout draws cannot continue exactly
            torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
            note = (f"resumed with {world_size()} processes from a checkpoint of {state.get('world_size', 1)}: "
                    "same data order and weights, other dropout draws")
            if note not in self.notes:
                self.notes.append(note)
        result.evaluations = [Evaluation(**e) for e in state["evaluations"]]
        self.step = state["step"]
        return state["stage_step"]

    def load_trained(self, folder: Path, trains, tasks: list[int] | None = None) -> None:
        """Put the trained pieces of a checkpoint folder back into the module."""
        from model_adapters.soft_prompt import load_soft_prompt
        from safetensors.torch import load_file

        n = len(self.tasks)
        if "model" in trains and (folder / "model").is_dir():
            self.load_model_files(sorted((folder / "model").glob("*.safetensors")))
        with self.gathered_adapters(modify=True), torch.no_grad():
            if "prompt" in trains and self.module.has_prompts:
                for t in tasks if tasks is not None else range(n):
                    prompt = load_soft_prompt(folder / rf.prompt_folder(self.tasks[t]["name"], n))
                    self.module.prompts[t].copy_(prompt.embeddings.to(self.module.prompts[t]))
            if ("lora" in trains or "prompt" in trains) and self.lora:
                from peft import set_peft_model_state_dict

                adapter = folder / rf.prompt_folder(self.tasks[0]["name"], n, True) / "adapter_model.safetensors"
                saved = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(adapter)).items()}
                set_peft_model_state_dict(self.module.model, saved)

    def choose(self, stage: Stage, result: StageResult) -> None:
        """Keep the best checkpoint of the stage (the target task's validation metric; for a multi-task
        prompt stage, each task's prompt from its own best checkpoint) and load it into the module."""
        evals = result.evaluations
        best = max(evals, key=lambda e: e.score)  # first of equals: the earliest
        metric = "val_score"
        if len(self.tasks) == 1:
            metric = f"val_{self._primary(self.tasks[0]['name'])}"
        result.chosen = {"step": best.step, "metric": metric, "value": best.metrics.get(metric, best.score)}
        if stage.trains == ("prompt",) and len(self.tasks) > 1:
            per_task = {}
            for t, task in enumerate(self.tasks):
                e = max(evals, key=lambda ev: ev.task_scores[task["name"]])
                per_task[task["name"]] = {"step": e.step, "metric": f"val_{task['name']}_{self._primary(task['name'])}",
                                          "value": e.metrics[f"val_{task['name']}_{self._primary(task['name'])}"]}
                if e.step != self.step:
                    self.load_trained(rf.checkpoint_dir(self.run_dir, e.step), ("prompt",), [t])
            result.chosen["per_task"] = per_task
        elif best.step != self.step:
            self.load_trained(rf.checkpoint_dir(self.run_dir, best.step), stage.trains)

    @staticmethod
    def _primary(task: str) -> str:
        from harness_tasks.examples import primary_metric

        return primary_metric(task)


PEFT_PREFIX = "base_model.model."
# keep_checkpoints: auto keeps 1 (and the chosen) in model stages from this size on: T5/mT5 XL (3B, 3.7B), XXL
AUTO_KEEP_MIN_PARAMETERS = 2_000_000_000


def disk_bytes(path: Path) -> int:
    """The bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_lora(folder: Path, model, *, base_model: str) -> None:
    """The model's injected LoRA layers as a PEFT adapter folder (not merged into the weights)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = model.peft_config["default"]
    config.base_model_name_or_path = base_model
    config.inference_mode = True
    config.save_pretrained(str(folder))
    # PeftModel names its weights from its own root: base_model.model.<module path>
    state = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(folder / "adapter_model.safetensors"))
