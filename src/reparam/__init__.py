"""reparam: networks whose weights are generated rather than stored.

    import reparam
    from reparam import pranc, compander, trp, tickets, mixturegrowth, nola
    handle = compander.apply(model, compander.Config(a=0.8, b=0.5))   # every method: Config, apply, fold
    reparam.summary(model)                                              # tensor | method | dense | stored

Method packages load on first use, so `import reparam` stays cheap.
"""

import importlib

__version__ = "0.1.0"

METHODS = ("pranc", "compander", "trp", "tickets", "mixturegrowth", "nola")
_LAZY = {**{m: f"reparam.{m}" for m in METHODS}, "image": "reparam.image"}


def summary(model, print_table: bool = True):
    """Every parameter of the plain model, the method that generates it, dense and stored numbers."""
    from reparam.core.summary import summary as _summary

    return _summary(model, print_table=print_table)


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'reparam' has no attribute {name!r}")


__all__ = ["METHODS", "summary", *_LAZY]
