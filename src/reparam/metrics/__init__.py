"""Measurement shared by every method: accuracy, FLOPs, parameters and bytes, latency, memory, plots."""

from reparam.metrics.counting import bytes_of, count_dense_params, count_flops, count_macs, count_params
from reparam.metrics.evaluation import accuracy
from reparam.metrics.timing import latency, peak_rss_mb

__all__ = [
    "accuracy",
    "bytes_of",
    "count_dense_params",
    "count_flops",
    "count_macs",
    "count_params",
    "latency",
    "peak_rss_mb",
]
