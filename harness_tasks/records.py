"""Record files as the fmtspec tasks read them: `$FMTSPEC_DATA_DIR` (the offline data folder) and JSON-lines
files whose records remember their line, so that every problem names the file and line. Shared by
harness_tasks.data (every task) and harness_tasks.mini_world (its generated world)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from fmtspec.core.errors import FmtspecError

DATA_DIR_ENV = "FMTSPEC_DATA_DIR"


class Records(list):
    """Records read from a file, each with the line it starts on, for error messages (`where`)."""

    def __init__(self, rows=(), source: str | os.PathLike = "", lines=()):
        super().__init__(rows)
        self.source, self.lines = str(source), list(lines)

    def where(self, i: int) -> str:
        return f"{self.source}:{self.lines[i]}"

    def only(self, keep: Callable) -> "Records":
        chosen = [i for i, row in enumerate(self) if keep(row)]
        return Records([self[i] for i in chosen], self.source, [self.lines[i] for i in chosen])


def undecodable(path, data: bytes, exc: UnicodeDecodeError, what: str, first_line: int = 1) -> FmtspecError:
    """`path:line: not <what> (byte ...)` for the byte `exc` stopped at (`data` the bytes decoded, from line
    `first_line` of the file on)."""
    line = data.count(b"\n", 0, exc.start) + first_line
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return FmtspecError(f"{path}:{line}: not {what} (byte 0x{data[exc.start]:02x} at column {column}: "
                        f"{exc.reason})")


def read_jsonl(path: Path) -> Records:
    """One JSON object per line (blank lines skipped), each with its line number."""
    if not path.is_file():
        raise FmtspecError(f"missing data file {path} (${DATA_DIR_ENV} is set, so every task reads "
                           f"$FMTSPEC_DATA_DIR/<key>/<split>.jsonl)")
    rows = Records(source=path)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise undecodable(path, raw, e, "UTF-8 text", first_line=n) from None
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FmtspecError(f"{path}:{n}: not a JSON record ({e.msg})") from None
                if not isinstance(row, dict):
                    raise FmtspecError(f"{path}:{n}: not a JSON record (a JSON {type(row).__name__}, not an object)")
                rows.append(row)
                rows.lines.append(n)
    return rows
