"""Side-by-side strip: original | PRANC decode of a .prnc file | JPEG and WebP files of at most the same size.

    PYTHONPATH=src python benchmarks/image_visual.py runs/image/speed.prnc --image astronaut \
        --out docs/results/image_codec/visual_256.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reparam.data import load_image
from reparam.experiments.image import classic
from reparam.image import codec
from reparam.image.metrics import from_uint8, quality


def best_under(x, name, max_bytes):
    """The highest-quality file of a classic codec that is no larger than max_bytes (or its smallest)."""
    qs = range(0, 101) if name == "webp" else range(1, 101)
    best = None
    for q in qs:
        data = classic.encode_bytes(x, name, q)
        if len(data) <= max_bytes:
            best = (q, data)
    if best is None:
        best = (qs[0], classic.encode_bytes(x, name, qs[0]))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--progressive", default=None,
                    help="comma-separated percentages: show top-p%% decodes instead of the codec comparison")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dec = codec.decode(args.file)
    c, h, w = dec.header["image"]
    x = load_image(args.image, size=(h, w), mode="L" if c == 1 else "RGB")
    x = from_uint8((x * 255).round().to(torch.uint8))
    size = Path(args.file).stat().st_size
    panels = [("original", x, None)]
    q = quality(x, from_uint8(dec.image))
    panels.append((f"codec {size * 8 / (h * w):.2f} bpp, {q['psnr']:.2f} dB", from_uint8(dec.image), None))
    if args.progressive:
        panels = [("original", x, None)]
        for pct in [float(v) for v in args.progressive.split(",")]:
            d = codec.decode(args.file, top=pct)
            y = from_uint8(d.image)
            panels.append((f"top {pct:g}% ({d.kept} coef.), {quality(x, y)['psnr']:.2f} dB", y, None))
    for name in () if args.progressive else [n for n in ("jpeg", "webp", "avif") if classic.available(n)]:
        qual, data = best_under(x, name, size)
        y = classic.decode_bytes(data, c)
        panels.append((f"{name.upper()} q{qual} {len(data) * 8 / (h * w):.2f} bpp, {quality(x, y)['psnr']:.2f} dB",
                       y, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), dpi=120)
    for ax, (title, img, _) in zip(axes, panels):
        arr = img.permute(1, 2, 0).numpy()
        ax.imshow(arr[:, :, 0] if c == 1 else arr, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
