"""Interpreter start-up cost of installing fmtspec (its .pth hook), side by side in one run.

Builds the wheel, makes two fresh venvs (bare, and with the fmtspec wheel), then times
`python -c "import sys"` alternately in each and prints the medians and their ratio. Also checks that
the hook imports neither torch nor lm_eval at start-up.

    python bench/startup_cost.py [--runs 60]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fmtspec.wheel_venv import build_wheel, install_wheel, make_venv  # noqa: E402


def time_once(python: Path, code: str = "import sys", env=None) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", code], check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = build_wheel(tmp / "dist")
        bare = make_venv(tmp / "bare")
        with_pkg = make_venv(tmp / "with_fmtspec")
        install_wheel(with_pkg, wheel)
        probe = "import sys; print(sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules))"
        loaded = subprocess.run([str(with_pkg), "-c", probe], capture_output=True, text=True, check=True).stdout
        hooked = subprocess.run([str(with_pkg), "-c", "import sys; print(any(getattr(f, 'fmtspec_hook', 0) "
                                 "for f in sys.meta_path))"], capture_output=True, text=True, check=True).stdout
        for python in (bare, with_pkg):  # warm the file cache
            time_once(python)
        times = {"bare": [], "fmtspec": []}
        for _ in range(args.runs):
            times["bare"].append(time_once(bare))
            times["fmtspec"].append(time_once(with_pkg))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"python -c 'import sys', median of {args.runs} alternating runs")
    print(f"  bare venv:          {med['bare']:.2f} ms")
    print(f"  venv with fmtspec:  {med['fmtspec']:.2f} ms  (hook installed: {hooked.strip()}, "
          f"heavy modules at start-up: {loaded.strip()})")
    print(f"  added: {med['fmtspec'] - med['bare']:+.2f} ms, ratio with/without: {med['fmtspec'] / med['bare']:.3f}")


if __name__ == "__main__":
    main()
