"""PSNR / (MS-)SSIM against known values and an independent reference; Pillow codec sweeps in true bpp."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from reparam.experiments.image import classic
from reparam.image.metrics import msssim, msssim_kind, psnr, quality

torch.set_num_threads(1)


def smooth_image(c=3, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(c, h // 8, w // 8, generator=g)
    x = torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (0.6 * x + 0.4 * ((xx + yy) > 1).float()).clamp(0, 1)


def test_psnr_known_values():
    x = torch.zeros(3, 16, 16)
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-5)     # MSE 0.01
    assert psnr(x, x + 0.01) == pytest.approx(40.0, abs=1e-5)
    assert psnr(x, x) == math.inf


def _gauss(win=11, sigma=1.5):
    c = np.arange(win) - win // 2
    g = np.exp(-(c**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_cs(x, y):
    """Independent numpy SSIM (Wang et al. 2004, valid Gaussian filtering): mean ssim and mean cs."""
    g = _gauss()
    f = lambda a: convolve2d(convolve2d(a, g[None, :], mode="valid"), g[:, None], mode="valid")  # noqa: E731
    c1, c2 = 0.01**2, 0.03**2
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return float(np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs)), float(np.mean(cs))


def _ms_ssim_ref(x, y):
    w = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    vals = []
    for ch in range(x.shape[0]):
        a, b = x[ch].astype(np.float64), y[ch].astype(np.float64)
        prod = 1.0
        for level in range(5):
            s, cs = _ssim_cs(a, b)
            prod *= (max(cs, 0) if level < 4 else max(s, 0)) ** w[level]
            a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
            b = b.reshape(b.shape[0] // 2, 2, b.shape[1] // 2, 2).mean(axis=(1, 3))
        vals.append(prod)
    return float(np.mean(vals))


def test_ssim_matches_independent_reference():
    x = smooth_image()
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    v, kind = msssim(x, y)
    ref = np.mean([_ssim_cs(x[c].double().numpy(), y[c].double().numpy())[0] for c in range(3)])
    assert kind == "ssim" and v == pytest.approx(ref, abs=2e-4)


def test_ms_ssim_matches_independent_reference():
    x = smooth_image(h=256, w=256)
    y = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    v, kind = msssim(x, y)
    assert kind == "ms-ssim" and v == pytest.approx(_ms_ssim_ref(x.double().numpy(), y.double().numpy()), abs=2e-4)
    assert msssim(x, x)[0] == pytest.approx(1.0, abs=1e-6)


def test_msssim_kind_by_size():
    assert msssim_kind(161, 200) == "ms-ssim" and msssim_kind(160, 500) == "ssim"
    x = smooth_image(h=8, w=8)
    v, kind = msssim(x, x)
    assert kind == "ssim-win7" and v == pytest.approx(1.0, abs=1e-6)
    q = quality(x, x)
    assert q["psnr"] == math.inf and q["msssim_kind"] == "ssim-win7"


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_classic_sweep_true_bpp(codec):
    x = smooth_image(h=32, w=48)
    pts = classic.sweep(x, codec, [5, 50, 95])
    for p in pts:
        data = classic.encode_bytes(x, codec, p["quality"])
        assert p["bytes"] == len(data) and p["bpp"] == pytest.approx(len(data) * 8 / (32 * 48))
        assert p["psnr"] == pytest.approx(psnr(x, classic.decode_bytes(data, 3)), abs=0.5)
    assert pts[0]["bpp"] < pts[-1]["bpp"] and pts[0]["psnr"] < pts[-1]["psnr"]


def test_value_at_bpp_interpolates_and_refuses_outside():
    pts = [{"bpp": 1.0, "psnr": 20.0}, {"bpp": 2.0, "psnr": 30.0}]
    assert classic.value_at_bpp(pts, 1.5) == pytest.approx(25.0)
    assert classic.value_at_bpp(pts, 0.5) is None and classic.value_at_bpp(pts, 2.5) is None
