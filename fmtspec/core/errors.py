"""fmtspec's one error type, the "(did you mean 'x'?)" hint its messages end with, `read_json` (a JSON file
the user gave, or one line saying why it is not one), and the hook that prints the error as one line where no
fmtspec command catches it.

The `fmtspec` command catches `FmtspecError` itself. The stock `lm_eval` command lets exceptions from model
creation and task loading escape to `sys.excepthook`. Importing fmtspec changes no hook: `install_excepthook()`
runs where the `lm_eval` command first reaches fmtspec's code, at the start of `PromotHFLM.__init__`
(`--model promot_hf`) and in the `load` function of every fmtspec task (`harness_tasks.lm_eval_hooks`, the
first one lm-eval calls, whatever the model). From then on an escaping `FmtspecError` prints as
`<where>: <message>` (exit status 1), and every other exception goes to the previous hook (a traceback).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from pathlib import Path


class FmtspecError(Exception):
    """A problem with the user's input: the CLI prints its message as one line and exits non-zero."""

    where = "fmtspec"  # what the one-line hook prints before the message (`promot_hf` for its arguments)


def did_you_mean(name, options, prefix: str = "") -> str:
    """` (did you mean '<prefix><option>'?)` for the option closest to `name`, or "" when none is close;
    values are compared as text (a YAML value may be a number)."""
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{match[0]}'?)" if match else ""


def read_json(path: str | Path, what: str = "a JSON file"):
    """The parsed content of `path`, or one FmtspecError line: unreadable, not UTF-8 text, or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FmtspecError(f"{path} is not {what}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FmtspecError(f"{path} is not {what}: invalid JSON ({exc})") from None
    except OSError as exc:
        raise FmtspecError(f"cannot read {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def raised_in(where: str):
    """Label the FmtspecErrors escaping the block with `where` (unless an inner block labelled them)."""
    try:
        yield
    except FmtspecError as exc:
        if "where" not in vars(exc):
            exc.where = where
        raise


def one_line(exc: FmtspecError) -> str:
    """`<where>: <message>`, the message's first line (they are written as one)."""
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{exc.where}: {message}"


def _one_line_errors(previous):
    def hook(exc_type, exc, tb):
        if isinstance(exc, FmtspecError):
            sys.stderr.write(one_line(exc) + "\n")
        else:
            previous(exc_type, exc, tb)

    hook.fmtspec_hook = True
    return hook


def install_excepthook() -> None:
    """Print an uncaught FmtspecError as one line (exit status 1 is Python's for any uncaught exception).
    Idempotent: installed once per process, before whatever hook was there."""
    if not getattr(sys.excepthook, "fmtspec_hook", False):
        sys.excepthook = _one_line_errors(sys.excepthook)
