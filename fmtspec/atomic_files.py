"""Files written whole or not at all: the one atomic file writer of every package (run.json, config.json,
metrics.jsonl when truncated, the W&B id file, the miniature world's splits, leaderboards, plots).

The content goes to a temporary file beside the target (same folder: the rename stays on one file system),
which is then renamed over it: a reader, or a run killed midway, sees the old file or the new one, never half
of one. The temporary name starts with `.tmp-`, the prefix run folders treat as never part of a run; a write
that fails removes it. Folders are swapped in whole by `trainers.run.atomic_folder`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the content to the temporary path; then it replaces `path`. Readable by all (0644),
    as a plain `open(path, "w")` under the usual umask would leave it, not mkstemp's private 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
