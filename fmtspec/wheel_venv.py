"""Build fmtspec's wheel and install it into a fresh venv, as a user's `pip install` would.

Used by the install test and the start-up benchmark. The fresh venv gets fmtspec alone (no
dependencies are downloaded); `borrow_site_packages` lets it import them from the running
interpreter's environment instead, appended after its own site-packages.
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_wheel(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out_dir), str(REPO)],
                   check=True, stdout=subprocess.DEVNULL)
    (wheel,) = out_dir.glob("fmtspec-*.whl")
    return wheel


def make_venv(path: Path) -> Path:
    """A bare venv (no pip); returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    return path / "bin" / "python"


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def install_wheel(python: Path, wheel: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, stdout=subprocess.DEVNULL)


def borrow_site_packages(python: Path) -> None:
    """Make the current environment's packages importable in the venv (after its own)."""
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (site_packages(python) / "zz_borrowed_deps.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
