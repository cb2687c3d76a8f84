"""Markdown tables for docs/results/image_codec.md from the JSON files the runs wrote (no number is typed
in by hand), and copies of the plots into docs/results/image_codec/.

    python benchmarks/image_report.py --runs runs/image --docs docs/results/image_codec [--prefix rd] > /tmp/tables.md
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


def classic_from(r: dict, runs: Path, prefix: str | None) -> dict:
    """rd.json `r` with the classic codecs' sweeps of the run PREFIX{size}-{image} added where `r` has none
    (a codec-only run at another rate of the same image: the quality sweeps do not depend on the codec's rate)."""
    if prefix is None or any(r["points"].get(n) for n in ("jpeg", "webp", "avif")):
        return r
    other = runs / f"{prefix}{r['image'][1]}-{r['source']}" / "rd.json"
    if other.exists():
        o = json.loads(other.read_text())
        r = {**r, "points": {**o["points"], "prnc": r["points"]["prnc"]}}
        r["classic_from"] = str(other)
    return r


def rd_tables(runs: Path, docs: Path, pattern: str = "rd*-*", classic: str | None = None) -> list[str]:
    """One table per rd.json: every codec point against JPEG/WebP/AVIF at the same true bpp, BD-PSNR."""
    out = []
    for d in sorted(runs.glob(pattern)):
        if d.name.endswith(".partial") or not (d / "rd.json").exists():
            continue
        r = classic_from(json.loads((d / "rd.json").read_text()), runs, classic)
        c, h, w = r["image"]
        kind = next((p["msssim_kind"] for v in r["points"].values() for p in v), "ssim")
        pts = r["points"]
        out.append(f"#### {r['source']} ({w}x{h}, {c} channel{'s' if c > 1 else ''})\n")
        out.append(f"Command: `{r.get('command')}`. Quality: PSNR dB / {kind.upper()}."
                   + (f" JPEG/WebP/AVIF sweeps from {r['classic_from']}." if r.get("classic_from") else "") + "\n")
        classic = [n for n in ("jpeg", "webp", "avif", "jp2") if pts.get(n)]
        head = ["target bpp", "k (width, tiles)", "file bytes", "**true bpp**", "bits/coef", "codec", "float fit"]
        head += ["trained fp16 INR"] if "inr" in pts else []
        head += [f"{n.upper()} @ same true bpp" for n in classic] + ["encode s"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pts["prnc"]:
            tiles = "x".join(map(str, p.get("tiles", [1, 1])))
            row = [f"{p['target_bpp']:g}", f"{p['k']} (w{p['inr']['width']}, {tiles})", str(p["bytes"]),
                   f"**{f(p['bpp'], 3)}**",
                   f(p["bits_per_coef"]), f"{f(p['psnr'])} / {f(p['msssim'], 3)}", f(p["fit_psnr_fp32"])]
            if "inr" in pts:
                q = next((q for q in pts["inr"] if q.get("match_bpp") == p["target_bpp"]), None)
                row.append(f"{f(q['psnr'])} (w{q['width']}, {f(q['bpp'])} bpp)" if q else "n/a (header too big)")
            row += [f"{at(pts[n], p['bpp'])} / {at(pts[n], p['bpp'], 'msssim', 3)}" for n in classic]
            row.append(f"{p['encode_seconds']:.0f}")
            out.append("| " + " | ".join(row) + " |")
        bd = r.get("bd_psnr_vs_jpeg", {})
        lows = ", ".join(f"{n.upper()} {f(min(q['bpp'] for q in pts[n]))}" for n in classic)
        if bd and classic:   # a run of the codec alone has no JPEG curve to compare with
            out.append("\nBD-PSNR against JPEG (cubic fit in log rate over the shared range): "
                       + ", ".join(f"{'codec' if n == 'prnc' else n.upper()} {'n/a' if v is None else f'{v:+.2f} dB'}"
                                   for n, v in bd.items()) + f". Smallest files (bpp): {lows}.\n")
        else:
            out.append("\nNo BD-PSNR: this run measured the codec alone (no JPEG curve).\n")
        from reparam.experiments.image.rd import plot

        plot(r, d, f"{r['source']} {w}x{h}")  # regenerate from the JSON so every plot has the same series
        for png in ("rd_psnr.png", "rd_msssim.png"):
            if (d / png).exists():
                shutil.copy(d / png, docs / f"{d.name}_{png}")
        out.append(f"![RD PSNR]({docs.name}/{d.name}_rd_psnr.png) ![RD {kind}]({docs.name}/{d.name}_rd_msssim.png)\n")
    return out


def target_summary(runs: Path, pattern: str, rates=(0.5, 1.0), classic: str | None = None) -> list[str]:
    """The issue's targets: codec minus JPEG at equal true bpp, per image and rate, mean and wins."""
    rows, diffs = [], []
    for d in sorted(runs.glob(pattern)):
        if not (d / "rd.json").exists():
            continue
        r = classic_from(json.loads((d / "rd.json").read_text()), runs, classic)
        from reparam.experiments.image.classic import value_at_bpp

        for p in r["points"]["prnc"]:
            if p["target_bpp"] not in rates:
                continue
            j = value_at_bpp(r["points"]["jpeg"], p["bpp"])
            wp = value_at_bpp(r["points"].get("webp", []), p["bpp"])
            av = value_at_bpp(r["points"].get("avif", []), p["bpp"])
            diffs.append(None if j is None else p["psnr"] - j)
            rows.append(f"| {r['source']} | {p['target_bpp']:g} | {f(p['bpp'], 3)} | {f(p['psnr'])} | {f(j)} | "
                        f"{'n/a' if j is None else format(p['psnr'] - j, '+.2f')} | "
                        f"{f(wp)} | {f(av)} |")
    ok = [x for x in diffs if x is not None]
    out = ["| image | target bpp | true bpp | codec PSNR | JPEG PSNR | codec - JPEG | WebP | AVIF |",
           "|---|---|---|---|---|---|---|---|", *rows]
    if ok:
        out.append(f"\nMean codec - JPEG: **{sum(ok) / len(ok):+.2f} dB** over {len(ok)} cases; codec above JPEG "
                   f"in **{sum(x > 0 for x in ok)} of {len(ok)}**.\n")
    return out


def _codec_points(runs: Path, patterns: list[str]) -> dict[tuple, dict]:
    """(image, side, target bpp) -> the codec's point, from every rd.json under the glob patterns."""
    out = {}
    for pattern in patterns:
        for d in sorted(runs.glob(pattern)):
            if (d / "rd.json").exists():
                r = json.loads((d / "rd.json").read_text())
                for p in r["points"]["prnc"]:
                    out[(r["source"], r["image"][1], p["target_bpp"])] = p
    return out


def compare_tables(runs: Path, old: list[str], new: list[str]) -> list[str]:
    """Codec PSNR, network width and encode time of two sets of rd runs at the points both measured."""
    a, b = _codec_points(runs, old), _codec_points(runs, new)
    keys = sorted(set(a) & set(b), key=lambda k: (k[1], k[2], k[0]))
    out = ["| image | side | target bpp | old: width, PSNR | new: width, PSNR | new - old (dB) | encode s old / new |",
           "|---|---|---|---|---|---|---|"]
    diffs = []
    for k in keys:
        p, q = a[k], b[k]
        diffs.append(q["psnr"] - p["psnr"])
        out.append(f"| {k[0]} | {k[1]} | {k[2]:g} | w{p['inr']['width']}, {f(p['psnr'])} | w{q['inr']['width']}, "
                   f"{f(q['psnr'])} | {diffs[-1]:+.2f} | {p['encode_seconds']:.0f} / {q['encode_seconds']:.0f} |")
    changed = [d for k, d in zip(keys, diffs, strict=True) if a[k]["inr"]["width"] != b[k]["inr"]["width"]]
    if changed:
        out.append(f"\nWhere the width differs: new - old **{sum(changed) / len(changed):+.2f} dB** mean over "
                   f"{len(changed)} points (new better at {sum(d > 0 for d in changed)}).\n")
    return out


def sweep_tables(runs: Path, pattern: str = "sw-*", reference: str = "sw-default") -> list[str]:
    """The settings sweep: one row per measured config, the fields where it differs from the reference
    folder's config (the defaults a sweep started from), the mean PSNR difference to JPEG at the same true
    bpp, per (image, rate) point the PSNR, and the mean encode CPU time."""
    from reparam.experiments.image.sweep import _flat, summarize

    ref_path = runs / reference / "sweep.jsonl"
    ref = _flat(json.loads(ref_path.read_text().splitlines()[0])["config"]) if ref_path.exists() else {}
    cases: list = []
    runs_rows = {}
    for d in sorted(runs.glob(pattern)):
        if (d / "sweep.jsonl").exists():
            rs = [json.loads(line) for line in (d / "sweep.jsonl").read_text().splitlines() if line.strip()]
            runs_rows[d.name] = rs
            for r in rs:
                if (r["image"], r["target_bpp"]) not in cases:
                    cases.append((r["image"], r["target_bpp"]))
    cases.sort(key=lambda c: (c[1], c[0]))
    head = ["folder", f"differs from {reference}", "points", "mean vs JPEG", "wins"]
    head += [f"{i} {b:g}" for i, b in cases] + ["CPU s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in runs_rows.items():
        for t in summarize(rs):
            by = {(r["image"], r["target_bpp"]): r for r in rs if r["setting"] == t["set"]
                  and (t["config"] is None or r.get("config") == t["config"])}
            flat = _flat(t["config"]) if t["config"] else {}
            diff = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in flat.items()
                             if k in ref and ref[k] != v and k not in ("fit.eval_every",))
            row = [name, diff or "(reference)", str(t["points"]),
                   "n/a" if t["mean_vs_jpeg"] is None else f"{t['mean_vs_jpeg']:+.2f}", str(t["wins"])]
            row += [f(by[c]["psnr"]) if c in by else "" for c in cases] + [f"{t['mean_cpu_s']:.0f}"]
            out.append("| " + " | ".join(row) + " |")
    return out


def sweep_targets(folder: Path, size: int = 128) -> list[str]:
    """The issue's target table from one sweep folder's points (the codec at the defaults these points were
    run with), with JPEG, WebP and AVIF at the same true bpp from the same quality sweeps as `image rd`
    (rd.sweep's codec lists; the sweep's own JPEG column uses qualities 1..95)."""
    import torch

    from reparam.data import load_image
    from reparam.experiments.image import classic
    from reparam.experiments.image.rd import dedupe
    from reparam.image.metrics import from_uint8

    rs = [json.loads(line) for line in (folder / "sweep.jsonl").read_text().splitlines() if line.strip()]
    out = ["| image | target bpp | true bpp | k | codec PSNR | float fit | JPEG PSNR | codec - JPEG | WebP | AVIF | "
           "encode CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    diffs, cache = [], {}
    for r in sorted(rs, key=lambda r: (r["image"], r["target_bpp"])):
        if r["image"] not in cache:
            x = load_image(r["image"], size=(size, size), mode=None)
            x = from_uint8((x * 255).round().to(torch.uint8))
            cache[r["image"]] = {n: dedupe(classic.sweep(x, n)) for n in ("jpeg", "webp", "avif")}
        pts = cache[r["image"]]
        j = classic.value_at_bpp(pts["jpeg"], r["bpp"])
        diffs.append(None if j is None else r["psnr"] - j)
        out.append(f"| {r['image']} | {r['target_bpp']:g} | {f(r['bpp'], 3)} | {r['k']} | {f(r['psnr'])} | "
                   f"{f(r['float_psnr'])} | {f(j)} | {'n/a' if j is None else format(r['psnr'] - j, '+.2f')} | "
                   f"{at(pts['webp'], r['bpp'])} | {at(pts['avif'], r['bpp'])} | {r['encode_cpu_s']:.0f} |")
    ok = [x for x in diffs if x is not None]
    if ok:
        out.append(f"\nMean codec - JPEG: **{sum(ok) / len(ok):+.2f} dB** over {len(ok)} cases; codec above JPEG "
                   f"in **{sum(x > 0 for x in ok)} of {len(ok)}**.\n")
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
    ap.add_argument("--prefix", default="rd", help="run folders are PREFIX128-IMAGE and PREFIX256-IMAGE")
    ap.add_argument("--classic-from", default=None,
                    help="runs without JPEG/WebP/AVIF points take them from the run PREFIX{size}-{image}")
    ap.add_argument("--sweeps", default=None, help="also a table of the sweep folders matching this glob (sw-*)")
    ap.add_argument("--targets", default=None, help="also the target table of this sweep folder (128x128)")
    ap.add_argument("--tables", action="store_true", help="also the Table 8/9 run (benchmarks/image_tables.py)")
    ap.add_argument("--compare", default=None, metavar="OLD;NEW",
                    help="only a table of the codec points two sets of rd runs share: comma-separated globs, "
                         "e.g. 'd7-128-*,new256-*;w5-128-*,w5-256-*'")
    args = ap.parse_args()
    if args.compare:
        old, new = (part.split(",") for part in args.compare.split(";"))
        print("\n".join(compare_tables(Path(args.runs), old, new)))
        return
    runs, docs = Path(args.runs), Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    for size in ("128", "256"):
        print(f"\n## {size}x{size}\n")
        print("\n".join(target_summary(runs, f"{args.prefix}{size}-*", classic=args.classic_from)))
        print("\n".join(rd_tables(runs, docs, f"{args.prefix}{size}-*", classic=args.classic_from)))
    if args.sweeps:
        print("\n## Settings sweep\n")
        print("\n".join(sweep_tables(runs, args.sweeps)))
    if args.targets:
        print(f"\n## Targets from {args.targets}\n")
        print("\n".join(sweep_targets(runs / args.targets)))
    if args.tables:
        print("\n".join(tables_8_9(runs, docs)))
    sp = runs / "speed.json"
    if sp.exists():
        print("\nSpeed:\n```\n" + sp.read_text() + "```")


if __name__ == "__main__":
    main()
