"""Target tasks for adapters, registered as datasets of reparam.data.

The shifted targets of the tickets experiments (`<base>-rotated`, `-noisy`, `-inverted`, `-blurred`,
`digits28`; reparam.experiments.tickets.targets), class splits `<base>-0to4` / `<base>-5to9` (classes 0-4
or 5-9 relabelled 0-4) for base in digits, digits28, fashion-mnist (pretrain on one half, adapt to the other:
the same number of classes, so the base's head is adapted, not replaced), and the shifted splits
`<base>-0to4-rotated` / `-noisy` (the source classes, shifted).
"""

from __future__ import annotations

import numpy as np

from reparam.data.base import RawDataset

SPLITS = {"0to4": (0, 1, 2, 3, 4), "5to9": (5, 6, 7, 8, 9)}


def _keep(x, y, classes):
    y = np.asarray(y)
    idx = np.flatnonzero(np.isin(y, classes))
    relabel = {c: i for i, c in enumerate(classes)}
    return x[idx], np.array([relabel[int(v)] for v in y[idx]], dtype=np.int64)


def make_split_loader(base: str, classes: tuple[int, ...], shift: str = "identity"):
    from reparam.experiments.tickets.targets import make_loader

    def loader(root=None) -> RawDataset:
        raw = make_loader(base, shift)(root)
        x, y = _keep(raw.x, raw.y, classes)
        xt = yt = None
        if raw.x_test is not None:
            xt, yt = _keep(raw.x_test, raw.y_test, classes)
        return RawDataset(x=x, y=y, class_names=[raw.class_names[c] for c in classes], x_test=xt, y_test=yt,
                          test_fraction=raw.test_fraction, info=dict(raw.info))

    loader.__name__ = f"load_{base}_{'_'.join(map(str, classes))}_{shift}"
    return loader


def register_adapter_targets() -> list[str]:
    """Register the shifted targets and the class splits with reparam.data (idempotent); returns the names."""
    from reparam.data import DATASETS, register_dataset
    from reparam.experiments.tickets.targets import BASES, register_targets

    names = register_targets()
    for base in BASES:
        for suffix, classes in SPLITS.items():
            for shift in ("identity", "rotated", "noisy"):
                if shift != "identity" and suffix != "0to4":
                    continue
                name = f"{base}-{suffix}" + ("" if shift == "identity" else f"-{shift}")
                if name not in DATASETS:
                    register_dataset(name, make_split_loader(base, classes, shift))
                names.append(name)
    return names
