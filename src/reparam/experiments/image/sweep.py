"""Settings sweep of the codec: every combination of the given settings on every image and target rate,
each point against JPEG at the same true bpp, so the defaults are chosen by measurement.

A setting is `name=v1,v2,...` with name one of SETTINGS (network shape, Fourier scale, steps, learning
rates, bits per coefficient, ...). Results are appended to a JSON-lines file as they come, so a long
sweep can be read (and resumed: finished points are skipped) while it runs.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from reparam.core.errors import ReparamError
from reparam.experiments.image import classic
from reparam.image import codec, container
from reparam.image.metrics import from_uint8, quality

# name -> (where it lives, type)
SETTINGS: dict[str, tuple[str, type]] = {
    "width": ("inr", int), "depth": ("inr", int), "fourier": ("inr", int), "sigma": ("inr", float),
    "activation": ("inr", str),
    "steps": ("fit", int), "lr": ("fit", float), "fraction": ("fit", float), "max_pixels": ("fit", int),
    "warmup": ("fit", int),
    "bits_per_coef": ("codec", float), "qat_steps": ("codec", int), "qat_lr": ("codec", float),
    "budget_rule": ("codec", str), "entropy_model": ("codec", str), "sensitivity_steps": ("codec", int),
    "grow": ("codec", str), "max_k_share": ("codec", float), "tiles": ("codec", container.parse_grid),
    "tile_side": ("codec", int),
    "seed": ("codec", int),
}


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in SETTINGS:
            raise ReparamError(f"setting {item!r} is not NAME=V1,V2,...; allowed names: {', '.join(SETTINGS)}")
        typ = SETTINGS[name][1]
        try:
            grid[name] = [typ(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ReparamError(f"setting {name}: {values!r} are not {typ.__name__} values") from None
        except ReparamError as e:          # a parser with its own message (tiles: container.parse_grid)
            raise ReparamError(f"setting {name}: {e}") from None
        if not grid[name]:
            raise ReparamError(f"setting {name} has no values")
    return grid


def configure(base: codec.CodecConfig, setting: dict[str, Any]) -> codec.CodecConfig:
    inr, fit, top = {}, {}, {}
    for name, v in setting.items():
        where = SETTINGS[name][0]
        {"inr": inr, "fit": fit, "codec": top}[where][name] = v
    for name in ("sensitivity_steps",):
        if name in top:
            top[name] = bool(top[name])
    if "seed" in top:
        fit["seed"] = top["seed"]
    cfg = replace(base, inr=replace(base.inr, **inr), fit=replace(base.fit, **fit), **top)
    return cfg.validate()


def run(images: dict[str, torch.Tensor], bpps: list[float], grid: dict[str, list[Any]], base: codec.CodecConfig,
        out: Path, log=print) -> list[dict]:
    """Every (setting, image, bpp) point; appended to out/sweep.jsonl, which is also read back to skip
    points already measured."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.jsonl"
    done = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    # a point is finished only for the same whole codec config (the --set values and every base option),
    # image and size: a rerun with other base options measures again (rows without "config" never match)
    seen = {(json.dumps(r.get("config"), sort_keys=True), r["image"], json.dumps(r.get("size")), r["target_bpp"])
            for r in done}
    names = list(grid)
    jpeg = {n: classic.sweep(x, "jpeg", list(range(1, 96))) for n, x in images.items()}
    rows = list(done)
    for values in itertools.product(*(grid[n] for n in names)):
        setting = dict(zip(names, values))
        cfg = configure(base, setting)
        config = json.loads(json.dumps(asdict(cfg), default=str))
        for name, x in images.items():
            for bpp in bpps:
                key = (json.dumps(config, sort_keys=True), name, json.dumps(list(x.shape[1:])), bpp)
                if key in seen:
                    continue
                t0 = time.process_time()
                enc = codec.encode(x, bpp, cfg, progress=False)
                cpu = time.process_time() - t0
                c, h, w = x.shape
                q = quality(x, from_uint8(enc.decoded))
                j = classic.value_at_bpp(jpeg[name], len(enc.data) * 8 / (h * w))
                row = {"setting": setting, "config": config, "image": name, "size": [h, w], "target_bpp": bpp,
                       "bpp": len(enc.data) * 8 / (h * w), "k": enc.k, "tiles": list(enc.tiles),
                       "psnr": q["psnr"], "msssim": q["msssim"],
                       "float_psnr": enc.float_psnr, "jpeg_psnr": j,
                       "vs_jpeg": None if j is None else q["psnr"] - j, "encode_cpu_s": cpu,
                       "encode_wall_s": enc.encode_seconds}
                rows.append(row)
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                if log is not None:
                    log(f"{setting} {name} {bpp}: {row['bpp']:.3f} bpp, {enc.tiles[0]}x{enc.tiles[1]} tiles, "
                        f"{q['psnr']:.2f} dB "
                        f"(float {enc.float_psnr:.2f}), JPEG {j if j is None else round(j, 2)}, {cpu:.0f} CPU s")
    return rows


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per measured configuration (the whole codec config and image size, not only the --set values, so
    points run with other base options are never averaged together): mean PSNR, mean difference to JPEG,
    wins over JPEG, mean encode CPU seconds. Each group's "setting" names the config fields (and size)
    that differ between the groups, so two groups with equal --set values but other base options are told
    apart; rows written before the config was stored are grouped by their --set values."""
    groups: dict[str, list[dict]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("config") is None:
            ident = {f"set.{k}": v for k, v in r["setting"].items()}
        else:
            ident = {**_flat(r["config"]), "size": r.get("size")}
        key = json.dumps(ident, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
        keys[key] = ident
    names = sorted({n for ident in keys.values() for n in ident})
    varying = [n for n in names if len({json.dumps(i.get(n), default=str) for i in keys.values()}) > 1]
    out = []
    for key, rs in groups.items():
        ident = keys[key]
        label = {n: ident.get(n) for n in varying} if varying else dict(rs[0]["setting"])
        diffs = [r["vs_jpeg"] for r in rs if r["vs_jpeg"] is not None]
        out.append({"setting": label, "set": rs[0]["setting"], "config": rs[0].get("config"),
                    "size": rs[0].get("size"), "points": len(rs),
                    "mean_psnr": sum(r["psnr"] for r in rs) / len(rs),
                    "mean_vs_jpeg": sum(diffs) / len(diffs) if diffs else None,
                    "wins": sum(d > 0 for d in diffs), "mean_cpu_s": sum(r["encode_cpu_s"] for r in rs) / len(rs)})
    out.sort(key=lambda s: -(s["mean_vs_jpeg"] if s["mean_vs_jpeg"] is not None else -1e9))
    return out
