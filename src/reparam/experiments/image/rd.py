"""Rate-distortion sweep of one image: this codec at several budgets, the trained fp16 INR at the same
bytes, and JPEG/WebP(/JPEG 2000) at a quality sweep, all in true bits per pixel (file bytes * 8 / pixels).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from reparam.core.errors import ReparamError
from reparam.experiments.image import baseline, classic
from reparam.image import codec
from reparam.image.metrics import from_uint8, quality

CODECS = ("prnc", "inr", "jpeg", "webp", "avif", "jp2")
DEFAULT_CODECS = ("prnc", "inr", "jpeg", "webp")


def parse_codecs(text: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise ReparamError("no codec given; allowed: " + ", ".join(CODECS))
    for n in names:
        if n not in CODECS:
            raise ReparamError(f"unknown codec {n!r}; allowed: {', '.join(CODECS)}")
        if n in classic.CLASSIC and not classic.available(n):
            raise ReparamError(f"codec {n!r} is not supported by this Pillow build")
    return list(dict.fromkeys(names))


def prnc_point(image: torch.Tensor, bpp: float, cfg: codec.CodecConfig, progress: bool,
               save_to: str | Path | None = None, k: int | None = None) -> tuple[dict, int]:
    """Encode at a target true bpp, write, decode from the file, measure. `save_to` keeps a copy."""
    c, h, w = image.shape
    ref = from_uint8((image.clamp(0, 1) * 255).round().to(torch.uint8))
    enc = codec.encode(image, bpp, cfg, progress=progress, k=k)
    k = enc.k
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.rpic"
        size = codec.save(path, enc)
        dec = codec.decode(path)
        if save_to is not None:
            Path(save_to).write_bytes(path.read_bytes())
    if not dec.bit_exact or not torch.equal(dec.image, enc.decoded):
        raise RuntimeError("decode of a freshly written file differs from the encoder's output")
    point = {"codec": "prnc", "k": k, "budgets": enc.budgets, "tiles": list(enc.tiles), "bytes": size,
             "target_bpp": bpp,
             "header_bytes": enc.header.header_bytes(), "inr": codec.spec_of(enc.header).to_dict(),
             **codec.bpp_report(size, k, h, w, enc.header.header_bytes()), **quality(ref, from_uint8(dec.image)),
             "fit_psnr_fp32": enc.float_psnr, "encode_seconds": enc.encode_seconds,
             "decode_seconds": dec.seconds, "steps": cfg.fit.steps, "qat_steps": cfg.qat_steps}
    return point, size


def inr_point(image: torch.Tensor, target_bytes: int, cfg: codec.CodecConfig, progress: bool) -> dict | None:
    c, h, w = image.shape
    ref = from_uint8((image.clamp(0, 1) * 255).round().to(torch.uint8))
    width = baseline.width_for_bytes(target_bytes, cfg.inr, c, h, w)
    if width is None:
        return None
    spec = replace(cfg.inr, width=width)
    trained = baseline.train(image, spec, cfg.fit, seed=cfg.seed, progress=progress)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.inr"
        size = baseline.save(path, trained)
        dec = baseline.decode(path)
    params = sum(p.numel() for p in trained.model.parameters())
    return {"codec": "inr", "width": width, "params": params, "bytes": size, "bpp": size * 8 / (h * w),
            "paper_bpp": 2 * params / (h * w), **quality(ref, from_uint8(dec)),
            "fit_psnr_fp32": trained.fit.psnr, "encode_seconds": trained.seconds, "steps": cfg.fit.steps}


DEFAULT_BPPS = (0.25, 0.5, 1.0, 2.0)


def sweep(image: torch.Tensor, *, codecs: Sequence[str] = DEFAULT_CODECS, bpps: Sequence[float] = DEFAULT_BPPS,
          cfg: codec.CodecConfig | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All points of the sweep at the target true `bpps`; the trained fp16 INR gets the byte size of each
    codec file (or of each target when prnc is not run)."""
    cfg = (cfg or codec.CodecConfig()).validate()
    c, h, w = image.shape
    ref = from_uint8((image.clamp(0, 1) * 255).round().to(torch.uint8))
    t0 = time.perf_counter()
    out: dict[str, Any] = {"image": [c, h, w], "inr": cfg.inr.to_dict(), "steps": cfg.fit.steps,
                           "qat_steps": cfg.qat_steps, "bits_per_coef": cfg.bits_per_coef,
                           "points": {n: [] for n in codecs}}
    for bpp in bpps:
        size = codec.target_bytes(bpp, h, w)
        k = None
        if "prnc" in codecs:
            p, size = prnc_point(ref, bpp, cfg, progress)
            k = p["k"]
            out["points"]["prnc"].append(p)
            if log:
                log(f"prnc k={k}: {p['bpp']:.3f} bpp, {p['psnr']:.2f} dB")
        if "inr" in codecs and size is not None:
            p = inr_point(ref, size, cfg, progress)
            if p is not None:
                p["match_bpp"] = bpp
                out["points"]["inr"].append(p)
                if log:
                    log(f"inr width={p['width']}: {p['bpp']:.3f} bpp, {p['psnr']:.2f} dB")
            elif log:
                log(f"inr: no width fits in {size} bytes")
    for name in codecs:
        if name in classic.CLASSIC:
            out["points"][name] = dedupe(classic.sweep(ref, name))
    out["comparison"] = compare(out["points"])
    out["bd_psnr_vs_jpeg"] = {n: classic.bd_psnr(out["points"]["jpeg"], out["points"][n])
                              for n in out["points"] if n != "jpeg" and "jpeg" in out["points"]}
    out["seconds"] = time.perf_counter() - t0
    return out


def dedupe(points: list[dict]) -> list[dict]:
    seen, out = set(), []
    for p in points:
        if p["bytes"] not in seen:
            seen.add(p["bytes"])
            out.append(p)
    return out


def compare(points: dict[str, list[dict]]) -> list[dict]:
    """For every prnc point: each other codec's PSNR/MS-SSIM at the same true bpp (interpolated), or None
    when that codec's sweep does not reach this rate."""
    rows = []
    for p in points.get("prnc", []):
        row = {"k": p["k"], "target_bpp": p["target_bpp"], "bpp": p["bpp"], "paper_bpp": p["paper_bpp"],
               "prnc_psnr": p["psnr"], "prnc_msssim": p["msssim"]}
        for name, pts in points.items():
            if name == "prnc" or not pts:
                continue
            if name == "inr":
                q = next((q for q in pts if q.get("match_bpp") == p["target_bpp"]), None)
                if q is not None:
                    row["inr_bpp"], row["inr_psnr"], row["inr_msssim"] = q["bpp"], q["psnr"], q["msssim"]
                continue
            row[f"{name}_psnr"] = classic.value_at_bpp(pts, p["bpp"], "psnr")
            row[f"{name}_msssim"] = classic.value_at_bpp(pts, p["bpp"], "msssim")
        rows.append(row)
    return rows


def plot(result: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    from reparam.metrics.plots import line_plot

    paths = []
    pts = result["points"]
    kind = next((p["msssim_kind"] for v in pts.values() for p in v), "ms-ssim")
    for key, label in (("psnr", "PSNR (dB)"), ("msssim", kind.upper())):
        series = {name: ([p["bpp"] for p in v], [p[key] for p in v]) for name, v in pts.items() if v}
        paths.append(line_plot(series, out_dir / f"rd_{key}.png", "true bits per pixel (file bytes * 8 / pixels)",
                               label, title=title))
    return paths
