"""`reparam image encode|decode|rd`: the PRANC image codec on the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from reparam.cli.common import (
    add_runtime_args,
    fraction_upto_1,
    list_of,
    number,
    positive_float,
    positive_int,
    print_table,
)
from reparam.cli.validate import check_output, names
from reparam.core.errors import ReparamError
from reparam.core.fileformat import atomic_write_bytes
from reparam.core.outdir import output_dir, write_json
from reparam.core.runtime import default_threads, set_threads
from reparam.data import load_image
from reparam.data.images import MAX_PIXELS
from reparam.image import codec, container
from reparam.image.inr import InrSpec
from reparam.image.metrics import from_uint8, quality

SEED32 = number(int, 0, 2**32 - 1, allowed="an integer in [0, 2**32-1] (the image file stores 32 bits)")
MODES = {"auto": None, "rgb": "RGB", "l": "L"}


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(t) for t in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; allowed: N or HxW (e.g. 128 or 96x128)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; allowed: N or HxW with positive integers")
    if parts[0] * parts[1] > MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"{text!r} has {parts[0] * parts[1]:,} pixels; allowed: at most "
                                         f"{MAX_PIXELS:,}")
    return parts[0], parts[1]


def tile_grid(text: str) -> tuple[int, int]:
    """--tiles RxC (container.parse_grid) as an argparse type."""
    try:
        return container.parse_grid(text)
    except ReparamError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a PNG/JPEG path or a bundled scikit-image name (astronaut, camera, coffee, ...)")
    p.add_argument("--size", type=_size, default=None,
                   help="resize (cover + centre crop) to N or HxW before coding (default: the image's own)")
    p.add_argument("--color", choices=sorted(MODES), default="auto",
                   help="auto: greyscale files stay 1 channel, others RGB (default)")


def _add_codec_args(p: argparse.ArgumentParser) -> None:
    d = codec.CodecConfig()
    g = p.add_argument_group("network, fitting and quantization (defaults chosen by `reparam image sweep`)")
    g.add_argument("--width", type=number(int, 1, container.MAX_WIDTH), default=d.inr.width,
                   help=f"hidden width, 1..{container.MAX_WIDTH} (default {d.inr.width})")
    g.add_argument("--depth", type=number(int, 1, container.MAX_DEPTH), default=d.inr.depth,
                   help=f"hidden layers 1..{container.MAX_DEPTH}, each Linear -> LayerNorm -> activation "
                        f"(default {d.inr.depth})")
    g.add_argument("--fourier", type=number(int, 1, container.MAX_FOURIER), default=d.inr.fourier,
                   help=f"Fourier frequencies M (2M features; default {d.inr.fourier})")
    g.add_argument("--sigma", type=positive_float, default=d.inr.sigma,
                   help=f"Fourier scale, coordinates in [-1, 1] (default {d.inr.sigma})")
    g.add_argument("--activation", choices=("relu", "sine"), default=d.inr.activation,
                   help=f"hidden activation after each LayerNorm (default {d.inr.activation})")
    g.add_argument("--fourier-seed", type=SEED32, default=0, help="seed of the Fourier matrix (stored, 32 bits)")
    g.add_argument("--seed", type=SEED32, default=0, help="PRANC basis seed (stored, 32 bits)")
    g.add_argument("--budget-rule", choices=codec.BUDGET_RULES, default=d.budget_rule,
                   help=f"split of the coefficients over layers (default {d.budget_rule}, capped at each layer's size)")
    g.add_argument("--steps", type=positive_int, default=d.fit.steps,
                   help=f"Adam steps of the float fit (default {d.fit.steps})")
    g.add_argument("--lr", type=positive_float, default=d.fit.lr, help=f"Adam learning rate (default {d.fit.lr})")
    g.add_argument("--fraction", type=fraction_upto_1, default=d.fit.fraction,
                   help=f"share of pixels per step (default {d.fit.fraction})")
    g.add_argument("--max-pixels", type=positive_int, default=d.fit.max_pixels,
                   help=f"at most this many pixels per step (default {d.fit.max_pixels})")
    g.add_argument("--grow", choices=codec.GROW, default=d.grow,
                   help=f"what a budget above --max-k-share of the network's weights buys (default {d.grow}): "
                        "tile = split the image into a grid of tiles, one network each; widen = a wider network "
                        f"along {', '.join(map(str, codec.WIDTHS))} (slower); none = k capped at the weights")
    g.add_argument("--max-k-share", type=number(float, 0, 1, lo_open=True, allowed="a share in (0, 1]"),
                   default=d.max_k_share,
                   help=f"grow while a network's k is above this share of its weights (default {d.max_k_share:g})")
    g.add_argument("--tile-side", type=number(int, 0, allowed=f"0 (no limit) or an integer >= {codec.MIN_TILE}"),
                   default=d.tile_side,
                   help=f"with --grow tile: tiles at most this many pixels a side (default {d.tile_side}, the size the "
                        "defaults were tuned at; 0: no limit)")
    g.add_argument("--tiles", type=tile_grid, default=None, metavar="RxC",
                   help="code the image as this grid of tiles (rows x columns, e.g. 2x2) instead of choosing one")
    g.add_argument("--bits-per-coef", type=number(float, 0.5, 16), default=d.bits_per_coef,
                   help=f"sets k from the rate: k = payload bits / this (default {d.bits_per_coef})")
    g.add_argument("--qat-steps", type=number(int, 0, allowed="an integer >= 0"), default=d.qat_steps,
                   help=f"quantization-aware fine-tuning steps (default {d.qat_steps})")
    g.add_argument("--qat-lr", type=positive_float, default=d.qat_lr,
                   help=f"quantization-aware learning rate (default {d.qat_lr})")
    g.add_argument("--entropy-model", choices=codec.ENTROPY_MODELS, default=d.entropy_model,
                   help=f"per-layer distribution of the coded symbols (default {d.entropy_model})")


def _config(args: argparse.Namespace) -> codec.CodecConfig:
    d = codec.CodecConfig()
    spec = InrSpec(width=args.width, depth=args.depth, fourier=args.fourier, sigma=args.sigma,
                   fourier_seed=args.fourier_seed, activation=args.activation)
    fit = replace(d.fit, steps=args.steps, lr=args.lr, fraction=args.fraction, seed=args.seed,
                  max_pixels=args.max_pixels,
                  eval_every=max(1, min(100, args.steps // 10)), warmup=min(d.fit.warmup, args.steps - 1))
    return codec.CodecConfig(inr=spec, seed=args.seed, budget_rule=args.budget_rule, fit=fit,
                             bits_per_coef=args.bits_per_coef, qat_steps=args.qat_steps, qat_lr=args.qat_lr,
                             entropy_model=args.entropy_model, grow=args.grow,
                             max_k_share=args.max_k_share, tiles=args.tiles,
                             tile_side=args.tile_side).validate()


def _load(args: argparse.Namespace) -> torch.Tensor:
    x = load_image(args.image, size=args.size, mode=MODES[args.color])
    return from_uint8((x * 255).round().to(torch.uint8))  # code exactly the 8-bit image a user sees


def _threads(args: argparse.Namespace) -> None:
    set_threads(args.threads if args.threads else default_threads())


def cmd_encode(args: argparse.Namespace) -> int:
    _threads(args)
    out = Path(args.output)
    if args.json:
        check_output(args.json, option="--json", kind="file", overwrite=True)
    cfg = _config(args)
    x = _load(args)
    c, h, w = x.shape
    enc = codec.encode(x, args.bpp, cfg, k=args.coefficients, progress=not args.no_progress)
    size = codec.save(out, enc)
    weights = sum(codec.layer_sizes(codec.networks(enc.model)[0]))
    capped = args.coefficients is None and any(sum(b) == weights for b in enc.tile_budgets)
    rows, cols = enc.tiles
    q = quality(x, from_uint8(enc.decoded))
    b = codec.bpp_report(size, enc.k, h, w, enc.header.header_bytes())
    print_table(f"encoded {args.image} -> {out}", [
        ("image", f"{w}x{h}, {c} channel(s)"),
        ("tiles", f"{rows}x{cols} (one network each)" if rows * cols > 1 else "1 (one network)"),
        ("coefficients k", f"{enc.k} (per layer {enc.budgets}" + (", all tiles)" if rows * cols > 1 else ")")
                           + (": capped at the network's weights (more bits per coefficient instead; "
                              "--grow tile or a smaller --max-k-share spreads them over tiles)" if capped else "")),
        ("file", f"{size} bytes (target {enc.target_bytes}; header {enc.header.header_bytes()})"),
        ("true bits per pixel", f"{b['bpp']:.4f}  (file bytes * 8 / pixels, header included; target {args.bpp:g})"),
        ("  coded coefficients", f"{b['payload_bpp']:.4f}  ({b['bits_per_coef']:.2f} bits per coefficient)"),
        ("  paper's convention", f"{b['paper_bpp']:.4f}  (2k / pixels; NOT bits per pixel)"),
        ("PSNR", f"{q['psnr']:.2f} dB (float fit before quantization {enc.float_psnr:.2f} dB)"),
        (q["msssim_kind"].upper(), f"{q['msssim']:.4f}"),
        ("encode time", f"{enc.encode_seconds:.1f} s ({cfg.fit.steps} + {cfg.qat_steps} steps)"),
    ])
    if args.json:
        write_json(args.json, {"file": str(out), "bytes": size, "target_bytes": enc.target_bytes, "k": enc.k,
                               "budgets": enc.budgets, "tiles": [rows, cols], "tile_budgets": enc.tile_budgets,
                               **b, **q, "float_psnr": enc.float_psnr,
                               "encode_seconds": enc.encode_seconds, "inr": cfg.inr.to_dict(),
                               "steps": cfg.fit.steps, "qat_steps": cfg.qat_steps})
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    _threads(args)
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise ReparamError(f"output {out} must be a .png file (lossless, so the decode is kept bit-exact)")
    dec = codec.decode(args.file, top=args.top)
    c, h, w = dec.header["image"]
    ref = None
    if args.compare:   # read (or refuse) the reference before the PNG is written
        ref = load_image(args.compare, size=(h, w), mode="L" if c == 1 else "RGB")
    atomic_write_bytes(out, codec.png_bytes(dec.image))
    size = dec.header["file_bytes"]
    rows = [("image", f"{w}x{h}, {c} channel(s)"), ("file", f"{size} bytes, {size * 8 / (h * w):.4f} true bpp"),
            ("coefficients used", f"{dec.kept} of {sum(dec.header['budgets'])}"),
            ("decode time", f"{dec.seconds * 1000:.0f} ms")]
    if args.top is not None and args.top < 100:
        side = codec.subset_bits([t["budgets"] for t in dec.header["tile_codes"]], args.top / 100)
        rows.append(("progressive", f"largest {args.top:g}% per layer; saying which ones were kept costs "
                                    f"{side / (h * w):.4f} bpp (log2 C(k, n) per layer), not counted in the file"))
    else:
        rows.append(("bit-exact", "yes (matches the encoder's CRC32)" if dec.bit_exact else
                     "NO: this machine's float arithmetic differs from the encoder's"))
    if ref is not None:
        ref = from_uint8((ref * 255).round().to(torch.uint8))
        q = quality(ref, from_uint8(dec.image))
        rows += [("PSNR vs reference", f"{q['psnr']:.2f} dB"), (q["msssim_kind"].upper(), f"{q['msssim']:.4f}")]
    print_table(f"decoded {args.file} -> {out}", rows)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    h = codec.read_image_header(args.file)
    c, hh, ww = h["image"]
    size = h["file_bytes"]
    k = sum(int(b) for b in h["budgets"])
    b = codec.bpp_report(size, k, hh, ww, h["header_bytes"])
    inr = h["inr"]
    print_table(f"{args.file}", [
        ("content", f"image {ww}x{hh}, {c} channel(s) (RPIC v{h['version']})"),
        ("network", f"Fourier MLP width {inr['width']}, depth {inr['depth']}, M={inr['fourier']}, "
                    f"sigma={inr['sigma']:g}, Fourier seed {inr['fourier_seed']}"),
        ("PRANC", f"seed {h['seed']}, {h['distribution']} basis"),
        ("tiles", f"{h['tiles'][0]}x{h['tiles'][1]} (one network each)" if len(h["tile_codes"]) > 1 else "1"),
        ("coefficients", f"{k} (per layer {h['budgets']}" + (", all tiles)" if len(h["tile_codes"]) > 1 else ")")
                         + ", step " + "/".join(f"{t['step']:.4g}" for t in h["tile_codes"])
                         + f", {h['entropy_model']} range coding, symbols in [-B, B], B = "
                         + "/".join(str(t["bound"]) for t in h["tile_codes"])),
        ("file", f"{size} bytes ({h['header_bytes']} bytes of header and CRC)"),
        ("true bits per pixel", f"{b['bpp']:.4f}"),
        ("  coded coefficients", f"{b['payload_bpp']:.4f} ({b['bits_per_coef']:.2f} bits per coefficient)"),
        ("  paper's convention", f"{b['paper_bpp']:.4f}  (2k / pixels; NOT bits per pixel)"),
    ])
    return 0


def cmd_rd(args: argparse.Namespace) -> int:
    from reparam.experiments.image import rd

    _threads(args)
    codecs = rd.parse_codecs(names(args.codecs, rd.CODECS, "--codecs", "codec"))
    bpps = args.bpp or list(rd.DEFAULT_BPPS)
    if any(not b > 0 for b in bpps):
        raise ReparamError("--bpp values must be positive")
    cfg = _config(args)
    x = _load(args)
    t0 = time.perf_counter()
    with output_dir(args.out, overwrite=args.overwrite) as work:
        result = rd.sweep(x, codecs=codecs, bpps=bpps, cfg=cfg, progress=not args.no_progress,
                          log=None if args.no_progress else print)
        result["source"] = str(args.image)
        result["command"] = "reparam " + " ".join(sys.argv[1:])
        write_json(work / "rd.json", result)
        rd.plot(result, work, f"{args.image} {x.shape[2]}x{x.shape[1]}")
    rows = []
    for r in result["comparison"]:
        parts = [f"{r['bpp']:.3f} bpp: prnc {r['prnc_psnr']:.2f} dB"]
        for name in ("inr", "jpeg", "webp", "avif", "jp2"):
            v = r.get(f"{name}_psnr")
            if f"{name}_psnr" in r:
                parts.append(f"{name} {v:.2f}" if v is not None else f"{name} n/a")
        rows.append((f"k={r['k']}", ", ".join(parts)))
    for name, v in result.get("bd_psnr_vs_jpeg", {}).items():
        rows.append((f"BD-PSNR {name} vs jpeg", "n/a (too few points)" if v is None else f"{v:+.2f} dB"))
    rows.append(("written", f"{args.out}/rd.json, rd_psnr.png, rd_msssim.png ({time.perf_counter() - t0:.0f} s)"))
    print_table(f"rate-distortion, {args.image}", rows)
    if args.print_json:
        print(json.dumps(result["comparison"]))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from reparam.experiments.image import sweep

    _threads(args)
    grid = sweep.parse_grid(args.set or [])
    if not grid:
        raise ReparamError("give at least one --set NAME=V1,V2,...; allowed names: " + ", ".join(sweep.SETTINGS))
    check_output(args.out, kind="folder", overwrite=True)   # may exist: finished points are kept and skipped
    base = _config(args)
    images = {}
    for name in args.images.split(","):
        args.image = name.strip()
        images[args.image] = _load(args)
    rows = sweep.run(images, args.bpp, grid, base, Path(args.out), log=None if args.no_progress else print)
    table = sweep.summarize(rows)
    write_json(Path(args.out) / "summary.json", table)
    rows = []
    for t in table:
        vs = "n/a" if t["mean_vs_jpeg"] is None else f"{t['mean_vs_jpeg']:+.2f} dB"
        rows.append((", ".join(f"{k}={v}" for k, v in t["setting"].items()),
                     f"{t['mean_psnr']:.2f} dB, vs JPEG {vs}, wins {t['wins']}/{t['points']}, "
                     f"{t['mean_cpu_s']:.0f} CPU s per encode"))
    print_table("settings by mean PSNR difference to JPEG at the same true bpp", rows)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("image", help="image codec: a photo as a PRANC seed + entropy-coded coefficients",
                              description="Compress an image as the seed and coefficients of a PRANC Fourier-"
                                          "feature MLP; decode it; compare with JPEG/WebP in true bits per pixel.")
    sub = p.add_subparsers(dest="image_command", metavar="SUBCOMMAND", parser_class=type(p))

    e = sub.add_parser("encode", help="fit and write a .rpic file")
    _add_image_args(e)
    e.add_argument("-o", "--output", required=True, help="output .rpic file")
    e.add_argument("--bpp", type=positive_float, required=True,
                   help="target TRUE bits per pixel (whole file, header included); the file is at most this")
    e.add_argument("--coefficients", type=positive_int, default=None,
                   help="number of coefficients k (default: from --bpp and --bits-per-coef)")
    _add_codec_args(e)
    e.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_runtime_args(e)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="rebuild the image from a .rpic file alone")
    d.add_argument("file", help="a .rpic image file")
    d.add_argument("-o", "--output", required=True, help="output .png")
    d.add_argument("--top", type=number(float, 0, 100, lo_open=True, allowed="a percentage in (0, 100]"),
                   default=None,
                   help="progressive decoding: keep only the largest P%% coefficients of every layer")
    d.add_argument("--compare", default=None, help="reference image: print PSNR and (MS-)SSIM against it")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_runtime_args(d)
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="print what a .rpic image file holds and its rates")
    i.add_argument("file", help="a .rpic image file")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("rd", help="rate-distortion sweep vs a trained INR, JPEG and WebP (true bpp)")
    _add_image_args(r)
    r.add_argument("--out", required=True, help="output folder (rd.json, rd_psnr.png, rd_msssim.png)")
    r.add_argument("--codecs", default=",".join(("prnc", "inr", "jpeg", "webp")),
                   help="comma-separated: prnc, inr, jpeg, webp, avif, jp2 (default prnc,inr,jpeg,webp)")
    r.add_argument("--bpp", type=list_of(positive_float, what="positive numbers"), default=None,
                   help="target true bpp list for prnc (and inr); default 0.25,0.5,1,2")
    _add_codec_args(r)
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    r.add_argument("--print-json", action="store_true", help="print the comparison rows as JSON")
    add_runtime_args(r)
    r.set_defaults(func=cmd_rd)

    w = sub.add_parser("sweep", help="measure codec settings against JPEG (how the defaults were chosen)")
    w.add_argument("images", help="comma-separated images (paths or bundled names)")
    w.add_argument("--size", type=_size, default=(128, 128), help="N or HxW (default 128)")
    w.add_argument("--color", choices=sorted(MODES), default="auto", help=argparse.SUPPRESS)
    w.add_argument("--bpp", type=list_of(positive_float, what="positive numbers"), default=[0.5, 1.0],
                   help="target true bpp list (default 0.5,1)")
    w.add_argument("--set", action="append", metavar="NAME=V1,V2",
                   help="a setting and its values; repeat for a grid (every combination is run)")
    w.add_argument("--out", required=True, help="folder: sweep.jsonl (appended, resumable) and summary.json")
    _add_codec_args(w)
    add_runtime_args(w)
    w.set_defaults(func=cmd_sweep, out_kind=None)   # OUT is appended to (resumable), so it may exist
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
