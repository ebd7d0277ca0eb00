import subprocess
import sys

import pytest

from fmtspec.cli import COMMANDS


def _fmtspec(*args):
    return subprocess.run([sys.executable, "-m", "fmtspec", *args], capture_output=True, text=True, timeout=120)


def test_bad_usage_is_one_line_and_exit_2():
    for args in (["no-such-command"], ["tiny-models"], ["tiny-models", "--output", "x", "--bogus"]):
        out = _fmtspec(*args)
        assert out.returncode == 2, args
        lines = [line for line in out.stderr.splitlines() if line.strip() and "[WARNING]" not in line]
        assert len(lines) == 1 and "error" in lines[0], out.stderr


def test_no_command_prints_help_and_exit_2():
    out = _fmtspec()
    assert out.returncode == 2 and "COMMAND" in out.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    out = _fmtspec(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: fmtspec " + command)


def test_top_level_help_does_not_import_torch():
    code = ("import sys; from fmtspec.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'fmtspec --help imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
