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

`parse` checks the size, magic, version and CRC before reading any field, then bounds every field
(image side, network size, budgets against the layers they describe, symbol bound) before anything is
allocated; any failure is one ReparamError line. `pack` refuses values the format cannot hold.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from reparam.core.errors import ReparamError

MAGIC = b"RPIC"
VERSION = 1
_FIXED = struct.Struct("<4sBBBBHHHHfIIfIH")   # everything up to the per-layer table
_LAYER = struct.Struct("<HBB")
FIXED_BYTES = _FIXED.size                      # 38
LAYER_BYTES = _LAYER.size                      # 4
CRC_BYTES = 4
MAX_SIDE = 4096           # pixels a side (bounds what a decoder renders)
MAX_WIDTH = 512           # hidden units
MAX_DEPTH = 16
MAX_FOURIER = 1024
MAX_BOUND = 32767
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


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _check(h: Header, where: str) -> None:
    """Bounds of every field; the same for writing and reading, so a written file always reads back."""
    def bad(field: str, value, allowed: str) -> ReparamError:
        return ReparamError(f"{where}: {field} {value!r} is not allowed; allowed: {allowed}")

    if h.channels not in (1, 3):
        raise bad("channels", h.channels, "1 or 3")
    for name, v, lo, hi in (("image height", h.height, 8, MAX_SIDE), ("image width", h.width, 8, MAX_SIDE),
                            ("INR width", h.inr_width, 1, MAX_WIDTH), ("depth", h.depth, 1, MAX_DEPTH),
                            ("Fourier frequencies", h.fourier, 1, MAX_FOURIER),
                            ("symbol bound", h.bound, 1, MAX_BOUND)):
        if not isinstance(v, int) or not lo <= v <= hi:
            raise bad(name, v, f"{lo}..{hi}")
    for name, v in (("Fourier seed", h.fourier_seed), ("basis seed", h.seed), ("decoded CRC32", h.decoded_crc32)):
        if not isinstance(v, int) or not 0 <= v < 2**32:
            raise bad(name, v, "0..2**32-1")
    if not (math.isfinite(h.sigma) and 0 < h.sigma <= 1e4):
        raise bad("Fourier sigma", h.sigma, "a finite value in (0, 1e4]")
    if not (math.isfinite(h.step) and 1e-12 <= h.step <= 1e4):
        raise bad("quantization step", h.step, "a finite value in [1e-12, 1e4]")
    sizes = layer_sizes(h.channels, h.inr_width, h.depth, h.fourier)
    if not len(h.budgets) == len(h.scale_codes) == len(h.ratio_codes) == len(sizes):
        raise bad("layer count", len(h.budgets), f"{len(sizes)} for depth {h.depth}")
    for i, (k, s) in enumerate(zip(h.budgets, sizes, strict=True)):
        if not isinstance(k, int) or not 1 <= k <= min(s, 65535):
            raise bad(f"layer {i} coefficient count", k, f"1..{min(s, 65535)} (the layer has {s} weights)")
    if any(not isinstance(c, int) or not 0 <= c <= 255 for c in h.scale_codes + h.ratio_codes):
        raise bad("scale or step-ratio code", h.scale_codes + h.ratio_codes, "0..255 each")


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
