"""Files and folders written whole or not at all: the one atomic writer of every package (run.json and the run
folder's model/ and prompts/, checkpoints, metrics.jsonl when truncated, the miniature world and the cached
pretrained base, leaderboards, plots).

Content goes to a temporary sibling (same folder: the rename stays on one file system), which is then renamed
into place: a reader, or a process killed midway, sees the old version or the new one, never half of one.
Temporary names start with `.tmp-`, a prefix run folders treat as never part of a run; a write that fails
removes its temporary. A folder that is replaced is renamed aside (`.old-`) first and removed last, and a folder
that is removed is renamed to `.trash-` first; `recover` undoes what a writer killed between two renames left.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"
ASIDE = ".old-"  # the folder being replaced, until the new one is in place
TRASH = ".trash-"  # a folder being removed


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


def _tmp_prefix(final: Path) -> str:
    # host and pid: a process can tell its own temporaries, and those of dead processes of its host, from others'
    return f"{TMP_PREFIX}{final.name}-{socket.gethostname()}-"


@contextmanager
def atomic_folder(final: str | os.PathLike, *, replace: bool = True):
    """Yield a temporary sibling folder to fill; when the block finishes it becomes `final`. A block that raises
    (or a process killed inside it) leaves no folder that looks complete.

    replace=True (a run's outputs, one writer): an existing `final` is swapped out (`swap_in`).
    replace=False (a shared cache: the first complete writer wins): when another process put `final` in place
    meanwhile, that one is kept and ours is dropped; temporaries that dead processes of this host left are
    removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not replace:
        remove_abandoned(final)
    tmp = final.parent / f"{_tmp_prefix(final)}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if replace:
            swap_in(tmp, final)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():  # not another process that finished first: a real error
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_abandoned(final: Path) -> None:
    """The temporaries of `final` that processes of this host left when killed (a live one is another caller's)."""
    prefix = _tmp_prefix(Path(final))
    for tmp in Path(final).parent.glob(f"{prefix}*"):
        try:
            os.kill(int(tmp.name[len(prefix):]), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def swap_in(new: Path, final: Path) -> None:
    """Replace the folder `final` by `new` (a sibling). The old one is renamed aside first and removed last, so a
    kill at any point leaves `final` whole (old or new), or, between the two renames, the old one whole as
    `.old-<name>-<pid>`: readers use it (run_folder.located), the next writer puts it back (`recover`)."""
    final = Path(final)
    aside = final.parent / f"{ASIDE}{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, aside)
    os.replace(new, final)
    shutil.rmtree(aside, ignore_errors=True)


def remove_folder(path: Path) -> None:
    """Renamed (atomically) out of the way first: a kill while deleting never leaves a partial folder under its name."""
    path = Path(path)
    if path.exists():
        trash = path.parent / f"{TRASH}{path.name}-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def recover(folder: Path) -> None:
    """Undo what a writer killed in `folder` left: a folder moved aside and not yet replaced goes back, the rest
    (temporary and half-removed folders and files, or an aside whose replacement is in place) goes. For a folder
    with one writer (a run folder): it removes every temporary in it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        if p.name.startswith(ASIDE):
            name = p.name[len(ASIDE):].rsplit("-", 1)[0]
            if not (folder / name).exists():
                os.replace(p, folder / name)
                continue
        elif not p.name.startswith((TMP_PREFIX, TRASH)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
