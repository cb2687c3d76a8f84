"""Small-scale versions of the paper's Table 8 (width/depth at a fixed number of coefficients) and Table 9
(progressive decoding from the largest p% coefficients per layer, vs random p% subsets).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/image_tables.py --image astronaut --size 64 \
        --k 800 --steps 400 --lr 1e-2 --out runs/image/tables

Writes OUT/tables.json, OUT/table8_depth.png, OUT/table8_width.png, OUT/table9_top_p.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from reparam.core.outdir import output_dir, write_json
from reparam.core.runtime import set_threads
from reparam.data import load_image
from reparam.image import codec, container
from reparam.image.fit import FitConfig
from reparam.image.inr import InrSpec
from reparam.image.metrics import from_uint8, quality
from reparam.metrics.plots import line_plot
from reparam.pranc import pranc_core

BITS_PER_COEF = 6.0   # the rate of every point: the file for k coefficients at the codec's default density


def encode_point(x, k, spec, fit, seed, tmp):
    c, h, w = x.shape
    cfg = codec.CodecConfig(inr=spec, fit=fit, seed=seed, grow="none")
    bpp = (container.file_overhead(spec.depth + 1) * 8 + BITS_PER_COEF * k) / (h * w)
    enc = codec.encode(x, bpp, cfg, k=k, progress=False)
    path = Path(tmp) / f"w{spec.width}_d{spec.depth}_lr{fit.lr}.rpic"
    size = codec.save(path, enc)
    dec = codec.decode(path)
    assert dec.bit_exact
    return path, {"width": spec.width, "depth": spec.depth, "k": k, "budgets": enc.budgets, "bytes": size,
                  "lr": fit.lr, **codec.bpp_report(size, k, h, w, enc.header.header_bytes()),
                  **quality(x, from_uint8(dec.image)), "encode_seconds": enc.encode_seconds}


def keep_random(model, fraction, gen):
    core = pranc_core(model)
    with torch.no_grad():
        for b in core.blocks:
            a = core.alpha[b.alpha_offset:b.alpha_offset + b.k]
            n = max(1, int(-(-fraction * b.k // 1)))
            drop = torch.randperm(b.k, generator=gen)[n:]
            a[drop] = 0.0
    core._exact_cache.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="astronaut")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--depths", default="2,3,4,5")
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--random-repeats", type=int, default=4)
    ap.add_argument("--paper-lr", action="store_true", help="also encode the base point with lr 1e-3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth-only", action="store_true", help="skip the width sweep (extra seeds of Table 8)")
    ap.add_argument("--out", default="runs/image/tables")
    args = ap.parse_args()
    set_threads(1)
    x = load_image(args.image, size=args.size, mode=None)
    x = from_uint8((x * 255).round().to(torch.uint8))
    c, h, w = x.shape
    base = InrSpec()
    fit = FitConfig(steps=args.steps, lr=args.lr, seed=args.seed)
    res = {"image": args.image, "size": [h, w], "k": args.k, "steps": args.steps, "lr": args.lr,
           "base": base.to_dict(), "depth": [], "width": [], "top_p": [], "random_p": []}
    with output_dir(args.out, overwrite=True) as work, tempfile.TemporaryDirectory() as tmp:
        base_path = None
        for d in [int(v) for v in args.depths.split(",")]:
            path, p = encode_point(x, args.k, replace(base, depth=d), fit, args.seed, tmp)
            res["depth"].append(p)
            print("depth", json.dumps(p), flush=True)
            if d == base.depth:
                base_path = path
        for wd in [] if args.depth_only else [int(v) for v in args.widths.split(",")]:
            if wd == base.width and any(p["depth"] == base.depth for p in res["depth"]):
                res["width"].append(next(p for p in res["depth"] if p["depth"] == base.depth))
                continue
            _, p = encode_point(x, args.k, replace(base, width=wd), fit, args.seed, tmp)
            res["width"].append(p)
            print("width", json.dumps(p), flush=True)
        if args.paper_lr:
            _, p = encode_point(x, args.k, base, replace(fit, lr=1e-3), args.seed, tmp)
            res["paper_lr"] = p
            print("paper lr", json.dumps(p), flush=True)
        if base_path is None:
            base_path, _ = encode_point(x, args.k, base, fit, args.seed, tmp)
        gen = torch.Generator().manual_seed(args.seed)
        for pct in range(10, 101, 10):
            dec = codec.decode(base_path, top=pct)
            res["top_p"].append({"p": pct, "kept": dec.kept, "coef_bpp": 16 * dec.kept / (h * w),
                                 "paper_bpp": 2 * dec.kept / (h * w), **quality(x, from_uint8(dec.image))})
            rs = []
            for _ in range(args.random_repeats):
                model, _ = codec.load(base_path)
                keep_random(model, pct / 100, gen)
                rs.append(quality(x, from_uint8(codec.render_uint8(model, h, w)))["psnr"])
            res["random_p"].append({"p": pct, "psnr_mean": sum(rs) / len(rs), "psnr_all": rs})
        write_json(work / "tables.json", res)
        line_plot({"PSNR": ([p["depth"] for p in res["depth"]], [p["psnr"] for p in res["depth"]])},
                  work / "table8_depth.png", "hidden layers (depth)", "PSNR (dB)",
                  title=f"{args.image} {h}x{w}, k={args.k} fixed")
        if res["width"]:
            line_plot({"PSNR": ([p["width"] for p in res["width"]], [p["psnr"] for p in res["width"]])},
                      work / "table8_width.png", "width", "PSNR (dB)",
                      title=f"{args.image} {h}x{w}, k={args.k} fixed")
        line_plot({"largest |alpha| p% per layer": ([p["p"] for p in res["top_p"]], [p["psnr"] for p in res["top_p"]]),
                   f"random p% (mean of {args.random_repeats})": ([p["p"] for p in res["random_p"]],
                                                                  [p["psnr_mean"] for p in res["random_p"]])},
                  work / "table9_top_p.png", "kept coefficients per layer (%)", "PSNR (dB)",
                  title=f"progressive decoding, {args.image} {h}x{w}, k={args.k}")
    print(json.dumps({k: v for k, v in res.items() if k in ("top_p", "random_p")}))


if __name__ == "__main__":
    main()
