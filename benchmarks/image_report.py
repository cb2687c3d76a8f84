"""Markdown tables for docs/results/image_codec.md from the JSON files the runs wrote (no number is typed
in by hand), and copies of the plots into docs/results/image_codec/.

    python benchmarks/image_report.py --runs runs/image --docs docs/results/image_codec
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def f(v, nd=2):
    return "n/a" if v is None else f"{v:.{nd}f}"


def at(points, bpp, key="psnr", nd=2):
    """A classic codec's value at `bpp`, or where it cannot get there: '< its smallest file' or '> its best'."""
    from reparam.experiments.image.classic import value_at_bpp

    v = value_at_bpp(points, bpp, key)
    if v is not None:
        return f(v, nd)
    if not points:
        return "n/a"
    pts = sorted(points, key=lambda p: p["bpp"])
    if bpp < pts[0]["bpp"]:
        return f"n/a (min {f(pts[0]['bpp'])} bpp)"
    return f"> top: {f(pts[-1][key], nd)} at {f(pts[-1]['bpp'])} bpp"


def rd_tables(runs: Path, docs: Path) -> list[str]:
    out = []
    for d in sorted(runs.glob("rd*-*")):
        if d.name.endswith(".partial") or not (d / "rd.json").exists():
            continue
        r = json.loads((d / "rd.json").read_text())
        c, h, w = r["image"]
        kind = next((p["msssim_kind"] for v in r["points"].values() for p in v), "ssim")
        inr = r["inr"]
        out.append(f"#### {r['source']} ({w}x{h}, {c} channel{'s' if c > 1 else ''})\n")
        out.append(f"Command: `{r.get('command')}`. INR width {inr['width']}, depth {inr['depth']}, "
                   f"M={inr['fourier']}, sigma={inr['sigma']}, {r['steps']} steps. Quality: PSNR dB / "
                   f"{kind.upper()}.\n")
        out.append("| k | file bytes | **true bpp** | coef-only bpp | paper's 2k/HW | PRANC | trained INR "
                   "(width, bpp) | JPEG @ same true bpp | WebP @ same true bpp | JPEG / WebP @ coef-only bpp | "
                   "JPEG / WebP @ paper's value |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        jpeg, webp = r["points"].get("jpeg", []), r["points"].get("webp", [])
        for p in r["points"]["prnc"]:
            q = next((q for q in r["points"].get("inr", []) if q.get("match_k") == p["k"]), None)
            inr_s = f"{f(q['psnr'])} / {f(q['msssim'], 3)} (w{q['width']}, {f(q['bpp'])})" if q else "n/a"
            out.append(f"| {p['k']} | {p['bytes']} | **{f(p['bpp'])}** | {f(p['payload_bpp'])} | "
                       f"{f(p['paper_bpp'], 3)} | {f(p['psnr'])} / {f(p['msssim'], 3)} | {inr_s} | "
                       f"{at(jpeg, p['bpp'])} / {at(jpeg, p['bpp'], 'msssim', 3)} | "
                       f"{at(webp, p['bpp'])} / {at(webp, p['bpp'], 'msssim', 3)} | "
                       f"{at(jpeg, p['payload_bpp'])} / {at(webp, p['payload_bpp'])} | "
                       f"{at(jpeg, p['paper_bpp'])} / {at(webp, p['paper_bpp'])} |")
        lo_j = min((p["bpp"] for p in jpeg), default=None)
        lo_w = min((p["bpp"] for p in webp), default=None)
        out.append(f"\nSmallest files: JPEG {f(lo_j)} bpp (quality 1), WebP {f(lo_w)} bpp (quality 0). "
                   f"Encode time per PRANC point: "
                   + ", ".join(f"{p['encode_seconds']:.0f} s" for p in r["points"]["prnc"]) + ".\n")
        from reparam.experiments.image.rd import plot

        plot(r, d, f"{r['source']} {w}x{h}")  # regenerate from the JSON so every plot has the same series
        for png in ("rd_psnr.png", "rd_msssim.png"):
            if (d / png).exists():
                dst = docs / f"{d.name}_{png}"
                shutil.copy(d / png, dst)
        out.append(f"![RD PSNR]({docs.name}/{d.name}_rd_psnr.png)\n")
    return out


def tables_8_9(runs: Path, docs: Path) -> list[str]:
    p = runs / "tables" / "tables.json"
    if not p.exists():
        return ["(Table 8/9 run not finished)"]
    t = json.loads(p.read_text())
    out = [f"Image {t['image']} {t['size'][1]}x{t['size'][0]}, k = {t['k']} fixed, {t['steps']} steps, "
           f"lr {t['lr']}.\n", "Depth (width 32):\n", "| depth | budgets | PSNR | SSIM |", "|---|---|---|---|"]
    for r in t["depth"]:
        out.append(f"| {r['depth']} | {r['budgets']} | {f(r['psnr'])} | {f(r['msssim'], 3)} |")
    seeds = [t] + [json.loads(q.read_text()) for q in sorted(runs.glob("tables-seed*/tables.json"))]
    if len(seeds) > 1:
        import statistics

        out += [f"\nDepth over {len(seeds)} seeds (basis seed and pixel order = 0..{len(seeds) - 1}):\n",
                "| depth | PSNR per seed | mean | sd |", "|---|---|---|---|"]
        for r in t["depth"]:
            vals = [next(x["psnr"] for x in s_["depth"] if x["depth"] == r["depth"]) for s_ in seeds]
            out.append(f"| {r['depth']} | {', '.join(f(v) for v in vals)} | {f(statistics.mean(vals))} | "
                       f"{f(statistics.stdev(vals))} |")
    out += ["\nWidth (depth 4):\n", "| width | budgets | PSNR | SSIM |", "|---|---|---|---|"]
    for r in t["width"]:
        out.append(f"| {r['width']} | {r['budgets']} | {f(r['psnr'])} | {f(r['msssim'], 3)} |")
    if "paper_lr" in t:
        r = t["paper_lr"]
        base = next((x for x in t["depth"] if x["depth"] == 4), None)
        out.append(f"\nLearning rate at {t['steps']} steps (depth 4, width 32): lr 1e-3 (paper) "
                   f"{f(r['psnr'])} dB vs lr {t['lr']} {f(base['psnr']) if base else 'n/a'} dB.\n")
    out += ["\nProgressive decoding (Table 9), from the depth-4 width-32 file:\n",
            "| p% kept per layer | kept k | coef-only bpp | paper's 2k/HW | PSNR (largest abs alpha) | SSIM | "
            "PSNR (random p%, mean of repeats) |", "|---|---|---|---|---|---|---|"]
    for a, b in zip(t["top_p"], t["random_p"], strict=True):
        out.append(f"| {a['p']} | {a['kept']} | {f(a['coef_bpp'])} | {f(a['paper_bpp'], 3)} | {f(a['psnr'])} | "
                   f"{f(a['msssim'], 3)} | {f(b['psnr_mean'])} |")
    for png in ("table8_depth.png", "table8_width.png", "table9_top_p.png"):
        if (runs / "tables" / png).exists():
            shutil.copy(runs / "tables" / png, docs / png)
    out.append(f"\n![Table 9]({docs.name}/table9_top_p.png) ![Table 8 depth]({docs.name}/table8_depth.png)\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/image")
    ap.add_argument("--docs", default="docs/results/image_codec")
    args = ap.parse_args()
    runs, docs = Path(args.runs), Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    print("\n".join(rd_tables(runs, docs)))
    print("\n".join(tables_8_9(runs, docs)))
    sp = runs / "speed.json"
    if sp.exists():
        print("\nSpeed:\n```\n" + sp.read_text() + "```")


if __name__ == "__main__":
    main()
