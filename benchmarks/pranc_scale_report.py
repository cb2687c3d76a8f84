"""Table and plot of issue 21's scale runs (benchmarks/pranc_scale_train.sh plus the dense runs beside them).

    python benchmarks/pranc_scale_report.py RUN_DIR [RUN_DIR ...] --plot docs/results/pranc_scale_curves.png

Each RUN_DIR is a finished `reparam train` / `reparam pranc train` output folder (metrics.json, log.jsonl);
prints a markdown table (no number typed by hand) and plots validation accuracy per epoch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    rows = []
    print("| run | k | stored numbers | file bytes | val acc per epoch | test acc | test acc from the file "
          "| s per epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for d in map(Path, a.runs):
        m = json.loads((d / "metrics.json").read_text())
        log = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines() if line.strip()]
        rows.append((d.name, log))
        k = m.get("k")
        stored = m.get("params_stored", m.get("params_total"))
        print(f"| {d.name} | {'-' if k is None else f'{k:,}'} | {stored:,} | {m.get('file_bytes', '-')} | "
              + " / ".join(f"{100 * r['val_acc']:.2f}" for r in log) + f" | {100 * m['test_acc']:.2f}% | "
              + (f"{100 * m['test_acc_from_file']:.2f}%" if "test_acc_from_file" in m else "-") + " | "
              + " / ".join(f"{r['seconds']:.0f}" for r in log) + " |")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, log in rows:
            ax.plot([r["epoch"] for r in log], [100 * r["val_acc"] for r in log], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("ResNet-20, Fashion-MNIST (54,000 training images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
    main()
