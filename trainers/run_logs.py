"""Training metrics in TensorBoard and Weights & Biases, beside metrics.jsonl (config section `logging`).

    logging:
      tensorboard: true     # event files in RUN_DIR/tensorboard; a folder: relative to the run folder, or absolute
      wandb: {project: my-project, entity: null, mode: null, name: null, group: null}

Both are off by default. Every record the trainer appends to metrics.jsonl goes to each configured writer too,
under the same names, at the same step, with the same value: loss, lr and tokens_per_s every `log_every` steps,
every val_* metric at each validation (`step` is the x-axis; `stage` is left out). TensorBoard is written with
torch.utils.tensorboard's SummaryWriter (flushed after every record, like metrics.jsonl), W&B with
wandb.init/log/finish. Rank 0 alone writes. Neither library is imported unless configured; a configured one
that is not installed stops the run before it trains, in one line. Past the start, logging never stops training:
a wandb.init that fails (no network, no API key) or a TensorBoard folder that cannot be written is one warning
line on stderr, and the run goes on with metrics.jsonl (and the other writer).

W&B: `project` switches it on (`entity`, `mode`, `name`, `group` need it). `mode`: online, offline or disabled;
null leaves it to W&B (WANDB_MODE, else online). `name`: default the run folder's name. The run gets the resolved
config. W&B writes its local files where it always does (WANDB_DIR, else ./wandb); the run's W&B id is kept in
RUN_DIR/wandb.json, so that --resume continues the same W&B run.

Resume: the steps after the checkpoint a run resumes from are trained (and logged) again. metrics.jsonl drops
them (fmtspec.core.run_folder.truncate_metrics); TensorBoard's writer opens with `purge_step` = that checkpoint's step + 1,
so its reader drops the earlier attempt's events from that step on (no step shows twice). W&B keeps a run's
history append-only: steps the resumed W&B run already has are not sent again (under exact resume they hold the
same values; tokens_per_s aside).
"""

from __future__ import annotations

import importlib.util
import json
import math
import secrets
import string
import sys
from pathlib import Path

from fmtspec.core import run_folder as rf
from fmtspec.core.errors import FmtspecError

WANDB_MODES = ("online", "offline", "disabled")
NOT_LOGGED = ("step", "stage")  # the x-axis, and the stage number (in metrics.jsonl only)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _warn(message: str) -> None:
    print(f"fmtspec train: warning: {message}", file=sys.stderr, flush=True)


def wandb_settings(config: dict) -> dict | None:
    """`logging.wandb` when it switches W&B on (a project, mode not disabled), else None."""
    section = {k: v for k, v in ((config.get("logging") or {}).get("wandb") or {}).items() if v is not None}
    if not section.get("project"):
        if section:
            raise FmtspecError(f"config key 'logging.wandb.{sorted(section)[0]}' is set but "
                               "'logging.wandb.project' is not: set the W&B project (or remove logging.wandb)")
        return None
    if section.get("mode") not in (None, *WANDB_MODES):
        raise FmtspecError(f"config key 'logging.wandb.mode' is {section['mode']!r}; choose one of "
                           f"{', '.join(WANDB_MODES)}")
    return None if section.get("mode") == "disabled" else section


def check(config: dict, run_dir: Path | str = ".") -> None:
    """The `logging` section's problems, in one line, before anything trains (every process; and `fmtspec
    experiment` for each run when it reads the experiment): a writer that is configured but not installed."""
    if rf.tensorboard_dir(config, Path(run_dir)) is not None and not _installed("tensorboard"):
        raise FmtspecError("config key 'logging.tensorboard' needs the tensorboard package: pip install tensorboard "
                           "(or remove logging.tensorboard)")
    if wandb_settings(config) is not None and not _installed("wandb"):
        raise FmtspecError("config key 'logging.wandb' needs the wandb package: pip install wandb "
                           "(or remove logging.wandb)")


def _new_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class RunLogs:
    """The run's TensorBoard and W&B writers. Built in every process (the check is everyone's); only `write`
    (rank 0) opens them, at the first record, and `close` ends them."""

    def __init__(self, config: dict, run_dir: Path, *, write: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        check(config, self.run_dir)
        self.tensorboard = rf.tensorboard_dir(config, self.run_dir)
        self.wandb = wandb_settings(config)
        self.write = write and (self.tensorboard is not None or self.wandb is not None)
        # a resumed run continues after its newest checkpoint (trainers.train.open_run); a new one at step 1
        self.resume_step = max(rf.checkpoint_steps(self.run_dir), default=0) if self.write else 0
        self._opened = False
        self._tb = None  # SummaryWriter
        self._run = None  # wandb Run
        self._wandb_from = 0  # steps below it are in the resumed W&B run already

    def log(self, record: dict) -> None:
        """One metrics.jsonl record: its numbers at its step."""
        if not self.write:
            return
        if not self._opened:
            self._open()
        step = int(record["step"])
        scalars = {k: float(v) for k, v in record.items() if k not in NOT_LOGGED and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)}
        if self._tb is not None:
            try:
                for key, value in scalars.items():
                    self._tb.add_scalar(key, value, global_step=step)
                self._tb.flush()
            except Exception as exc:
                _warn(f"TensorBoard logging stopped: {_reason(exc)}")
                self._tb = None
        if self._run is not None and step >= self._wandb_from:
            try:
                self._run.log(scalars, step=step)
            except Exception as exc:
                _warn(f"W&B logging stopped: wandb.log failed: {_reason(exc)}")
                self._run = None

    def _open(self) -> None:
        self._opened = True
        if self.tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard.mkdir(parents=True, exist_ok=True)
                # purge_step: TensorBoard drops the events of an earlier attempt from this step on
                self._tb = SummaryWriter(log_dir=str(self.tensorboard), purge_step=self.resume_step + 1)
            except Exception as exc:
                _warn(f"TensorBoard logging is off for this run: cannot write {self.tensorboard}: {_reason(exc)}")
        if self.wandb is not None:
            self._open_wandb()

    def _open_wandb(self) -> None:
        settings = self.wandb
        id_file = self.run_dir / rf.WANDB_RUN_FILE
        try:
            saved = json.loads(id_file.read_text()) if id_file.is_file() else {}
        except (OSError, ValueError):
            saved = {}
        run_id = saved.get("id") if isinstance(saved, dict) and isinstance(saved.get("id"), str) else _new_id()
        try:
            import wandb

            # the id first: a run killed during or after wandb.init resumes the same W&B run
            rf.write_json_atomic(id_file, {"id": run_id, "project": settings["project"],
                                           "entity": settings.get("entity")})
            self._run = wandb.init(project=settings["project"], entity=settings.get("entity"),
                                   mode=settings.get("mode"), name=settings.get("name") or self.run_dir.name,
                                   group=settings.get("group"), id=run_id, resume="allow",
                                   config=json.loads(json.dumps(self.config, default=str)), allow_val_change=True)
            self._wandb_from = int(getattr(self._run, "starting_step", 0) or 0)
        except Exception as exc:  # wandb's errors (no network, no API key, a bad entity), an unwritable folder
            _warn(f"W&B logging is off for this run: wandb.init failed: {_reason(exc)}")
            self._run = None

    def close(self, failed: bool = False) -> None:
        """Flush and end both writers (W&B: finished, with exit code 1 if `failed`)."""
        tb, run, self._tb, self._run = self._tb, self._run, None, None
        if tb is not None:
            try:
                tb.close()
            except Exception as exc:
                _warn(f"TensorBoard: closing {self.tensorboard} failed: {_reason(exc)}")
        if run is not None:
            try:
                run.finish(exit_code=1 if failed else 0)
            except Exception as exc:
                _warn(f"W&B: wandb.finish failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
