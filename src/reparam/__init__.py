"""reparam: networks whose weights are generated rather than stored."""

__version__ = "0.1.0"
