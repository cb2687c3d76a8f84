"""`reparam reproduce` section "image-codec": the paper's image-compression claims (section 3, Tables 6-9)
measured at small scale on scikit-image's bundled photos, with rates in TRUE bits per pixel.

The codec is the current one (reparam.image.codec: quantized, range-coded coefficients in the binary RPIC
container, rate-controlled to a target TRUE bpp). Quick mode: astronaut at 48x48, 4 true bpp, 600 + 150
(quantization-aware) steps per encode. Full mode: 64x64, 2 true bpp, the codec's default steps (3,000 + 400). The
rate-distortion plot puts the codec's file and the trained fp16 INR of at most the same size on JPEG's and
WebP's quality sweeps (true bits per pixel, headers counted).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from reparam.reproduce.claims import Claim, MethodReport, MethodSummary, ReproduceContext

METHOD = "image-codec"
QUICK = (48, 600, 4.0)    # image side, float-fit steps (None: the codec's defaults), target true bpp
FULL = (64, None, 2.0)
TINY_FULL = (32, 40, 8.0)  # the test suite's smoke test of the full-mode path (tiny quick runs QUICK)


def run(ctx: ReproduceContext) -> MethodReport:
    from reparam.data import load_image
    from reparam.experiments.image import classic, rd
    from reparam.image import codec
    from reparam.image.metrics import from_uint8, quality
    from reparam.metrics.plots import line_plot

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, ctx.threads))
    size, steps, bpp = QUICK if ctx.quick else TINY_FULL if ctx.tiny else FULL
    name = "astronaut"
    x = load_image(name, size=size, mode=None)
    x = from_uint8((x * 255).round().to(torch.uint8))
    c, h, w = x.shape
    base = codec.CodecConfig()
    qat = base.qat_steps if steps is None else max(1, steps // 4)
    steps = steps or base.fit.steps
    fit = replace(base.fit, steps=steps, seed=ctx.seed, eval_every=max(1, steps // 5))
    cfg = replace(base, fit=fit, seed=ctx.seed, qat_steps=qat)
    spec = cfg.inr
    setting = (f"{name} {h}x{w} RGB, Fourier MLP width {spec.width} depth {spec.depth} M={spec.fourier} "
               f"sigma={spec.sigma} {spec.activation}, {steps} Adam steps lr {fit.lr:g} + {qat} quantization-aware "
               f"steps, {cfg.bits_per_coef:g} bits per coefficient, range-coded, seed {ctx.seed}")
    cmd = (f"reparam image rd {name} --size {size} --bpp {bpp} --steps {steps} --qat-steps {qat} --seed {ctx.seed} "
           "--out runs/image/reproduce-rd")

    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "x.rpic"
    prnc, _ = rd.prnc_point(x, bpp, cfg, progress=False, save_to=path)
    k = prnc["k"]
    inr = rd.inr_point(x, prnc["bytes"], cfg, progress=False)
    jpeg = classic.sweep(x, "jpeg")
    webp = classic.sweep(x, "webp")
    jpeg_true = classic.value_at_bpp(jpeg, prnc["bpp"])
    webp_true = classic.value_at_bpp(webp, prnc["bpp"])
    jpeg_paper = classic.value_at_bpp(jpeg, prnc["paper_bpp"])
    claims: list[Claim] = []

    # 1. PRANC vs trained INR at equal storage (Table 6: 29.71 vs 26.93 dB)
    inr_psnr = inr["psnr"] if inr else float("nan")
    claims.append(Claim(
        method=METHOD, claim_id="image-prnc-beats-trained-inr",
        statement="At equal storage, a PRANC-reparametrized INR reconstructs the image better than a plainly "
                  "trained fp16 INR whose width is reduced to the same size.",
        paper_value="CLIC-mobile: PRANC 29.71 dB / 0.920 MS-SSIM at 0.119 'bpp' vs trained INR 26.93 dB / "
                    "0.864 at 0.125", paper_setting="CLIC-mobile 1512x2016, width 512, 182k fp16 coefficients",
        measured_value=(f"PRANC {prnc['psnr']:.2f} dB ({prnc['bytes']} B) vs trained INR "
                        + (f"{inr_psnr:.2f} dB ({inr['bytes']} B, width {inr['width']})" if inr else "n/a")),
        measured_setting=setting + f"; k={k}",
        verdict=("inconclusive" if inr is None else "holds" if prnc["psnr"] > inr_psnr else "does not hold"),
        statistic="PSNR difference of single fits at equal file bytes (trained INR file <= PRANC file)",
        details={"prnc": prnc, "inr": inr}, command=cmd + " --codecs prnc,inr"))

    # 2. PRANC vs JPEG: in true bits per pixel, and in the paper's convention
    def _vs(v):
        return "n/a (outside JPEG's range)" if v is None else f"{v:.2f} dB"

    verdict = "inconclusive" if jpeg_true is None else ("holds" if prnc["psnr"] >= jpeg_true else "does not hold")
    rd_plot = "image_rd.png"
    series = {"JPEG (quality sweep)": ([p["bpp"] for p in jpeg], [p["psnr"] for p in jpeg]),
              "WebP (quality sweep)": ([p["bpp"] for p in webp], [p["psnr"] for p in webp]),
              f"PRANC (k={k})": ([prnc["bpp"]], [prnc["psnr"]])}
    if inr:
        series[f"trained INR (width {inr['width']})"] = ([inr["bpp"]], [inr["psnr"]])
    line_plot(series, Path(ctx.out_dir) / rd_plot, "true bits per pixel (file bytes * 8 / pixels)", "PSNR (dB)",
              title=f"{name} {h}x{w}: rate-distortion, true bpp")
    claims.append(Claim(
        method=METHOD, claim_id="image-prnc-beats-jpeg-true-bpp",
        statement="PRANC image compression beats JPEG at equal bits per pixel (checked in TRUE bits per pixel: "
                  "file bytes * 8 / pixels).",
        paper_value="CLIC: PRANC 29.71 dB at 0.119 vs JPEG 24.82 dB at 0.195; Kodak #15: 30.36 vs 28.85 dB at 0.31",
        paper_setting="paper 'bpp' = 2k/(H*W), i.e. 1/8 of the true rate of 16-bit coefficients",
        measured_value=(f"PRANC {prnc['psnr']:.2f} dB at {prnc['bpp']:.2f} true bpp; JPEG {_vs(jpeg_true)}, "
                        f"WebP {_vs(webp_true)} at the same true bpp"),
        measured_setting=setting + f"; k={k}, header {prnc['header_bytes']} B counted",
        verdict=verdict, statistic="PSNR of PRANC vs JPEG's quality sweep interpolated at PRANC's true bpp",
        reason="" if verdict != "does not hold" else
        "at equal true rate (quantized, entropy-coded coefficients) the coordinate network still fits less "
        "detail than JPEG keeps at this size",
        details={"jpeg": jpeg, "webp": webp, "jpeg_at_true_bpp": jpeg_true, "webp_at_true_bpp": webp_true},
        plots=[rd_plot], command=cmd + " --codecs prnc,jpeg,webp"))
    claims.append(Claim(
        method=METHOD, claim_id="image-prnc-vs-jpeg-paper-convention",
        statement="The same comparison under the paper's rate convention 2k/(H*W) (not a true bit rate).",
        paper_value="PRANC above JPEG at all rates (Fig. 4)", paper_setting="paper convention",
        measured_value=(f"PRANC {prnc['psnr']:.2f} dB at 'paper bpp' {prnc['paper_bpp']:.3f}; "
                        f"JPEG at {prnc['paper_bpp']:.3f} true bpp: {_vs(jpeg_paper)}"),
        measured_setting=setting,
        verdict=("inconclusive" if jpeg_paper is None else "holds" if prnc["psnr"] >= jpeg_paper else "does not hold"),
        statistic="PRANC PSNR vs JPEG interpolated at PRANC's paper-convention rate; inconclusive when JPEG "
                  "cannot make a file that small",
        reason="JPEG's smallest file (quality 1, headers included) is larger than the paper-convention rate"
        if jpeg_paper is None else "", details={"paper_bpp": prnc["paper_bpp"]}, command=cmd))

    # 3. Table 9: progressive decoding, PSNR grows with the kept fraction
    ps = [10, 25, 50, 75, 90, 100]
    top = [quality(x, from_uint8(codec.decode(path, top=p).image))["psnr"] for p in ps]
    tmp.cleanup()
    ups = sum(b >= a for a, b in zip(top, top[1:]))
    line_plot({"largest |alpha| p% per layer": (ps, top)}, Path(ctx.out_dir) / "image_top_p.png",
              "kept coefficients per layer (%)", "PSNR (dB)", title=f"{name} {h}x{w}, k={k}")
    claims.append(Claim(
        method=METHOD, claim_id="image-top-p-monotone",
        statement="Decoding from only the largest p% coefficients per layer gives PSNR that grows with p "
                  "(progressive decoding).",
        paper_value="Table 9 (Kodak, 142k): 11.94 dB at 10% ... 22.71 at 70% ... 33.64 at 100%",
        paper_setting="Kodak 512x768, 0.72 paper-bpp configuration",
        measured_value=", ".join(f"{p}%: {v:.2f}" for p, v in zip(ps, top)),
        measured_setting=setting + f"; k={k}",
        verdict="holds" if ups == len(ps) - 1 else "does not hold",
        statistic=f"PSNR non-decreasing over p in {ps}: {ups}/{len(ps) - 1} steps",
        details={"p": ps, "psnr": top}, plots=["image_top_p.png"],
        command=f"reparam image decode FILE.rpic -o out.png --top P   (FILE from: {cmd})"))

    # 4. Table 8: depth helps at a fixed number of coefficients
    deep = prnc
    shallow, _ = rd.prnc_point(x, bpp, replace(cfg, inr=replace(spec, depth=2), grow="none"), progress=False, k=k)
    claims.append(Claim(
        method=METHOD, claim_id="image-depth-helps-fixed-k",
        statement="At a fixed number of coefficients, a deeper INR reconstructs better (Table 8).",
        paper_value="Kodak k=102k: depth 3/4/5 -> 30.78/31.5/32.38 dB", paper_setting="Kodak, width 512",
        measured_value=f"depth 2: {shallow['psnr']:.2f} dB, depth {spec.depth}: {deep['psnr']:.2f} dB",
        measured_setting=setting + f"; k={k} split evenly over layers",
        verdict="holds" if deep["psnr"] > shallow["psnr"] else "does not hold",
        statistic="PSNR difference of single fits (one seed)",
        details={"depth2": shallow, "depth4": deep},
        command="python benchmarks/image_tables.py --image astronaut --size 64 --k 800 --steps 400 --lr 1e-2"))

    summary = MethodSummary(
        method=METHOD,
        stored=f"seed + {k} coded coefficients: {prnc['bytes']} B file = {prnc['bpp']:.2f} true bpp "
               f"({prnc['paper_bpp']:.3f} in the paper's convention) for {h}x{w}",
        accuracy=None, dense_accuracy=None,
        train_time_ratio=(prnc["encode_seconds"] / inr["encode_seconds"]) if inr else None,
        setting=f"{name} {h}x{w}; PSNR {prnc['psnr']:.2f} dB; train_time_ratio = PRANC encode / trained-INR fit")
    return MethodReport(summary=summary, claims=claims, seconds=time.perf_counter() - t0)
