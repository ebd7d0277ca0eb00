"""The `fmtspec` command. Each subcommand lives in the package that owns it and exposes
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their command runs,
so `fmtspec --help` does not import torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from fmtspec.core.errors import FmtspecError

# name -> (module, one-line help). The module's top level must import nothing heavy.
COMMANDS = {
    "train": ("trainers.cli", "train a run folder from a YAML config (finetune, prompt_tuning, promot, ...)"),
    "leaderboard": ("leaderboards.cli", "build a markdown leaderboard from lm-eval results"),
    "experiment": ("fmtspec.experiment", "train what is missing, score every run with lm_eval, write the leaderboard"),
    "diagnose": ("fmtspec.diagnose_cli",
                 "format-specialization diagnostics: label share over checkpoints, gradient alignment"),
    "demo": ("fmtspec.demo", "run the main job on the bundled tiny models and fixture data"),
    "tiny-models": ("fmtspec.tiny_models", "write tiny random-weight T5/mT5/Llama/GPT-2/BART model folders"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2 (argparse prints the whole usage otherwise)
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser_for(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except FmtspecError as exc:
        sys.stderr.write(f"fmtspec {args.command}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("fmtspec: interrupted\n")
        return 130


def build_parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported to define its arguments."""
    parser = _Parser(prog="fmtspec", description="fmtspec: fine-tuning without losing few-shot ability.")
    # `deepspeed --module fmtspec` without --no_local_rank puts --local_rank=N first; ranks come from the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = next((a for a in argv if not a.startswith("-") and a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


if __name__ == "__main__":
    sys.exit(main())
