"""The image codec's own binary file: a fixed little-endian header, one entropy-coded payload, a CRC32.

Every byte counts in bits per pixel, so this is not the safetensors + JSON container of model files
(about 690 bytes of header): the header below is 42 bytes plus 4 per layer (62 bytes for the default
network, 0.03 bpp at 128x128).

    offset size field
    0      4    magic b"RPIC"
    4      1    version (1)
    5      1    flags: bit 0 output sigmoid (else linear), bit 1 gaussian basis (else default-init uniform),
                       bit 2 gaussian entropy model (else laplace), bit 3 sine activation (else ReLU);
                       other bits must be 0
    6      1    channels (1 or 3)
    7      1    depth (hidden layers; the network has depth + 1 Linear layers)
    8      2    image height          10  2  image width
    12     2    INR width (hidden)    14  2  Fourier frequencies M
    16     4    Fourier scale sigma (float32)
    20     4    Fourier matrix seed (uint32)
    24     4    PRANC basis seed (uint32)
    28     4    quantization step (float32; alpha = e0 + step * symbol)
    32     4    CRC32 of the encoder's own 8-bit decode (the decoder's bit-exactness check)
    36     2    symbol bound B (symbols lie in [-B, B])
    38     per layer: coefficients k_b (uint16), entropy-model scale code (uint8), step-ratio code (uint8)
    ...    the payload: constriction range-coder words (uint32, little-endian)
    end-4  4    CRC32 of every byte before it

`parse` checks the size, magic, version and CRC before reading any field, then every field against
HEADER_FIELDS, then across fields (the layer table describes this network, no budget above its layer, and
the work a file asks for, basis numbers and render multiply-adds, is bounded) before anything is
allocated; any failure is one ReparamError line. `pack` applies the same checks, so a written file reads
back.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reparam.core.errors import ReparamError

MAGIC = b"RPIC"
VERSION = 1
_FIXED = struct.Struct("<4sBBBBHHHHfIIfIH")   # everything up to the per-layer table
_LAYER = struct.Struct("<HBB")
FIXED_BYTES = _FIXED.size                      # 38
LAYER_BYTES = _LAYER.size                      # 4
CRC_BYTES = 4
MIN_SIDE = 8              # pixels a side
MAX_SIDE = 4096           # pixels a side (bounds what a decoder renders)
MAX_WIDTH = 512           # hidden units
MAX_DEPTH = 16
MAX_FOURIER = 1024
MAX_BOUND = 32767
MAX_BASIS_ENTRIES = 1 << 33   # basis numbers a decoder regenerates (about a minute on one thread)
MAX_RENDER_MACS = 1 << 38     # multiply-adds of rendering (about a minute on one thread)
MAX_FILE = 1 << 26        # 64 MiB: far above any sensible codec file; bounds what is read into memory
FLAG_SIGMOID, FLAG_GAUSSIAN_BASIS, FLAG_GAUSSIAN_MODEL, FLAG_SINE = 1, 2, 4, 8
FLAGS = FLAG_SIGMOID | FLAG_GAUSSIAN_BASIS | FLAG_GAUSSIAN_MODEL | FLAG_SINE

# scale and step-ratio codes: value = 2 ** (code / 16 - 8), i.e. 1/16 octave steps over [2^-8, 2^8)
SCALE_STEPS = 16
SCALE_OFFSET = 8


def scale_code(scale: float) -> int:
    """The code of the nearest representable entropy-model scale (clipped to the table)."""
    if not scale > 0 or not math.isfinite(scale):
        return 0
    return max(0, min(255, round((math.log2(scale) + SCALE_OFFSET) * SCALE_STEPS)))


def scale_of(code: int) -> float:
    return 2.0 ** (code / SCALE_STEPS - SCALE_OFFSET)


@dataclass
class Header:
    channels: int
    height: int
    width: int
    inr_width: int
    depth: int
    fourier: int
    sigma: float
    fourier_seed: int
    seed: int
    step: float
    budgets: list[int]
    scale_codes: list[int]
    ratio_codes: list[int]
    bound: int
    decoded_crc32: int = 0
    sigmoid: bool = False
    gaussian_basis: bool = False
    gaussian_model: bool = False
    sine: bool = False

    def header_bytes(self) -> int:
        return FIXED_BYTES + LAYER_BYTES * len(self.budgets) + CRC_BYTES


def file_overhead(layers: int) -> int:
    """Bytes of a file that are not payload (header, layer table, CRC)."""
    return FIXED_BYTES + LAYER_BYTES * layers + CRC_BYTES


def _int_in(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _float_in(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, float) and math.isfinite(v) and lo <= v <= hi


# Every header field: (what it is called in an error, its check, what is allowed). Bounded here, before
# anything is allocated or computed from it; `pack` applies the same table, so a written file reads back.
HEADER_FIELDS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "channels": ("channels", lambda v: v in (1, 3) and not isinstance(v, bool), "1 or 3"),
    "height": ("image height", _int_in(MIN_SIDE, MAX_SIDE), f"{MIN_SIDE}..{MAX_SIDE}"),
    "width": ("image width", _int_in(MIN_SIDE, MAX_SIDE), f"{MIN_SIDE}..{MAX_SIDE}"),
    "inr_width": ("INR width", _int_in(1, MAX_WIDTH), f"1..{MAX_WIDTH}"),
    "depth": ("depth", _int_in(1, MAX_DEPTH), f"1..{MAX_DEPTH}"),
    "fourier": ("Fourier frequencies", _int_in(1, MAX_FOURIER), f"1..{MAX_FOURIER}"),
    "sigma": ("Fourier sigma", _float_in(1e-6, 1e4), "a finite value in [1e-6, 1e4]"),
    "fourier_seed": ("Fourier seed", _int_in(0, 2**32 - 1), "0..2**32-1"),
    "seed": ("basis seed", _int_in(0, 2**32 - 1), "0..2**32-1"),
    "step": ("quantization step", _float_in(1e-12, 1e4), "a finite value in [1e-12, 1e4]"),
    "budgets": ("layer coefficient counts", lambda v: isinstance(v, list) and all(_int_in(1, 65535)(k) for k in v),
                "1..65535 each"),
    "scale_codes": ("entropy-model scale codes", lambda v: isinstance(v, list) and all(_int_in(0, 255)(c) for c in v),
                    "0..255 each"),
    "ratio_codes": ("step-ratio codes", lambda v: isinstance(v, list) and all(_int_in(0, 255)(c) for c in v),
                    "0..255 each"),
    "bound": ("symbol bound", _int_in(1, MAX_BOUND), f"1..{MAX_BOUND}"),
    "decoded_crc32": ("decoded CRC32", _int_in(0, 2**32 - 1), "0..2**32-1"),
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render_macs(channels: int, height: int, width: int, inr_width: int, depth: int, fourier: int) -> int:
    """Multiply-adds of rendering the image (Fourier features + every Linear layer, for every pixel)."""
    per_pixel = 2 * fourier + sum(layer_sizes(channels, inr_width, depth, fourier))
    return height * width * per_pixel


def check_work(channels: int, height: int, width: int, inr_width: int, depth: int, fourier: int,
               budgets: list[int], where: str = "image file") -> None:
    """What a decoder agrees to compute: at most MAX_BASIS_ENTRIES regenerated basis numbers (sum over
    layers of k_b * layer size) and MAX_RENDER_MACS multiply-adds of rendering. The encoder calls it
    before fitting, so it never makes a file that a decoder refuses."""
    sizes = layer_sizes(channels, inr_width, depth, fourier)
    basis = sum(k * s for k, s in zip(budgets, sizes, strict=False))
    if basis > MAX_BASIS_ENTRIES:
        raise ReparamError(f"{where}: {basis:,} basis numbers to regenerate (coefficients x layer sizes) is not "
                           f"allowed; allowed: at most {MAX_BASIS_ENTRIES:,}")
    macs = render_macs(channels, height, width, inr_width, depth, fourier)
    if macs > MAX_RENDER_MACS:
        raise ReparamError(f"{where}: rendering {width}x{height} pixels with a width-{inr_width} depth-{depth} "
                           f"network ({macs:,} multiply-adds) is not allowed; allowed: at most {MAX_RENDER_MACS:,}")


def check_network(channels: int, height: int, width: int, inr_width: int, depth: int, fourier: int,
                  budgets: list[int], where: str = "image") -> None:
    """The image and network fields of a header that is yet to be written (the encoder's early check)."""
    values = {"channels": channels, "height": height, "width": width, "inr_width": inr_width, "depth": depth,
              "fourier": fourier, "budgets": list(budgets)}
    for name, v in values.items():
        label, ok, allowed = HEADER_FIELDS[name]
        if not ok(v):
            raise ReparamError(f"{where}: {label} {_short(v)} is not allowed in an image file; allowed: {allowed}")
    check_work(channels, height, width, inr_width, depth, fourier, budgets, where)


def _check(h: Header, where: str) -> None:
    """Every field against HEADER_FIELDS, then across fields (the layer table describes this network,
    no budget exceeds its layer, the work is bounded): the same for writing and reading."""
    for name, (label, ok, allowed) in HEADER_FIELDS.items():
        v = getattr(h, name)
        if not ok(v):
            raise ReparamError(f"{where}: {label} {_short(v)} is not allowed; allowed: {allowed}")
    sizes = layer_sizes(h.channels, h.inr_width, h.depth, h.fourier)
    if not len(h.budgets) == len(h.scale_codes) == len(h.ratio_codes) == len(sizes):
        raise ReparamError(f"{where}: layer count {len(h.budgets)} is not allowed; allowed: {len(sizes)} for "
                           f"depth {h.depth}")
    for i, (k, s) in enumerate(zip(h.budgets, sizes, strict=True)):
        if k > s:
            raise ReparamError(f"{where}: layer {i} coefficient count {k} is not allowed; allowed: 1..{min(s, 65535)} "
                               f"(the layer has {s} weights)")
    check_work(h.channels, h.height, h.width, h.inr_width, h.depth, h.fourier, h.budgets, where)


def layer_sizes(channels: int, width: int, depth: int, fourier: int) -> list[int]:
    """Weights + biases of each Linear layer of the Fourier MLP (equal to reparam.image.inr.layer_sizes)."""
    return [2 * fourier * width + width] + [width * width + width] * (depth - 1) + [width * channels + channels]


def pack(h: Header, payload: bytes) -> bytes:
    """The complete file: header, layer table, payload, CRC32."""
    _check(h, "image file")
    if len(payload) % 4:
        raise ReparamError(f"payload of {len(payload)} bytes is not whole 32-bit words")
    flags = (FLAG_SIGMOID * h.sigmoid) | (FLAG_GAUSSIAN_BASIS * h.gaussian_basis) | (
        FLAG_GAUSSIAN_MODEL * h.gaussian_model) | (FLAG_SINE * h.sine)
    head = _FIXED.pack(MAGIC, VERSION, flags, h.channels, h.depth, h.height, h.width, h.inr_width, h.fourier,
                       h.sigma, h.fourier_seed, h.seed, h.step, h.decoded_crc32, h.bound)
    table = b"".join(_LAYER.pack(*t) for t in zip(h.budgets, h.scale_codes, h.ratio_codes, strict=True))
    body = head + table + payload
    data = body + struct.pack("<I", zlib.crc32(body))
    if len(data) > MAX_FILE:
        raise ReparamError(f"image file of {len(data)} bytes is over the format's limit of {MAX_FILE}")
    return data


def parse(data: bytes, where: str = "image file") -> tuple[Header, bytes]:
    """(header, payload) of a file's bytes; refuses anything damaged, truncated or out of bounds."""
    n = len(data)
    if n < FIXED_BYTES + CRC_BYTES or data[:4] != MAGIC:
        raise ReparamError(f"{where}: not a reparam image file (no {MAGIC.decode()} header); "
                           "it is damaged, truncated or another kind of file")
    if n > MAX_FILE:
        raise ReparamError(f"{where}: {n} bytes is over the format's limit of {MAX_FILE}")
    version = data[4]
    if version != VERSION:
        raise ReparamError(f"{where}: image file version {version} is not supported; allowed: {VERSION}")
    (stored,) = struct.unpack_from("<I", data, n - CRC_BYTES)
    if zlib.crc32(data[:n - CRC_BYTES]) != stored:
        raise ReparamError(f"{where}: CRC32 mismatch: the file is corrupted or truncated")
    (_, _, flags, channels, depth, height, width, inr_width, fourier, sigma, fseed, seed, step, dcrc,
     bound) = _FIXED.unpack_from(data, 0)
    if flags & ~FLAGS:
        raise ReparamError(f"{where}: unknown flags {flags:#04x}; allowed: bits 0-3")
    if not 1 <= depth <= MAX_DEPTH:
        raise ReparamError(f"{where}: depth {depth} is not allowed; allowed: 1..{MAX_DEPTH}")
    layers = depth + 1
    end = FIXED_BYTES + LAYER_BYTES * layers
    if end > n - CRC_BYTES or (n - CRC_BYTES - end) % 4:
        raise ReparamError(f"{where}: {n} bytes do not hold the layer table and whole payload words of a "
                           f"depth-{depth} network")
    table = [_LAYER.unpack_from(data, FIXED_BYTES + LAYER_BYTES * i) for i in range(layers)]
    h = Header(channels=channels, height=height, width=width, inr_width=inr_width, depth=depth, fourier=fourier,
               sigma=sigma, fourier_seed=fseed, seed=seed, step=step, budgets=[t[0] for t in table],
               scale_codes=[t[1] for t in table], ratio_codes=[t[2] for t in table], bound=bound, decoded_crc32=dcrc,
               sigmoid=bool(flags & FLAG_SIGMOID), gaussian_basis=bool(flags & FLAG_GAUSSIAN_BASIS),
               gaussian_model=bool(flags & FLAG_GAUSSIAN_MODEL), sine=bool(flags & FLAG_SINE))
    _check(h, where)
    return h, bytes(data[end:n - CRC_BYTES])
