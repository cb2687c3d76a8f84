"""Encode/decode time and peak memory of the image codec (256x256, the codec's default settings).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/image_speed.py --size 256 --bpp 1.0 \
        --out runs/image/speed.json

Each phase runs in its own subprocess so its peak resident memory (ru_maxrss) is its own. Decode is
repeated (--repeats) from the file alone, in fresh processes, and the median is reported; the first decode
also includes importing torch (reported separately as process wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def phase_encode(args) -> dict:
    from dataclasses import replace

    import torch

    from reparam.core.runtime import set_threads
    from reparam.data import load_image
    from reparam.image import codec
    from reparam.image.metrics import from_uint8, quality
    from reparam.metrics.timing import peak_rss_mb

    set_threads(1)
    x = load_image(args.image, size=args.size, mode=None)
    x = from_uint8((x * 255).round().to(torch.uint8))
    c, h, w = x.shape
    cfg = codec.CodecConfig()
    if args.steps:
        cfg = replace(cfg, fit=replace(cfg.fit, steps=args.steps))
    cpu0 = time.process_time()
    enc = codec.encode(x, args.bpp, cfg, progress=False)
    cpu = time.process_time() - cpu0
    size = codec.save(args.file, enc)
    k = enc.k
    return {"k": k, "bytes": size, **codec.bpp_report(size, k, h, w, enc.header.header_bytes()),
            **quality(x, from_uint8(enc.decoded)), "float_psnr": enc.float_psnr,
            "encode_seconds": enc.encode_seconds, "encode_cpu_seconds": cpu, "fit_seconds": enc.fit.seconds,
            "qat_seconds": enc.qat.seconds if enc.qat else 0.0, "steps": cfg.fit.steps, "qat_steps": cfg.qat_steps,
            "encode_peak_rss_mb": peak_rss_mb(), "inr": codec.read_image_header(args.file)["inr"],
            "tiles": list(enc.tiles), "image": [c, h, w]}


def phase_decode(args) -> dict:
    from reparam.core.runtime import set_threads
    from reparam.image import codec
    from reparam.metrics.timing import peak_rss_mb

    set_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    dec = codec.decode(args.file)
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"decode_seconds": total, "decode_cpu_seconds": cpu, "bit_exact": dec.bit_exact,
            "decode_peak_rss_mb": peak_rss_mb()}


def run_phase(phase: str, argv: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--phase", phase, *argv], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["encode", "decode"], default=None)
    ap.add_argument("--image", default="astronaut")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bpp", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None, help="float-fit steps (default: the codec's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--file", default="runs/image/speed.rpic")
    ap.add_argument("--out", default="runs/image/speed.json")
    ap.add_argument("--decode-only", action="store_true", help="reuse --file and the encode numbers in --out")
    args = ap.parse_args()
    if args.phase == "encode":
        print(json.dumps(phase_encode(args)))
        return
    if args.phase == "decode":
        print(json.dumps(phase_decode(args)))
        return
    Path(args.file).parent.mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:]]
    if args.decode_only:
        old = json.loads(Path(args.out).read_text())
        enc, enc_wall = old, old.get("encode_process_seconds")
    else:
        enc, enc_wall = run_phase("encode", argv)
    decs = [run_phase("decode", argv) for _ in range(args.repeats)]
    result = {**enc, "encode_process_seconds": enc_wall,
              "decode_cpu_seconds_median": statistics.median(d["decode_cpu_seconds"] for d, _ in decs),
              "decode_seconds_median": statistics.median(d["decode_seconds"] for d, _ in decs),
              "decode_seconds_all": [d["decode_seconds"] for d, _ in decs],
              "decode_process_seconds_median": statistics.median(t for _, t in decs),
              "decode_peak_rss_mb": max(d["decode_peak_rss_mb"] for d, _ in decs),
              "bit_exact": all(d["bit_exact"] for d, _ in decs), "load_avg": os.getloadavg(),
              "command": "python benchmarks/image_speed.py " + " ".join(argv)}
    if args.decode_only:
        result["command"] = old["command"] + "   (decode re-measured: " + result["command"] + ")"
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
