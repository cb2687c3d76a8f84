"""The PRANC image codec: budgets, exact decode from the file alone, progressive decode, file checks,
the trained-INR baseline, and the CLI's bad-input handling."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from reparam.cli.main import main
from reparam.core.errors import ReparamError
from reparam.experiments.image import baseline, rd
from reparam.image import codec
from reparam.image.fit import FitConfig, fit_inr
from reparam.image.inr import InrSpec, build_inr, dense_params, layer_sizes
from reparam.image.metrics import from_uint8, psnr
from reparam.pranc import pranc_core

torch.set_num_threads(1)
SPEC = InrSpec(width=8, depth=2, fourier=8, sigma=1.0)
FIT = FitConfig(steps=40, lr=3e-2, eval_every=10)


def image(c=3, h=16, w=16):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx * yy)])[:c]
    return from_uint8((x * 255).round().to(torch.uint8))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    x = image()
    enc = codec.encode(x, 60, codec.CodecConfig(inr=SPEC, fit=FIT, seed=3), progress=False)
    path = tmp_path_factory.mktemp("codec") / "x.prnc"
    size = codec.save(path, enc)
    return x, enc, path, size


def test_split_budget():
    sizes = [100, 50, 10]
    for k in (3, 20, 60, 100, 160):
        b = codec.split_budget(k, sizes)
        assert sum(b) == k and all(1 <= v <= s for v, s in zip(b, sizes))
    assert codec.split_budget(60, sizes) == [25, 25, 10]  # the small output layer is capped
    assert sum(codec.split_budget(77, sizes, "proportional")) == 77
    with pytest.raises(ReparamError, match="larger than the dense network"):
        codec.split_budget(161, sizes)
    with pytest.raises(ReparamError, match="below one per layer"):
        codec.split_budget(2, sizes)


def test_dense_params_matches_model():
    for spec in (SPEC, InrSpec(width=13, depth=4, fourier=5)):
        for c in (1, 3):
            assert dense_params(spec, c) == sum(p.numel() for p in build_inr(spec, c, 8, 8).parameters())


def test_decode_is_bit_exact_from_file_alone(encoded):
    x, enc, path, size = encoded
    dec = codec.decode(path)
    assert dec.bit_exact and torch.equal(dec.image, enc.decoded)
    assert codec.decode(path).image.equal(dec.image)           # deterministic
    h = codec.read_image_header(path)
    assert h["kind"] == "pranc" and h["content"] == "image" and h["image"] == [3, 16, 16]
    assert h["inr"]["fourier_seed"] == 0 and h["seed"] == 3 and h["coef_dtype"] == "float16"
    assert sum(h["budgets"]) == 60 and size == path.stat().st_size
    # only seed + fp16 coefficients + header: no weights in the file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["alpha"] and f.get_tensor("alpha").dtype == torch.float16


def test_encode_learns(encoded):
    x, enc, _, _ = encoded
    untrained = codec.pranc_inr(SPEC, 3, 16, 16, enc.budgets, 3)
    untrained.eval()
    assert psnr(x, from_uint8(enc.decoded)) > psnr(x, from_uint8(codec.render_uint8(untrained, 16, 16))) + 3


def test_progressive_top_p(encoded):
    _, enc, path, _ = encoded
    full = codec.decode(path, top=100)
    assert full.image.equal(enc.decoded) and full.kept == 60
    half = codec.decode(path, top=50)
    assert half.kept == sum(int(np.ceil(b / 2)) for b in enc.budgets) and half.bit_exact is None
    model, _ = codec.load(path)
    a = pranc_core(model).alpha.detach().clone()
    codec.keep_top(model, 0.5)
    b = pranc_core(model).alpha.detach()
    for blk in pranc_core(model).blocks:
        s = slice(blk.alpha_offset, blk.alpha_offset + blk.k)
        kept = b[s] != 0
        if kept.any() and (~kept).any():   # every kept |alpha| >= every dropped one
            assert a[s][kept].abs().min() >= a[s][~kept].abs().max()
    with pytest.raises(ReparamError, match="percentage"):
        codec.decode(path, top=150)
    assert codec.subset_bits([4], 0.5) == pytest.approx(np.log2(6))   # C(4, 2) = 6 choices
    assert codec.subset_bits([10, 7], 1.0) == pytest.approx(0.0, abs=1e-9)


def test_bpp_target_and_header_counted():
    c, h, w = 3, 32, 32
    assert codec.coefficients_for_bpp(40.0, SPEC, c, h, w) == 235   # capped at the dense network
    for bpp in (7.0, 8.0):
        k = codec.coefficients_for_bpp(bpp, SPEC, c, h, w)
        assert 3 <= k < 233
        target = bpp * h * w / 8
        sizes = layer_sizes(build_inr(SPEC, c, h, w))
        assert codec.file_bytes_for(k, SPEC, c, h, w, codec.split_budget(k, sizes)) <= target + 9
        assert codec.file_bytes_for(k + 2, SPEC, c, h, w, codec.split_budget(k + 2, sizes)) > target - 9
    with pytest.raises(ReparamError, match="too small"):
        codec.coefficients_for_bpp(0.5, SPEC, c, h, w)
    r = codec.bpp_report(1000, 100, 10, 10)
    assert r == {"bpp": 80.0, "payload_bpp": 16.0, "paper_bpp": 2.0}


def _corrupt(path, tmp_path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    bad = tmp_path / "bad.prnc"
    bad.write_bytes(bytes(data))
    return bad


def test_corrupted_and_wrong_files_are_refused(encoded, tmp_path):
    _, _, path, size = encoded
    with pytest.raises(ReparamError, match="CRC32|corrupt"):
        codec.decode(_corrupt(path, tmp_path, size - 3))       # inside alpha
    with pytest.raises(ReparamError):
        codec.decode(_corrupt(path, tmp_path, 20))             # inside the header
    trunc = tmp_path / "trunc.prnc"
    trunc.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(ReparamError):
        codec.decode(trunc)
    junk = tmp_path / "junk.prnc"
    junk.write_bytes(b"not a file at all")
    with pytest.raises(ReparamError):
        codec.decode(junk)
    # a classifier .prnc is not an image
    from reparam.pranc import PrancConfig, apply_pranc
    from reparam.pranc.fileio import save_prnc

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_pranc(net, PrancConfig(k=5))
    save_prnc(tmp_path / "cls.prnc", net)
    with pytest.raises(ReparamError, match="not an image"):
        codec.decode(tmp_path / "cls.prnc")


def test_trained_inr_baseline_fits_budget(tmp_path):
    x = image(c=1)
    target = 900
    width = baseline.width_for_bytes(target, SPEC, 1, 16, 16)
    from dataclasses import replace

    assert baseline.file_bytes_for(replace(SPEC, width=width), 1, 16, 16) <= target
    assert baseline.file_bytes_for(replace(SPEC, width=width + 1), 1, 16, 16) > target - 9
    assert baseline.width_for_bytes(50, SPEC, 1, 16, 16) is None
    t = baseline.train(x, replace(SPEC, width=width), FIT, progress=False)
    size = baseline.save(tmp_path / "b.inr", t)
    assert size <= target and baseline.decode(tmp_path / "b.inr").equal(t.decoded)


def test_fit_improves_psnr():
    x = image()
    torch.manual_seed(0)
    m = build_inr(SPEC, 3, 16, 16)
    r = fit_inr(m, x, FitConfig(steps=40, lr=1e-2, eval_every=10), progress=False)
    assert r.history[-1]["psnr"] > r.history[0]["psnr"] and len(r.history) == 4


# ------------------------------------------------------------------ CLI
def run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


ARCH = ["--width", "8", "--depth", "2", "--fourier", "8", "--sigma", "1", "--steps", "15", "--lr", "1e-2",
        "--no-progress"]


def test_cli_encode_decode_roundtrip(tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    out = tmp_path / "x.prnc"
    rc, stdout, err = run(["image", "encode", str(src), "-o", str(out), "--bpp", "30", "--json",
                           str(tmp_path / "e.json"), *ARCH], capsys)
    assert rc == 0, err
    info = json.loads((tmp_path / "e.json").read_text())
    assert info["bytes"] == out.stat().st_size <= 30 * 256 / 8
    assert info["bpp"] == pytest.approx(out.stat().st_size * 8 / 256) and "paper's convention" in stdout
    rc, stdout, err = run(["image", "decode", str(out), "-o", str(tmp_path / "y.png"), "--compare", str(src)],
                          capsys)
    assert rc == 0, err
    assert "yes" in stdout
    dec = torch.from_numpy(np.array(Image.open(tmp_path / "y.png"))).permute(2, 0, 1)
    assert dec.equal(codec.decode(out).image)
    rc, _, err = run(["image", "decode", str(out), "-o", str(tmp_path / "z.png"), "--top", "30"], capsys)
    assert rc == 0, err
    rc, stdout, err = run(["image", "info", str(out)], capsys)
    assert rc == 0 and "true bits per pixel" in stdout and "16x16" in stdout


def _bad_inputs(tmp_path):
    txt = tmp_path / "notimage.png"
    txt.write_text("hello")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 7)).save(tiny)
    return txt, tiny


@pytest.mark.parametrize("case, words", [
    ("notimage", "not a readable image"),
    ("tiny", "at least 8x8"),
    ("budget", "larger than the dense network"),
    ("lowbpp", "too small"),
    ("corrupt", "corrupted"),
])
def test_cli_bad_input_one_line_exit_2(case, words, tmp_path, capsys, encoded):
    txt, tiny = _bad_inputs(tmp_path)
    out = str(tmp_path / "o.prnc")
    argv = {
        "notimage": ["image", "encode", str(txt), "-o", out, "--coefficients", "10", *ARCH],
        "tiny": ["image", "encode", str(tiny), "-o", out, "--coefficients", "10", *ARCH],
        "budget": ["image", "encode", "astronaut", "--size", "16", "-o", out, "--coefficients", "100000", *ARCH],
        "lowbpp": ["image", "encode", "astronaut", "--size", "16", "-o", out, "--bpp", "0.1", *ARCH],
        "corrupt": ["image", "decode", str(_corrupt(encoded[2], tmp_path, encoded[3] - 3)), "-o",
                    str(tmp_path / "o.png")],
    }[case]
    rc, _, err = run(argv, capsys)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.prnc").exists() and not (tmp_path / "o.png").exists()


def test_palette_16bit_and_jpeg_inputs(tmp_path, capsys):
    pal = tmp_path / "pal.png"
    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)).convert("P").save(pal)
    g16 = tmp_path / "g16.png"
    Image.fromarray((np.arange(256).reshape(16, 16) * 250).astype(np.uint16)).save(g16)
    jpg = tmp_path / "photo.jpg"
    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(jpg, quality=90)
    for src, channels in ((pal, 3), (g16, 1), (jpg, 3)):
        out = tmp_path / f"{src.stem}.prnc"
        rc, _, err = run(["image", "encode", str(src), "-o", str(out), "--coefficients", "20", *ARCH], capsys)
        assert rc == 0, err
        assert codec.read_image_header(out)["image"][0] == channels


def test_rd_sweep_classic_and_prnc(tmp_path, capsys):
    res = rd.sweep(image(h=24, w=24), codecs=["prnc", "inr", "jpeg"], coefficients=[40],
                   cfg=codec.CodecConfig(inr=SPEC, fit=FitConfig(steps=10, lr=1e-2, eval_every=5)),
                   progress=False)
    p = res["points"]["prnc"][0]
    assert p["bpp"] == pytest.approx(p["bytes"] * 8 / 576) and p["paper_bpp"] == pytest.approx(80 / 576)
    assert res["points"]["inr"][0]["bytes"] <= p["bytes"] and res["points"]["jpeg"]
    assert "jpeg_psnr" in res["comparison"][0]
    rc, _, err = run(["image", "rd", "astronaut", "--size", "16", "--codecs", "jpeg,webp", "--out",
                      str(tmp_path / "rd"), "--no-progress"], capsys)
    assert rc == 0, err
    assert (tmp_path / "rd" / "rd.json").exists() and (tmp_path / "rd" / "rd_psnr.png").exists()
    rc, _, err = run(["image", "rd", "astronaut", "--size", "16", "--codecs", "prnc", "--out", str(tmp_path / "r3"),
                      *ARCH[:6], "--steps", "3"], capsys)
    assert rc == 0, err
    pts = json.loads((tmp_path / "r3" / "rd.json").read_text())["points"]["prnc"]
    assert [p["k"] for p in pts] == [7, 14, 29, 58]   # 1/32 .. 1/4 of the 235 dense weights
    rc, _, err = run(["image", "rd", "astronaut", "--codecs", "gif", "--out", str(tmp_path / "r2")], capsys)
    assert rc == 2 and "unknown codec" in err


def test_reproduce_hook_runs_small(tmp_path, monkeypatch):
    from reparam.reproduce import image_codec as reproduce
    from reparam.reproduce.claims import ReproduceContext

    monkeypatch.setattr(reproduce, "QUICK", (24, 5, 30.0))
    rep = reproduce.run(ReproduceContext(out_dir=tmp_path, quick=True))
    ids = [c.claim_id for c in rep.claims]
    assert ids == ["image-prnc-beats-trained-inr", "image-prnc-beats-jpeg-true-bpp",
                   "image-prnc-vs-jpeg-paper-convention", "image-top-p-monotone", "image-depth-helps-fixed-k"]
    assert all(c.verdict in ("holds", "does not hold", "inconclusive") for c in rep.claims)
    assert (tmp_path / "image_top_p.png").exists() and "true bpp" in rep.summary.stored
    jpeg_claim = rep.claims[1]
    assert jpeg_claim.plots == ["image_rd.png"] and (tmp_path / "image_rd.png").exists()


def test_streamed_basis_for_large_networks_same_math(monkeypatch):
    x = image()
    budgets = codec.split_budget(40, layer_sizes(build_inr(SPEC, 3, 16, 16)))
    fit = FitConfig(steps=5, lr=1e-2, eval_every=5)
    small = codec.encode(x, 40, codec.CodecConfig(inr=SPEC, fit=fit), progress=False)
    monkeypatch.setattr(codec, "MATERIALIZE_LIMIT", 0)
    m = codec.pranc_inr(SPEC, 3, 16, 16, budgets, 0)
    assert pranc_core(m).mode == "streamed"
    big = codec.encode(x, 40, codec.CodecConfig(inr=SPEC, fit=fit), progress=False)
    a, b = pranc_core(small.model).alpha, pranc_core(big.model).alpha
    assert torch.allclose(a, b, atol=2e-3) and abs(small.fit.psnr - big.fit.psnr) < 0.05
