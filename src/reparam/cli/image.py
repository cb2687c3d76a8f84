"""`reparam image encode|decode|rd`: the PRANC image codec on the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    seed_int,
)
from reparam.cli.validate import check_output, names
from reparam.core.errors import ReparamError
from reparam.core.fileformat import atomic_write_bytes
from reparam.core.outdir import output_dir, write_json
from reparam.core.runtime import default_threads, set_threads
from reparam.data import load_image
from reparam.data.images import MAX_PIXELS
from reparam.image import codec
from reparam.image.fit import FitConfig
from reparam.image.inr import InrSpec
from reparam.image.metrics import from_uint8, quality

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


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a PNG/JPEG path or a bundled scikit-image name (astronaut, camera, coffee, ...)")
    p.add_argument("--size", type=_size, default=None,
                   help="resize (cover + centre crop) to N or HxW before coding (default: the image's own)")
    p.add_argument("--color", choices=sorted(MODES), default="auto",
                   help="auto: greyscale files stay 1 channel, others RGB (default)")


def _add_codec_args(p: argparse.ArgumentParser) -> None:
    d, f = InrSpec(), FitConfig()
    g = p.add_argument_group("network and fitting")
    g.add_argument("--width", type=number(int, 1, 4096), default=d.width,
                   help=f"hidden width, 1..4096 (default {d.width})")
    g.add_argument("--depth", type=number(int, 1, 64), default=d.depth,
                   help=f"hidden layers, each Linear -> LayerNorm -> ReLU (default {d.depth})")
    g.add_argument("--fourier", type=number(int, 1, 4096), default=d.fourier,
                   help=f"Fourier frequencies M (2M features; default {d.fourier})")
    g.add_argument("--sigma", type=positive_float, default=d.sigma,
                   help=f"Fourier scale, coordinates in [-1, 1] (default {d.sigma})")
    g.add_argument("--fourier-seed", type=seed_int, default=0, help="seed of the Fourier matrix (stored)")
    g.add_argument("--seed", type=seed_int, default=0, help="PRANC basis seed (stored)")
    g.add_argument("--budget-rule", choices=codec.BUDGET_RULES, default="even",
                   help="split of the coefficients over layers (default even, capped at each layer's size)")
    g.add_argument("--steps", type=positive_int, default=f.steps, help=f"Adam steps (default {f.steps})")
    g.add_argument("--lr", type=positive_float, default=f.lr, help=f"Adam learning rate (default {f.lr})")
    g.add_argument("--fraction", type=fraction_upto_1, default=f.fraction,
                   help=f"share of pixels per step (default {f.fraction})")


def _config(args: argparse.Namespace) -> codec.CodecConfig:
    spec = InrSpec(width=args.width, depth=args.depth, fourier=args.fourier, sigma=args.sigma,
                   fourier_seed=args.fourier_seed)
    fit = FitConfig(steps=args.steps, lr=args.lr, fraction=args.fraction, seed=args.seed,
                    eval_every=max(1, min(100, args.steps // 10)))
    return codec.CodecConfig(inr=spec, seed=args.seed, budget_rule=args.budget_rule, fit=fit).validate()


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
    if args.coefficients is not None:
        k = args.coefficients
    else:
        k = codec.coefficients_for_bpp(args.bpp, cfg.inr, c, h, w, cfg.budget_rule, cfg.seed, cfg.distribution)
    enc = codec.encode(x, k, cfg, progress=not args.no_progress)
    size = codec.save(out, enc)
    capped = args.bpp is not None and k == sum(codec.layer_sizes(enc.model))
    q = quality(x, from_uint8(enc.decoded))
    b = codec.bpp_report(size, k, h, w)
    print_table(f"encoded {args.image} -> {out}", [
        ("image", f"{w}x{h}, {c} channel(s)"),
        ("coefficients k", f"{k} (per layer {enc.budgets})"
                           + (": capped at the dense network's size" if capped else "")),
        ("file", f"{size} bytes"),
        ("true bits per pixel", f"{b['bpp']:.4f}  (file bytes * 8 / pixels, header included)"),
        ("  coefficients only", f"{b['payload_bpp']:.4f}  (16 bits * k / pixels)"),
        ("  paper's convention", f"{b['paper_bpp']:.4f}  (2k / pixels; NOT bits per pixel)"),
        ("PSNR", f"{q['psnr']:.2f} dB"),
        (q["msssim_kind"].upper(), f"{q['msssim']:.4f}"),
        ("encode time", f"{enc.encode_seconds:.1f} s ({cfg.fit.steps} steps)"),
    ])
    if args.json:
        write_json(args.json, {"file": str(out), "bytes": size, "k": k, "budgets": enc.budgets, **b, **q,
                               "encode_seconds": enc.encode_seconds, "inr": cfg.inr.to_dict(),
                               "steps": cfg.fit.steps})
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
    size = Path(args.file).stat().st_size
    rows = [("image", f"{w}x{h}, {c} channel(s)"), ("file", f"{size} bytes, {size * 8 / (h * w):.4f} true bpp"),
            ("coefficients used", f"{dec.kept} of {sum(dec.header['budgets'])}"),
            ("decode time", f"{dec.seconds * 1000:.0f} ms")]
    if args.top is not None and args.top < 100:
        side = codec.subset_bits(dec.header["budgets"], args.top / 100)
        rows.append(("progressive", f"largest {args.top:g}% per layer: {16 * dec.kept / (h * w):.4f} bpp of "
                                    f"coefficients + {side / (h * w):.4f} bpp to say which "
                                    f"(log2 C(k, n) per layer; header not counted)"))
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
    size = Path(args.file).stat().st_size
    k = sum(int(b) for b in h["budgets"])
    b = codec.bpp_report(size, k, hh, ww)
    inr = h["inr"]
    print_table(f"{args.file}", [
        ("content", f"image {ww}x{hh}, {c} channel(s)"),
        ("network", f"Fourier MLP width {inr['width']}, depth {inr['depth']}, M={inr['fourier']}, "
                    f"sigma={inr['sigma']}, Fourier seed {inr['fourier_seed']}"),
        ("PRANC", f"seed {h['seed']}, {h['distribution']} basis, {h['generator']['name']} "
                  f"v{h['generator']['version']}"),
        ("coefficients", f"{k} {h['coef_dtype']} (per layer {h['budgets']})"),
        ("file", f"{size} bytes ({size - 2 * k} bytes of header and framing)"),
        ("true bits per pixel", f"{b['bpp']:.4f}"),
        ("  coefficients only", f"{b['payload_bpp']:.4f}"),
        ("  paper's convention", f"{b['paper_bpp']:.4f}  (2k / pixels; NOT bits per pixel)"),
    ])
    return 0


def cmd_rd(args: argparse.Namespace) -> int:
    from reparam.experiments.image import rd

    _threads(args)
    codecs = rd.parse_codecs(names(args.codecs, rd.CODECS, "--codecs", "codec"))
    if args.bpp and args.coefficients:
        raise ReparamError("give either --bpp or --coefficients, not both")
    if any(b <= 0 for b in args.bpp or []) or any(k <= 0 for k in args.coefficients or []):
        raise ReparamError("--bpp and --coefficients values must be positive")
    cfg = _config(args)
    x = _load(args)
    if ("prnc" in codecs or "inr" in codecs) and not (args.bpp or args.coefficients):
        # default budgets: 1/32 .. 1/4 of the dense network's Linear weights
        from reparam.image.inr import build_inr, layer_sizes

        sizes = layer_sizes(build_inr(cfg.inr, *x.shape))
        args.coefficients = sorted({max(len(sizes), sum(sizes) // f) for f in (32, 16, 8, 4)})
    t0 = time.perf_counter()
    with output_dir(args.out, overwrite=args.overwrite) as work:
        result = rd.sweep(x, codecs=codecs, bpps=args.bpp or (), coefficients=args.coefficients or (), cfg=cfg,
                          progress=not args.no_progress, log=None if args.no_progress else print)
        result["source"] = str(args.image)
        result["command"] = "reparam " + " ".join(sys.argv[1:])
        write_json(work / "rd.json", result)
        rd.plot(result, work, f"{args.image} {x.shape[2]}x{x.shape[1]}")
    rows = []
    for r in result["comparison"]:
        parts = [f"{r['bpp']:.3f} bpp (paper conv. {r['paper_bpp']:.3f}): prnc {r['prnc_psnr']:.2f} dB"]
        for name in ("inr", "jpeg", "webp", "jp2"):
            v = r.get(f"{name}_psnr")
            if f"{name}_psnr" in r:
                parts.append(f"{name} {v:.2f}" if v is not None else f"{name} n/a")
        rows.append((f"k={r['k']}", ", ".join(parts)))
    rows.append(("written", f"{args.out}/rd.json, rd_psnr.png, rd_msssim.png ({time.perf_counter() - t0:.0f} s)"))
    print_table(f"rate-distortion, {args.image}", rows)
    if args.print_json:
        print(json.dumps(result["comparison"]))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("image", help="image codec: a photo as a PRANC seed + fp16 coefficients",
                              description="Compress an image as the seed and coefficients of a PRANC Fourier-"
                                          "feature MLP; decode it; compare with JPEG/WebP in true bits per pixel.")
    sub = p.add_subparsers(dest="image_command", metavar="SUBCOMMAND", parser_class=type(p))

    e = sub.add_parser("encode", help="fit and write a .prnc file")
    _add_image_args(e)
    e.add_argument("-o", "--output", required=True, help="output .prnc file")
    budget = e.add_mutually_exclusive_group(required=True)
    budget.add_argument("--bpp", type=positive_float, help="target TRUE bits per pixel (whole file)")
    budget.add_argument("--coefficients", type=positive_int, help="number of coefficients k")
    _add_codec_args(e)
    e.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_runtime_args(e)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="rebuild the image from a .prnc file alone")
    d.add_argument("file", help="a .prnc image file")
    d.add_argument("-o", "--output", required=True, help="output .png")
    d.add_argument("--top", type=number(float, 0, 100, lo_open=True, allowed="a percentage in (0, 100]"),
                   default=None,
                   help="progressive decoding: keep only the largest P%% coefficients of every layer")
    d.add_argument("--compare", default=None, help="reference image: print PSNR and (MS-)SSIM against it")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_runtime_args(d)
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="print what a .prnc image file holds and its rates")
    i.add_argument("file", help="a .prnc image file")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("rd", help="rate-distortion sweep vs a trained INR, JPEG and WebP (true bpp)")
    _add_image_args(r)
    r.add_argument("--out", required=True, help="output folder (rd.json, rd_psnr.png, rd_msssim.png)")
    r.add_argument("--codecs", default=",".join(("prnc", "inr", "jpeg", "webp")),
                   help="comma-separated: prnc, inr, jpeg, webp, jp2 (default prnc,inr,jpeg,webp)")
    r.add_argument("--bpp", type=list_of(positive_float, what="positive numbers"), default=None,
                   help="target true bpp list for prnc (and inr)")
    r.add_argument("--coefficients", type=list_of(positive_int, what="positive integers"), default=None,
                   help="k list for prnc (default without --bpp: 1/32, 1/16, 1/8, 1/4 of the dense network)")
    _add_codec_args(r)
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    r.add_argument("--print-json", action="store_true", help="print the comparison rows as JSON")
    add_runtime_args(r)
    r.set_defaults(func=cmd_rd)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
