"""`python -m leaderboards ...`: the same command as `fmtspec leaderboard ...`."""

import sys

from fmtspec.cli import _Parser
from fmtspec.core.errors import FmtspecError
from leaderboards.cli import add_arguments, run


def main(argv=None) -> int:
    parser = _Parser(prog="python -m leaderboards", description="Build a markdown leaderboard from lm-eval results.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FmtspecError as exc:
        sys.stderr.write(f"leaderboard: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
