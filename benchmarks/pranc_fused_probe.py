"""Would one pass over the basis per step beat two? (a probe, not a mode of reparam)

A training step in materialized mode reads the k x d basis twice: grad alpha = B g (backward) and, after
the optimizer step, theta = alpha B (next forward). Because SGD/Adam update each coefficient on its own,
both could be done per block of R rows while the block is in cache. This compares the two separate gemvs
with that fused loop (plain SGD update) for several R, best of 4, one thread.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/pranc_fused_probe.py --k 10000 --d 44000
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=44_000)
    ap.add_argument("--rows", default="8,32,64,128,512", help="row-block sizes R of the fused loop")
    a = ap.parse_args()
    torch.set_num_threads(1)
    k, d = a.k, a.d
    basis, alpha, g = torch.rand(k, d), torch.rand(k), torch.rand(d)

    def two():
        return (alpha - 1e-3 * (basis @ g)) @ basis

    def fused(r: int):
        theta, grad = torch.zeros(d), torch.empty(k)
        for r0 in range(0, k, r):
            rows = basis[r0:r0 + r]
            grad[r0:r0 + r] = rows @ g
            theta.addmv_(rows.t(), alpha[r0:r0 + r] - 1e-3 * grad[r0:r0 + r])
        return theta

    def best(f) -> float:
        f()
        times = []
        for _ in range(4):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    print(f"k={k} d={d}: two gemvs {best(two):.4f} s")
    for r in map(int, a.rows.split(",")):
        print(f"  fused, R={r:<4} {best(lambda r=r: fused(r)):.4f} s")
    print(f"max |two - fused(64)| = {(two() - fused(64)).abs().max():.2e}")


if __name__ == "__main__":
    main()
