"""The result format `reparam reproduce` collects: one record per paper claim, one summary per method.

Every method package provides `reparam.<method>.reproduce.run(ctx: ReproduceContext) -> MethodReport`.
Verdicts are computed from measurements (never typed in) and the statistic used is stated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Verdict = Literal["holds", "does not hold", "inconclusive"]


@dataclass
class Claim:
    method: str                 # "pranc", "image-codec", "mixturegrowth", "trp", "compander", "tickets"
    claim_id: str               # short stable id, e.g. "pranc-beats-hashednet"
    statement: str              # the paper's claim in one sentence
    paper_value: str            # the paper's number(s), e.g. "ResNet-20 CIFAR-10: 81.5% at 10k params"
    paper_setting: str
    measured_value: str         # e.g. "72.1 +- 1.3 % vs 55.0 +- 2.0 % (3 seeds)"
    measured_setting: str       # dataset, model, budget, seeds
    verdict: Verdict
    statistic: str              # how the verdict was computed, e.g. "mean over 3 seeds, paired diff > 0 on 3/3"
    reason: str = ""            # why it does not hold, when known
    details: dict[str, Any] = field(default_factory=dict)   # raw numbers
    plots: list[str] = field(default_factory=list)          # file names relative to the report folder
    command: str = ""           # the command that reproduces this row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MethodSummary:
    method: str
    stored: str                 # what is stored or saved: numbers, bytes, FLOPs, sparsity
    accuracy: float | None      # the method's test accuracy (fraction) in its headline setting
    dense_accuracy: float | None
    train_time_ratio: float | None   # method training seconds / dense training seconds
    setting: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MethodReport:
    summary: MethodSummary
    claims: list[Claim]
    seconds: float = 0.0


@dataclass
class ReproduceContext:
    out_dir: Path               # write plots here (PNG), reference them by file name in Claim.plots
    quick: bool = True          # quick: embedded data only (digits, skimage photos), ~2 minutes per method
    seed: int = 0
    seeds: int = 3              # number of seeds where a claim needs statistics
    threads: int = 1
    work_dir: Path | None = None  # cache of finished experiments for resumable --full runs
    tiny: bool = False          # smoke-test size (seconds): tiny data and 1-2 epochs; verdicts meaningless,
    #                             used by the test suite so that a broken method shows up in CI
