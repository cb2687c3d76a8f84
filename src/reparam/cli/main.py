"""The `reparam` command. Each method registers its own sub-commands from its own module.

A command module exposes `register(subparsers)` which adds parsers whose `func(args) -> int | None`
does the work. Modules listed here that do not exist yet are skipped, so a method can land alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reparam import __version__
from reparam.core.errors import ReparamError, TrainingDiverged

COMMAND_MODULES = [
    "reparam.cli.train_cmd",
    "reparam.cli.pranc",
    "reparam.cli.image",
    "reparam.cli.mixturegrowth",
    "reparam.cli.trp",
    "reparam.cli.compander",
    "reparam.cli.tickets",
    "reparam.cli.reproduce",
]


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; we keep the exit code but make the error one line.

    Options are never matched by prefix (allow_abbrev=False): an abbreviation that works today could
    silently change meaning when a later option shares its prefix (`--basis` read as `--basis-seed`).
    Sub-parsers are built with this class too, so the rule holds for every command.
    """

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reparam", description="Networks whose weights are generated, not stored.")
    parser.add_argument("--version", action="version", version=f"reparam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # the method has not landed yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # --help, --version, or argparse's one-line error: return its exit code
        return e.code if isinstance(e.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in reports next to the numbers
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        from reparam.cli.common import setup_device, setup_distributed
        from reparam.cli.validate import precheck
        from reparam.train.config import set_default_select_on

        precheck(args)           # paths, resume settings: before anything is created
        set_default_select_on(getattr(args, "select_on", None) or "best")
        setup_device(args)       # every Trainer of the command follows --device, whoever builds its config
        setup_distributed(args)  # joins torchrun's process group before any command opens its output folder
        rc = args.func(args)
    except (ReparamError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def entry() -> int:
    """The `reparam` executable: main(), then, under torchrun, exit at once (leaving the process group only
    after a success: after an error a peer may be gone)."""
    code = main()
    from reparam.core import distributed as rd

    if rd.is_distributed():
        rd.exit_process(code, leave_group=code == 0)
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
