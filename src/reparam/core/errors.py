"""User-facing errors. The CLI prints `error: <message>` on one line and exits with the error's code."""


class ReparamError(Exception):
    """Bad input from a user: a value that is not allowed, a missing or corrupt file.

    The message names the bad value and what is allowed. Exit code 2.
    """

    exit_code = 2


class TrainingDiverged(Exception):
    """The loss became NaN/inf. The last good checkpoint is kept; exit code 3."""

    exit_code = 3


def choose(name: str, allowed, what: str):
    """Return `name` if it is one of `allowed` (a dict or iterable of names), else a clear error."""
    names = list(allowed.keys()) if isinstance(allowed, dict) else list(allowed)
    if name not in names:
        raise ReparamError(f"unknown {what} {name!r}; allowed: {', '.join(map(str, names))}")
    return allowed[name] if isinstance(allowed, dict) else name
