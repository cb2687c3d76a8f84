"""The PRANC image codec: budgets, rate control, exact decode from the file alone, progressive decode,
the binary container (round trip, corruption and out-of-bounds values refused, a seeded fuzz), the
trained-INR baseline, and the CLI's bad-input handling."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from reparam.cli.main import main
from reparam.core.errors import ReparamError
from reparam.experiments.image import baseline, rd
from reparam.image import codec, container
from reparam.image.fit import FitConfig, fit_inr
from reparam.image.inr import InrSpec, build_inr, dense_params, layer_sizes
from reparam.image.metrics import from_uint8, psnr
from reparam.pranc import pranc_core

torch.set_num_threads(1)
SPEC = InrSpec(width=8, depth=2, fourier=8, sigma=1.0)
FIT = FitConfig(steps=40, lr=3e-2, eval_every=10)
CFG = codec.CodecConfig(inr=SPEC, fit=FIT, seed=3, qat_steps=20, bits_per_coef=6)
BPP = 4.0   # 16x16: a 128-byte file, 60 of them coded coefficients


def image(c=3, h=16, w=16):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx * yy)])[:c]
    return from_uint8((x * 255).round().to(torch.uint8))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    x = image()
    enc = codec.encode(x, BPP, CFG, progress=False)
    path = tmp_path_factory.mktemp("codec") / "x.rpic"
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
    assert h["format"] == "RPIC" and h["image"] == [3, 16, 16] and h["seed"] == 3
    assert h["inr"] == {**SPEC.to_dict(), "sigma": 1.0} and h["budgets"] == enc.budgets
    assert size == path.stat().st_size == len(enc.data) == h["file_bytes"]
    assert h["header_bytes"] == container.file_overhead(3) == 38 + 3 * 4 + 4
    # the decoder's coefficients are exactly the encoder's (dequantized) ones
    model, _ = codec.load(path)
    assert torch.equal(pranc_core(model).alpha, pranc_core(enc.model).alpha)
    assert path.read_bytes()[:4] == b"RPIC"


def test_rate_control_hits_target_within_5_percent():
    x = image(h=24, w=24)
    for bpp in (3.0, 6.0):
        enc = codec.encode(x, bpp, CFG, progress=False)
        target = codec.target_bytes(bpp, 24, 24)
        assert 0.95 * target <= len(enc.data) <= target, (bpp, len(enc.data), target)
    # a fixed k is honoured and the step alone meets the rate
    enc = codec.encode(x, 3.0, CFG, k=150, progress=False)
    assert enc.k == 150 and 0.95 * 216 <= len(enc.data) <= 216
    assert codec.coefficients_for_bpp(3.0, SPEC, 3, 24, 24, 6.0) == round((216 - 54) * 8 / 6)
    assert codec.coefficients_for_bpp(400.0, SPEC, 3, 24, 24) == 235   # capped at the dense network
    with pytest.raises(ReparamError, match="too small"):
        codec.encode(x, 0.5, CFG, progress=False)


def test_quantization_steps_follow_sensitivity():
    from reparam.image import quant

    x = image()
    model = codec.pranc_inr(SPEC, 3, 16, 16, [20, 20, 10], 0)
    r = fit_inr(model, x, FitConfig(steps=5, lr=1e-2, eval_every=5), progress=False)
    core = pranc_core(model)
    codes = quant.ratio_codes(core, r.grad_sq[0])
    h = [float(r.grad_sq[0][b.alpha_offset:b.alpha_offset + b.k].mean()) for b in core.blocks]
    # a layer with a larger mean squared gradient gets a smaller step (h ** -1/2)
    order_h = sorted(range(3), key=lambda i: h[i])
    assert [codes[i] for i in order_h] == sorted(codes, reverse=True)
    steps = quant.step_vector(core, 0.01, codes)
    assert steps.dtype == torch.float32 and steps[0] == pytest.approx(0.01 * container.scale_of(codes[0]), rel=1e-6)
    off = torch.randn(core.k)
    s = quant.search_step(core, off, codes, False, 300.0)
    assert quant.estimate_bits(core, off, s, codes, False)[0] <= 300.0
    assert quant.estimate_bits(core, off, s / 1.05, codes, False)[0] > 300.0 * 0.97


def test_encode_learns(encoded):
    x, enc, _, _ = encoded
    untrained = codec.pranc_inr(SPEC, 3, 16, 16, enc.budgets, 3)
    untrained.eval()
    assert psnr(x, from_uint8(enc.decoded)) > psnr(x, from_uint8(codec.render_uint8(untrained, 16, 16))) + 3
    assert enc.qat is not None and enc.qat.steps == CFG.qat_steps


def test_progressive_top_p(encoded):
    _, enc, path, _ = encoded
    full = codec.decode(path, top=100)
    assert full.image.equal(enc.decoded) and full.kept == enc.k
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
    assert codec.subset_bits([[4]], 0.5) == pytest.approx(np.log2(6))   # C(4, 2) = 6 choices
    assert codec.subset_bits([[4], [4, 4]], 0.5) == pytest.approx(3 * np.log2(6))   # summed over tiles
    assert codec.subset_bits([[10, 7]], 1.0) == pytest.approx(0.0, abs=1e-9)


def _corrupt(path, tmp_path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    bad = tmp_path / "bad.rpic"
    bad.write_bytes(bytes(data))
    return bad


def test_corrupted_and_wrong_files_are_refused(encoded, tmp_path):
    _, _, path, size = encoded
    with pytest.raises(ReparamError, match="CRC32|corrupt"):
        codec.decode(_corrupt(path, tmp_path, size - 7))       # inside the payload
    with pytest.raises(ReparamError, match="CRC32"):
        codec.decode(_corrupt(path, tmp_path, 9))              # inside the header (image height)
    trunc = tmp_path / "trunc.rpic"
    for n in (0, 3, 20, size // 2, size - 1):
        trunc.write_bytes(path.read_bytes()[:n])
        with pytest.raises(ReparamError):
            codec.decode(trunc)
    junk = tmp_path / "junk.rpic"
    junk.write_bytes(b"not a file at all")
    with pytest.raises(ReparamError, match="not a reparam image file"):
        codec.decode(junk)
    with pytest.raises(ReparamError, match="no such image file"):
        codec.decode(tmp_path / "missing.rpic")
    # a model .prnc (safetensors) is not an image
    from reparam.pranc import PrancConfig, apply_pranc
    from reparam.pranc.fileio import save_prnc

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_pranc(net, PrancConfig(k=5))
    save_prnc(tmp_path / "cls.prnc", net)
    with pytest.raises(ReparamError, match="not a reparam image file"):
        codec.decode(tmp_path / "cls.prnc")


TILE_FIELDS = ("step", "budgets", "scale_codes", "ratio_codes", "bound")


def _tile(**kw):
    base = dict(step=0.01, budgets=[20, 20, 10], scale_codes=[128] * 3, ratio_codes=[128] * 3, bound=9)
    return container.TileCode(**{**base, **kw})


def _header(tiles=1, **kw):
    """A header of `tiles` tile records (a 1 x tiles grid); step/budgets/... go to every tile."""
    tile_kw = {k: kw.pop(k) for k in TILE_FIELDS if k in kw}
    base = dict(channels=3, height=16, width=16 * tiles, inr_width=8, depth=2, fourier=8, sigma=1.0,
                fourier_seed=0, seed=3, tiles=[_tile(**tile_kw) for _ in range(tiles)], cols=tiles)
    return container.Header(**{**base, **kw})


def test_container_round_trip_and_bounds():
    h = _header(sigma=0.1, decoded_crc32=2**32 - 1, sigmoid=True, gaussian_model=True)
    payload = bytes(range(8))
    data = container.pack(h, [payload])
    assert len(data) == container.file_overhead(3) + 8 and data[4] == container.VERSION
    back, pay = container.parse(data)
    assert pay == [payload] and back.sigma == pytest.approx(0.1) and back.sigmoid and back.gaussian_model
    assert back.tiles[0].step == pytest.approx(0.01) and back.tiles[0].budgets == [20, 20, 10]
    assert back.decoded_crc32 == 2**32 - 1 and (back.rows, back.cols) == (1, 1)
    # values the format cannot hold are refused on writing, naming the field
    for kw, words in (({"height": 5000}, "image height"), ({"channels": 2}, "channels"),
                      ({"budgets": [20, 20, 28]}, "layer 2 coefficient count"), ({"seed": 2**32}, "basis seed"),
                      ({"step": float("nan")}, "quantization step"), ({"budgets": [1, 1]}, "layer count")):
        with pytest.raises(ReparamError, match=words):
            container.pack(_header(**kw), [payload])
    with pytest.raises(ReparamError, match="whole 32-bit words"):
        container.pack(h, [b"abc"])


def _recrc(data: bytearray) -> bytes:
    import struct
    import zlib

    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def test_header_values_bounded_before_allocation():
    """A file whose CRC is right but whose fields are absurd is refused before anything is built."""
    import struct

    data = bytearray(container.pack(_header(), [bytes(8)]))
    for off, fmt, value, words in ((8, "<H", 65535, "image height"), (12, "<H", 65535, "INR width"),
                                   (7, "<B", 200, "depth"), (5, "<B", 0x80, "flags"), (6, "<B", 2, "channels"),
                                   (38, "<H", 60000, "layer 0 coefficient count"), (4, "<B", 9, "version")):
        bad = bytearray(data)
        struct.pack_into(fmt, bad, off, value)
        with pytest.raises(ReparamError, match=words):
            container.parse(_recrc(bad))
    # each field within its own bounds, together too much work: a 4096x4096 render by a width-512 network,
    # or 65535 coefficients of a million-weight layer (issue 16's known gap); refused by pack and by parse
    for kw, words in (({"height": 4096, "width": 4096, "inr_width": 512}, "multiply-adds"),
                      ({"inr_width": 512, "fourier": 1024, "budgets": [65535, 65535, 10]}, "basis numbers")):
        with pytest.raises(ReparamError, match=words):
            container.pack(_header(**kw), [bytes(8)])
        bad = bytearray(data)
        h = _header(**kw)
        struct.pack_into("<HHHH", bad, 8, h.height, h.width, h.inr_width, h.fourier)
        struct.pack_into("<H", bad, 38, h.tiles[0].budgets[0])
        struct.pack_into("<H", bad, 42, h.tiles[0].budgets[1])
        with pytest.raises(ReparamError, match=words):
            container.parse(_recrc(bad))
    # the encoder applies the same bounds before it fits anything
    for spec, words in ((InrSpec(width=container.MAX_WIDTH + 1, depth=1, fourier=4), "INR width"),
                        (InrSpec(width=8, depth=container.MAX_DEPTH + 1, fourier=4), "depth")):
        cfg = codec.CodecConfig(inr=spec, fit=FitConfig(steps=1), qat_steps=0, grow="none")
        with pytest.raises(ReparamError, match=words):
            codec.encode(image(), 40.0, cfg, progress=False)


def _mutate(good: bytes, kind: int, rng) -> bytes:
    """One seeded mutation: 0 bit flip, 1 byte write, 2 truncation, 3 insertion, 4 deletion, 5 a field edit with
    the CRC made right again (the bounds and the decoder must hold)."""
    data = bytearray(good)
    if kind == 0:
        j = rng.randrange(len(data))
        data[j] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:
        data = data[:rng.randrange(len(data))]
    elif kind == 3:
        j = rng.randrange(len(data) + 1)
        data[j:j] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif kind == 4:
        j = rng.randrange(len(data))
        del data[j:j + rng.randrange(1, 9)]
    else:
        j = rng.randrange(4, len(data) - 4)
        data[j] = rng.randrange(256)
        data = bytearray(_recrc(data))
    return bytes(data)


def test_fuzz_damaged_files_refused_or_identical(encoded):
    """Seeded mutations of a real file (bit flips, byte writes, truncation, insertion, deletion, CRC-fixed
    field edits): each is refused with one ReparamError or decodes to exactly the original image."""
    import random

    _, enc, path, _ = encoded
    good = path.read_bytes()
    ref = codec.from_bytes(good)[0]
    ref_img = codec.render_uint8(ref, 16, 16)
    rng = random.Random(18)
    refused = same = 0
    for i in range(300):
        kind = i % 6
        data = _mutate(good, kind, rng)
        try:
            model, header = codec.from_bytes(bytes(data))
        except ReparamError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        c, h, w = header["image"]
        if (h, w) == (16, 16) and codec.render_uint8(model, h, w).equal(ref_img):
            same += 1
        else:
            # only a CRC-fixed edit can get here: the file is valid, just a different image; it must decode
            assert kind == 5
    assert refused >= 250 and refused + same <= 300


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
        "--qat-steps", "5", "--bits-per-coef", "6", "--no-progress"]


def test_cli_encode_decode_roundtrip(tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    out = tmp_path / "x.rpic"
    rc, stdout, err = run(["image", "encode", str(src), "-o", str(out), "--bpp", "6", "--json",
                           str(tmp_path / "e.json"), *ARCH], capsys)
    assert rc == 0, err
    info = json.loads((tmp_path / "e.json").read_text())
    assert 0.95 * 6 * 256 / 8 <= info["bytes"] == out.stat().st_size <= 6 * 256 / 8
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


def _truncated(path, tmp_path):
    bad = tmp_path / "trunc.rpic"
    bad.write_bytes(path.read_bytes()[:-10])
    return bad


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
    ("truncated", "corrupted or truncated"),
])
def test_cli_bad_input_one_line_exit_2(case, words, tmp_path, capsys, encoded):
    txt, tiny = _bad_inputs(tmp_path)
    out = str(tmp_path / "o.prnc")
    argv = {
        "notimage": ["image", "encode", str(txt), "-o", out, "--bpp", "6", *ARCH],
        "tiny": ["image", "encode", str(tiny), "-o", out, "--bpp", "6", *ARCH],
        "budget": ["image", "encode", "astronaut", "--size", "16", "-o", out, "--bpp", "6", "--coefficients",
                   "100000", *ARCH],
        "lowbpp": ["image", "encode", "astronaut", "--size", "16", "-o", out, "--bpp", "0.1", *ARCH],
        "corrupt": ["image", "decode", str(_corrupt(encoded[2], tmp_path, encoded[3] - 7)), "-o",
                    str(tmp_path / "o.png")],
        "truncated": ["image", "decode", str(_truncated(encoded[2], tmp_path)), "-o", str(tmp_path / "o.png")],
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
        rc, _, err = run(["image", "encode", str(src), "-o", str(out), "--bpp", "6", *ARCH], capsys)
        assert rc == 0, err
        assert codec.read_image_header(out)["image"][0] == channels


def test_rd_sweep_classic_and_prnc(tmp_path, capsys):
    cfg = codec.CodecConfig(inr=SPEC, fit=FitConfig(steps=10, lr=1e-2, eval_every=5), qat_steps=5, bits_per_coef=6)
    res = rd.sweep(image(h=24, w=24), codecs=["prnc", "jpeg"], bpps=[3.0], cfg=cfg, progress=False)
    p = res["points"]["prnc"][0]
    assert p["bpp"] == pytest.approx(p["bytes"] * 8 / 576) and 0.95 * 3 <= p["bpp"] <= 3
    assert p["paper_bpp"] == pytest.approx(2 * p["k"] / 576) and res["points"]["jpeg"]
    assert "jpeg_psnr" in res["comparison"][0]
    rc, _, err = run(["image", "rd", "astronaut", "--size", "16", "--codecs", "jpeg,webp", "--out",
                      str(tmp_path / "rd"), "--no-progress"], capsys)
    assert rc == 0, err
    assert (tmp_path / "rd" / "rd.json").exists() and (tmp_path / "rd" / "rd_psnr.png").exists()
    rc, _, err = run(["image", "rd", "astronaut", "--size", "16", "--codecs", "prnc", "--out", str(tmp_path / "r3"),
                      "--bpp", "8,12", *ARCH], capsys)
    assert rc == 0, err
    pts = json.loads((tmp_path / "r3" / "rd.json").read_text())["points"]["prnc"]
    assert [p["target_bpp"] for p in pts] == [8.0, 12.0] and all(p["bpp"] <= p["target_bpp"] for p in pts)
    rc, _, err = run(["image", "rd", "astronaut", "--codecs", "gif", "--out", str(tmp_path / "r2")], capsys)
    assert rc == 2 and "unknown codec" in err


def test_bd_psnr():
    from reparam.experiments.image import classic

    ref = [{"bpp": b, "psnr": 20 + 10 * np.log10(b)} for b in (0.5, 1, 2, 4)]
    up = [{"bpp": b, "psnr": 21.5 + 10 * np.log10(b)} for b in (0.4, 1, 2, 5)]
    assert classic.bd_psnr(ref, up) == pytest.approx(1.5, abs=1e-6)
    assert classic.bd_psnr(ref, ref[:3]) is None


def test_reproduce_hook_runs_small(tmp_path, monkeypatch):
    from reparam.reproduce import image_codec as reproduce
    from reparam.reproduce.claims import ReproduceContext

    monkeypatch.setattr(reproduce, "QUICK", (24, 5, 8.0))
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
    cfg = codec.CodecConfig(inr=SPEC, fit=FitConfig(steps=5, lr=1e-2, eval_every=5), qat_steps=0)
    small = codec.encode(x, BPP, cfg, progress=False)
    monkeypatch.setattr(codec, "MATERIALIZE_LIMIT", 0)
    m = codec.pranc_inr(SPEC, 3, 16, 16, small.budgets, 0)
    assert pranc_core(m).mode == "streamed"
    big = codec.encode(x, BPP, cfg, progress=False)
    assert abs(small.float_psnr - big.float_psnr) < 0.05


def test_sweep_command_ranks_settings_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["image", "sweep", "camera", "--size", "16", "--bpp", "6", "--set", "qat_steps=0,3", "--steps", "5",
            "--width", "8", "--depth", "1", "--fourier", "4", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in rows] == [{"qat_steps": 0}, {"qat_steps": 3}]
    assert all(0.95 * 6 <= r["bpp"] <= 6 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(t["setting"]["qat_steps"] for t in summary) == [0, 3]
    assert main(argv) == 0   # a rerun skips the finished points
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 2
    other = [a if a != "5" else "6" for a in argv]   # another base option (--steps 6): measured again
    assert main(other) == 0
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 4
    # the summary groups by the whole config: equal --set values with other base options stay apart, and
    # each group names the fields that differ between groups
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 4 and all(t["points"] == 1 for t in summary)
    assert sorted((t["setting"]["qat_steps"], t["setting"]["fit.steps"]) for t in summary) == [
        (0, 5), (0, 6), (3, 5), (3, 6)]
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    assert main([*argv[:-3], "--out", str(tmp_path / "afile"), "--no-progress"]) == 2
    assert "is an existing file" in capsys.readouterr().err


def test_materialize_only_within_limit_and_available_memory(monkeypatch):
    monkeypatch.setattr(codec, "available_memory", lambda: 8 * 1000)
    assert codec.materialize_fits(1000)                 # 4,000 bytes <= half of 8,000
    assert not codec.materialize_fits(1001)
    monkeypatch.setattr(codec, "available_memory", lambda: None)   # unknown: the entry limit alone
    assert codec.materialize_fits(codec.MATERIALIZE_LIMIT)
    assert not codec.materialize_fits(codec.MATERIALIZE_LIMIT + 1)
    monkeypatch.setattr(codec, "available_memory", lambda: 0)
    m = codec.pranc_inr(SPEC, 3, 16, 16, [4] * len(layer_sizes(build_inr(SPEC, 3, 16, 16))), 0)
    assert pranc_core(m).mode == "streamed"


def test_max_k_share_sets_the_width_when_widening():
    x = image(h=24, w=24)
    narrow = codec.network_for(6.0, codec.CodecConfig(inr=SPEC, grow="widen", max_k_share=1.0), *x.shape)
    wide = codec.network_for(6.0, codec.CodecConfig(inr=SPEC, grow="widen", max_k_share=0.05), *x.shape)
    assert narrow.width == SPEC.width < wide.width
    assert codec.network_for(6.0, codec.CodecConfig(inr=SPEC, max_k_share=0.05), *x.shape).width == SPEC.width
    with pytest.raises(ReparamError, match="share"):
        codec.CodecConfig(max_k_share=0).validate()
    with pytest.raises(ReparamError, match="growth rule"):
        codec.CodecConfig(grow="taller").validate()
    with pytest.raises(ReparamError, match="tile grid"):
        codec.CodecConfig(tiles=(0, 2)).validate()


def test_without_growth_k_is_capped_at_the_weights():
    """grow="none": a budget above the network's weights caps k (more bits per coefficient); with "widen" an
    explicit k above them widens the network."""
    x = image(h=24, w=24)
    cfg = codec.CodecConfig(inr=SPEC, grow="none")
    spec = codec.network_for(6.0, cfg, *x.shape)
    weights = sum(layer_sizes(build_inr(SPEC, *x.shape)))
    assert spec.width == SPEC.width
    assert codec.coefficients_for_bpp(6.0, spec, *x.shape, cfg.bits_per_coef) == weights
    assert codec.tile_grid(6.0, cfg, layer_sizes(build_inr(SPEC, *x.shape)), 24, 24) == (1, 1)
    assert codec.network_for(6.0, replace(cfg, grow="widen"), *x.shape, k=weights + 1).width > SPEC.width


def test_tile_grid_is_the_fewest_tiles_within_the_share():
    spec = InrSpec(width=32, depth=2, fourier=16)
    sizes = layer_sizes(build_inr(spec, 3, 8, 8))          # 2,211 weights: up to 1,105 coefficients per tile
    cfg = codec.CodecConfig(inr=spec, bits_per_coef=6)
    limit = cfg.max_k_share * sum(sizes)

    def ks(bpp, r, c):
        return [8 * b / cfg.bits_per_coef for b in codec.tile_payload_bytes(bpp, len(sizes), 64, 64, r, c)]

    chosen = {}
    for bpp in (1.0, 2.0, 4.0):
        rows, cols = chosen[bpp] = codec.tile_grid(bpp, cfg, sizes, 64, 64)
        assert max(ks(bpp, rows, cols)) <= limit, (bpp, rows, cols)
        for r, c in codec._grids(64, 64):     # every grid with fewer tiles leaves a tile above the share
            if r * c < rows * cols:
                assert max(ks(bpp, r, c)) > limit
    assert chosen == {1.0: (1, 1), 2.0: (1, 2), 4.0: (2, 2)}
    assert codec.tile_grid(8.0, cfg, sizes, 64, 64) == (2, 2)   # none within the share: the finest (32-pixel tiles)
    assert codec.tile_grid(4.0, cfg, sizes, 64, 128) == (2, 3)   # a wide image: more columns than rows
    assert codec.tile_grid(8.0, replace(cfg, tiles=(1, 3)), sizes, 64, 64) == (1, 3)
    # tiles are at most tile_side pixels a side whatever the rate; 0 lifts the limit
    assert codec.tile_grid(0.1, cfg, sizes, 256, 256) == (2, 2)
    assert codec.tile_grid(0.1, replace(cfg, tile_side=0), sizes, 256, 256) == (1, 1)
    assert codec.tile_grid(0.5, replace(cfg, tile_side=64), sizes, 256, 128) == (4, 2)
    # ... unless the rate cannot pay for the records of that many tiles: then one network
    assert codec.tile_grid(0.1, replace(cfg, tile_side=64), sizes, 256, 128) == (1, 1)
    assert codec.tile_grid(1.0, cfg, sizes, 300, 40) == (4, 1)    # 3 rows of 100x40 would be 2.5 times as tall
    with pytest.raises(ReparamError, match="tile side"):
        codec.CodecConfig(tile_side=8).validate()
    assert container.tile_boxes(10, 7, 2, 3) == [(0, 5, 0, 2), (0, 5, 2, 4), (0, 5, 4, 7),
                                                 (5, 10, 0, 2), (5, 10, 2, 4), (5, 10, 4, 7)]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    x = image(h=40, w=64)
    cfg = replace(CFG, tiles=(2, 2))
    enc = codec.encode(x, BPP, cfg, progress=False)
    path = tmp_path_factory.mktemp("tiled") / "x.rpic"
    size = codec.save(path, enc)
    return x, enc, path, size


def test_tiled_file_decodes_bit_exactly_and_keeps_the_rate(tiled):
    x, enc, path, size = tiled
    target = codec.target_bytes(BPP, 40, 64)
    assert 0.95 * target <= size <= target and enc.tiles == (2, 2)
    data = path.read_bytes()
    assert data[4] == container.VERSION_TILED
    assert enc.header.header_bytes() == container.file_overhead(3, 4) == 34 + 4 * (10 + 3 * 4) + 4
    dec = codec.decode(path)
    assert dec.bit_exact and torch.equal(dec.image, enc.decoded)
    h = codec.read_image_header(path)
    assert h["version"] == 2 and h["tiles"] == [2, 2] and len(h["tile_codes"]) == 4
    assert h["budgets"] == enc.budgets == [sum(b[i] for b in enc.tile_budgets) for i in range(3)]
    assert enc.k == sum(map(sum, enc.tile_budgets)) and "step" not in h
    model, _ = codec.load(path)
    assert isinstance(model, codec.TiledINR) and len(codec.networks(model)) == 4
    for a, b in zip(codec.networks(model), codec.networks(enc.model)):
        assert torch.equal(pranc_core(a).alpha, pranc_core(b).alpha)
    # each tile is the network of its own box: rendering tile 3 alone gives that part of the image
    y0, y1, x0, x1 = model.boxes[3]
    assert torch.equal(codec.render_uint8(model.tiles[3], y1 - y0, x1 - x0), dec.image[:, y0:y1, x0:x1])
    # progressive decoding keeps the largest coefficients of every tile's layers
    half = codec.decode(path, top=50)
    assert half.kept == sum(int(np.ceil(k / 2)) for b in enc.tile_budgets for k in b) and half.bit_exact is None
    # the tiles share the error budget: the whole-image PSNR agrees with the decoded image
    assert abs(psnr(from_uint8(dec.image), x) - psnr(from_uint8(enc.decoded), x)) < 1e-9


def test_tiled_container_refuses_inconsistent_grids():
    import struct

    assert container.parse_grid("2X3") == (2, 3)
    for bad in ("2", "2x", "ax2", "0x2", "2x256"):
        with pytest.raises(ReparamError, match="tile grid|not allowed"):
            container.parse_grid(bad)
    h = _header(tiles=2)
    data = container.pack(h, [bytes(8), bytes(4)])
    back, pays = container.parse(data)
    assert (back.rows, back.cols) == (1, 2) and pays == [bytes(8), bytes(4)] and data[4] == 2
    assert len(data) == container.file_overhead(3, 2) + 12
    with pytest.raises(ReparamError, match="2 payloads for 1 tiles|1 payloads for 2 tiles"):
        container.pack(h, [bytes(8)])
    with pytest.raises(ReparamError, match="3 tile records"):
        container.pack(replace(h, tiles=h.tiles + [_tile()]), [bytes(4)] * 3)
    with pytest.raises(ReparamError, match="tile columns 3"):   # 16 pixels wide cannot hold 3 tiles of >= 8
        container.pack(_header(tiles=3, width=16), [bytes(4)] * 3)
    for off, fmt, value, words in ((33, "<B", 3, "records|tile records|payloads"),   # columns
                                   (34 + 6, "<I", 3, "payloads"),                      # tile 0's payload words
                                   (32, "<B", 0, "records|tile rows")):
        bad = bytearray(data)
        struct.pack_into(fmt, bad, off, value)
        with pytest.raises(ReparamError, match=words):
            container.parse(_recrc(bad))


def test_tiled_fuzz_refused_or_decodes(tiled):
    """Seeded bit flips, truncations and CRC-fixed field edits of a tiled (version 2) file (`_mutate`)."""
    import random

    _, _, path, _ = tiled
    good = path.read_bytes()
    rng = random.Random(20)
    refused = 0
    for i in range(120):
        kind = (0, 2, 5)[i % 3]
        try:
            model, header = codec.from_bytes(_mutate(good, kind, rng))
        except ReparamError as e:
            assert "\n" not in str(e)
            refused += kind != 5
            continue
        c, h, w = header["image"]   # a CRC-fixed edit may be a valid file of another image: it must render
        assert kind == 5 and codec.render_uint8(model, h, w).shape == (c, h, w)
    assert refused == 80            # every bit flip and truncation is caught


def test_quantization_aware_steps_use_the_fits_pixel_cap(monkeypatch):
    seen = []
    real = codec.fit_inr

    def spy(model, image, config=None, **kw):
        seen.append(config.max_pixels)
        return real(model, image, config, **kw)

    monkeypatch.setattr(codec, "fit_inr", spy)
    cfg = codec.CodecConfig(inr=SPEC, fit=FitConfig(steps=3, lr=1e-2, eval_every=3, max_pixels=50), qat_steps=2)
    codec.encode(image(), BPP, cfg, progress=False)
    assert seen == [50, 50]


def test_sweep_summary_groups_by_whole_config_and_names_what_differs():
    from reparam.experiments.image.sweep import summarize

    def row(setting, config, psnr, vs):
        return {"setting": setting, "config": config, "size": [16, 16], "image": "x", "target_bpp": 1.0,
                "psnr": psnr, "vs_jpeg": vs, "encode_cpu_s": 1.0}

    a = {"fit": {"steps": 5}, "bits_per_coef": 6.0}
    b = {"fit": {"steps": 9}, "bits_per_coef": 6.0}
    rows = [row({"bits_per_coef": 6.0}, a, 20.0, -1.0), row({"bits_per_coef": 6.0}, b, 22.0, 1.0),
            row({"bits_per_coef": 6.0}, a, 21.0, 0.0)]
    s = summarize(rows)
    assert [(t["setting"], t["points"], t["mean_vs_jpeg"]) for t in s] == [
        ({"fit.steps": 9}, 1, 1.0), ({"fit.steps": 5}, 2, -0.5)]
    legacy = summarize([{**r, "config": None} for r in rows])   # rows from before the config was stored
    assert len(legacy) == 1 and legacy[0]["points"] == 3
