"""The command line's one validation layer: argument types, paths and resume settings.

Every refusal is one line naming the option, the value and what is allowed (argparse prints it for the
types here; `precheck` raises ReparamError), and happens before a command does any work or creates any
file. The types are plain argparse `type=` callables so each option states its rule where it is defined.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reparam.core.errors import ReparamError

SEED_MAX = 2**63 - 1          # seeds are non-negative 63-bit integers everywhere (PRANC, the codec, data splits)
SETTINGS_FILE = "resume.json"  # a run's settings, kept in OUT.partial so --resume can refuse a changed run


# ---------------------------------------------------------------------------------------------- numbers
def _bound_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "a finite number"


def number(kind: type = float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, allowed: str | None = None) -> Callable[[str], Any]:
    """An argparse type: a finite int or float within [lo, hi] (open ends with lo_open/hi_open)."""
    what = "an integer" if kind is int else "a number"
    rule = allowed or f"{what} {_bound_text(lo, hi, lo_open, hi_open)}".replace(" a finite number", "")

    def parse(text: str):
        try:
            v = int(text) if kind is int else float(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; allowed: {rule}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {rule} (finite)")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            raise argparse.ArgumentTypeError(f"{text} is not allowed; allowed: {rule}")
        return v

    parse.__name__ = f"{kind.__name__}_{_bound_text(lo, hi, lo_open, hi_open)}"
    return parse


positive_int = number(int, 1, allowed="a positive integer")
nonneg_int = number(int, 0, allowed="an integer >= 0")
seed_int = number(int, 0, SEED_MAX, allowed=f"an integer in [0, {SEED_MAX}]")
finite_float = number(float)
positive_float = number(float, 0, lo_open=True)
nonneg_float = number(float, 0)
fraction_open = number(float, 0, 1, lo_open=True, hi_open=True)      # (0, 1)
fraction_0_1 = number(float, 0, 1)                                     # [0, 1]
fraction_upto_1 = number(float, 0, 1, lo_open=True)                   # (0, 1]
sparsity = number(float, 0, 1, hi_open=True)                           # [0, 1)


def list_of(item: Callable[[str], Any], *, unique: bool = True, allow_empty: bool = False,
            what: str = "values") -> Callable[[str], list]:
    """An argparse type: comma-separated items, each parsed by `item`; no empty item, no repeated item
    (unless unique=False); an empty string only where allow_empty (it then means "none")."""

    def parse(text: str) -> list:
        if not text.strip():
            if allow_empty:
                return []
            raise argparse.ArgumentTypeError(f"an empty list is not allowed; give comma-separated {what}")
        parts = [p.strip() for p in text.split(",")]
        if any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give comma-separated {what} "
                                             "like 1,2,3")
        values = [item(p) for p in parts]
        if unique:
            seen: list = []
            for p, v in zip(parts, values):
                if v in seen:
                    raise argparse.ArgumentTypeError(f"{text!r} lists {p} twice; each value may appear once")
                seen.append(v)
        return values

    return parse


int_list = list_of(number(int), what="integers")
float_list = list_of(finite_float, what="numbers")


def names(text: str, allowed: Iterable[str] | None, option: str, what: str = "name", *, unique: bool = True
          ) -> list[str]:
    """Comma-separated names checked against `allowed` (None: any non-empty name); one-line errors."""
    parts = [p.strip() for p in str(text).split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ReparamError(f"{option} {text!r} has an empty item; give comma-separated names")
    allowed = list(allowed) if allowed is not None else None
    for p in parts:
        if allowed is not None and p not in allowed:
            raise ReparamError(f"{option}: unknown {what} {p!r}; allowed: {', '.join(allowed)}")
    if unique:
        dup = next((p for i, p in enumerate(parts) if p in parts[:i]), None)
        if dup is not None:
            raise ReparamError(f"{option} {text!r} lists {dup!r} twice; each name may appear once")
    return parts


# ---------------------------------------------------------------------------------------------- paths
def _first_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(path: str | os.PathLike, *, option: str = "--out", kind: str = "folder",
                 overwrite: bool = False, resume: bool = False) -> None:
    """An output `kind` ("folder" or "file") can be created at `path`: its nearest existing ancestor is a
    writable folder, it is not an existing item of the other kind, and it exists only with --overwrite
    (or, for --resume, its OUT.partial exists)."""
    text = str(path)
    if not text.strip():
        raise ReparamError(f"{option} is empty; give a {kind} name")
    p = Path(text).expanduser()
    anc = _first_existing(p.parent if p.parent != p else p)
    if not anc.is_dir():
        raise ReparamError(f"{option} {text}: {anc} is a file, not a folder, so nothing can be created under it")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ReparamError(f"{option} {text}: folder {anc} is not writable")
    if p.exists():
        if kind == "folder" and not p.is_dir():
            raise ReparamError(f"{option} {text} is an existing file; give a folder name")
        if kind == "file" and p.is_dir():
            raise ReparamError(f"{option} {text} is a folder; give a file name")
        if not overwrite:
            raise ReparamError(f"{option} {text} already exists; choose another {option} or pass --overwrite")
    if kind == "folder":
        part = p.with_name(p.name + ".partial")
        if part.exists() and not part.is_dir():
            raise ReparamError(f"{part} is a file; it is in the way of {option} {text}'s working folder")
        if resume and not part.is_dir():
            raise ReparamError(f"--resume: {part} does not exist, so there is nothing to resume; "
                               "drop --resume to start a new run")


def check_input(path: str | os.PathLike, *, option: str, kind: str = "file") -> Path:
    """An existing input file or folder."""
    p = Path(str(path)).expanduser()
    if not str(path).strip():
        raise ReparamError(f"{option} is empty; give a {kind}")
    if kind == "file":
        if p.is_dir():
            raise ReparamError(f"{option} {path} is a folder; give a file")
        if not p.is_file():
            raise ReparamError(f"{option} {path}: file not found")
    elif not p.is_dir():
        raise ReparamError(f"{option} {path}: " + ("is a file, not a folder" if p.exists() else "folder not found"))
    return p


# Attributes every parser may define, and what they are. `precheck` checks them before a command runs.
INPUT_FILES = {"file": "file", "checkpoint": "checkpoint", "mask": "--mask"}
INPUT_DIRS = {"src": "--from", "folder": "folder", "data_root": "--data-root"}
WORK_DIRS = {"cache": "--cache", "work": "--work"}   # created when missing, so only "not a file"


def precheck(args: argparse.Namespace) -> None:
    """Paths and resume settings of any command, before it does anything."""
    for attr, option in INPUT_FILES.items():
        if getattr(args, attr, None) is not None:
            check_input(getattr(args, attr), option=option, kind="file")
    for attr, option in INPUT_DIRS.items():
        if getattr(args, attr, None) is not None:
            check_input(getattr(args, attr), option=option, kind="folder")
    for attr, option in WORK_DIRS.items():
        v = getattr(args, attr, None)
        if v is not None and Path(v).exists() and not Path(v).is_dir():
            raise ReparamError(f"{option} {v} is a file, not a folder")
    force = bool(getattr(args, "force", False))
    resume = getattr(args, "resume", None)
    if force and not resume:
        raise ReparamError("--force only applies with --resume (continue with the stored settings)")
    # Under torchrun only process 0 owns OUT.partial (the others may run on machines without it)
    owner = os.environ.get("RANK", "0") == "0"
    if getattr(args, "out", None) is not None and getattr(args, "out_kind", "folder") is not None:
        check_output(args.out, kind=getattr(args, "out_kind", "folder"), overwrite=bool(getattr(args, "overwrite",
                     False)), resume=resume is True and owner)
        if resume is True:   # a process that cannot see the settings file skips (check_resume returns)
            check_resume(args, Path(str(args.out) + ".partial"))
    if getattr(args, "output", None) is not None:
        check_output(args.output, option="-o/--output", kind="file", overwrite=bool(getattr(args, "overwrite",
                     False)))


# ---------------------------------------------------------------------------------------------- resume
# Options that do not change what a run computes; everything else must match to resume.
RUNTIME_KEYS = {"func", "argv", "threads", "no_progress", "device", "dist_timeout", "dist_backend", "sync_bn",
                "resume", "force", "overwrite", "out", "out_kind"}


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What a run computes from: its options as JSON values (tuples become lists)."""
    keep = {k: v for k, v in sorted(vars(args).items()) if k not in RUNTIME_KEYS and not k.startswith("_")
            and not callable(v)}
    return json.loads(json.dumps(keep, default=str))


def _show(key: str, value: Any) -> str:
    v = ",".join(map(str, value)) if isinstance(value, list) else value
    return f"--{key.replace('_', '-')} {v}"


def check_resume(args: argparse.Namespace, work: Path) -> None:
    """Refuse to resume `work` (an OUT.partial) with settings other than those it was started with; with
    --force, continue with the stored ones (they replace the given ones in `args`)."""
    path = work / SETTINGS_FILE
    if not path.is_file():
        return   # started by a version that kept no settings; the trainer still checks its own config
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise ValueError
    except (OSError, ValueError, RecursionError):
        raise ReparamError(f"--resume: {path} is damaged; start a new run (drop --resume)") from None
    now = settings_of(args)
    # Commands that cache finished jobs one by one (compare, grid, reproduce) may add jobs on resume: the
    # options that only choose which jobs run are named in the parser's `_resume_free`.
    free = set(getattr(args, "_resume_free", ()))
    diff = [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k) and k not in free]
    if not diff:
        return
    if not getattr(args, "force", False):
        listed = "; ".join(f"{_show(k, stored.get(k))} (now {now.get(k)!r})" if k in stored
                           else f"{k} (not stored)" for k in diff)
        raise ReparamError(f"--resume: {work} was started with other settings: {listed}; give the same "
                           "options, or add --force to continue with the stored ones")
    for k in diff:
        if k in stored:
            setattr(args, k, stored[k])


@contextmanager
def run_folder(args: argparse.Namespace, out: str | os.PathLike | None = None, *, resume: bool | None = None):
    """output_dir(OUT) for a command: keeps the run's settings in OUT.partial while it runs (so --resume
    can compare them) and removes them before OUT is renamed into place."""
    from reparam.core import distributed as rd
    from reparam.core.outdir import output_dir, write_json

    resume = bool(getattr(args, "resume", False)) if resume is None else resume
    with output_dir(out if out is not None else args.out, overwrite=bool(getattr(args, "overwrite", False)),
                    resume=resume) as work:
        if rd.is_main():
            write_json(work / SETTINGS_FILE, settings_of(args))
        yield work
        (work / SETTINGS_FILE).unlink(missing_ok=True)
