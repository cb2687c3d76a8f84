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


# --full runs on Fashion-MNIST (28x28, 60,000 train / 10,000 test images) instead of the embedded digits.
# Each method trains on a stratified subset of the train split so that the whole run stays at hours, not
# days, on 2 CPU cores; the validation split (evaluated after every epoch) is small, the test split complete.
FULL_DATASET = "fashion-mnist"
DATA_TITLES = {"digits": "digits", "fashion-mnist": "Fashion-MNIST"}   # how reports name the data sets
FULL_TRAIN_SUBSET = {"dense": 10_000, "pranc": 5_000, "mixturegrowth": 5_000, "trp": 3_000, "compander": 1_000,
                     "tickets": 3_000}
FULL_VAL_FRACTION = 0.02        # 1,200 of the 60,000 train images
# tiny + full: the test suite's smoke test of the full-mode code path (seconds per method)
TINY_FULL_SUBSET = 100
TINY_FULL_VAL_FRACTION = 0.002  # 120 images
TINY_FULL_TEST_LIMIT = 100


@dataclass
class ReproduceContext:
    out_dir: Path               # write plots here (PNG), reference them by file name in Claim.plots
    quick: bool = True          # quick: embedded data only (digits, skimage photos), ~2 minutes per method;
    #                             full: Fashion-MNIST subsets and larger models (hours, resumable)
    seed: int = 0
    seeds: int = 3              # number of seeds where a claim needs statistics
    threads: int = 1
    work_dir: Path | None = None  # cache of finished experiments for resumable --full runs
    tiny: bool = False          # smoke-test size (seconds): tiny data and 1-2 epochs; verdicts meaningless,
    #                             used by the test suite so that a broken method shows up in CI

    @property
    def dataset(self) -> str:
        """The classification data set of this mode: "digits" (quick) or "fashion-mnist" (full)."""
        return "digits" if self.quick else FULL_DATASET

    @property
    def data_title(self) -> str:
        """The data set's name in report text: "digits" or "Fashion-MNIST"."""
        return DATA_TITLES[self.dataset]

    def train_subset(self, method: str) -> int | None:
        """Training images of `method` in full mode (a stratified subset of Fashion-MNIST's train split).
        None in quick mode, where every hook keeps its own setting on the embedded data."""
        if self.quick:
            return None
        return TINY_FULL_SUBSET if self.tiny else FULL_TRAIN_SUBSET[method]

    @property
    def val_fraction(self) -> float:
        """Share of the train split held out for validation (load_dataset's default 0.1 in quick mode)."""
        if self.quick:
            return 0.1
        return TINY_FULL_VAL_FRACTION if self.tiny else FULL_VAL_FRACTION

    @property
    def test_limit(self) -> int:
        """> 0: evaluate on a seeded random subset of this many test images (only the tiny full-mode smoke test)."""
        return TINY_FULL_TEST_LIMIT if self.tiny and not self.quick else 0

    def load_data(self, method: str, seed: int, quick_subset: int | None = None, **options):
        """The splits `method` trains on. Quick mode: `load_dataset("digits", seed=seed, train_subset=quick_subset)`
        exactly as the hooks always called it; full mode: Fashion-MNIST with the method's train subset, the
        small validation split and (tiny only) a limited test split. `options` go to load_dataset."""
        from reparam.data import limit_test, load_dataset

        if self.quick:
            return load_dataset("digits", seed=seed, train_subset=quick_subset, **options)
        splits = load_dataset(FULL_DATASET, seed=seed, train_subset=self.train_subset(method),
                              val_fraction=self.val_fraction, **options)
        return limit_test(splits, self.test_limit, seed) if self.test_limit else splits

    def data_args(self, method: str) -> str:
        """The data options of a command line that reproduces `method`'s full-mode data ("" in quick mode,
        where the commands' default digits is used)."""
        if self.quick:
            return ""
        return (f" --data {FULL_DATASET} --train-subset {self.train_subset(method)} "
                f"--val-fraction {self.val_fraction}")

    def data_label(self, splits) -> str:
        """How a setting text names the data: "digits 8x8" in quick mode (unchanged), else the data set, image
        size and split sizes actually used, e.g. "Fashion-MNIST 28x28 (3,000 train / 1,200 val / 10,000 test)"."""
        if self.quick:
            return "digits 8x8"
        return describe_data(splits)


def describe_data(splits) -> str:
    h, w = splits.image_size
    name = DATA_TITLES.get(splits.name, splits.name)
    return (f"{name} {h}x{w} ({len(splits.train):,} train / {len(splits.val):,} val / {len(splits.test):,} test "
            "images)")
