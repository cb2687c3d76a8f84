"""`reparam reproduce`: run every method's claims at small scale and write a readable report."""

from reparam.reproduce.runner import METHODS, run_reproduce

__all__ = ["METHODS", "run_reproduce"]
