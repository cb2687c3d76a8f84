"""The image codec's own binary file: a fixed little-endian header, entropy-coded payloads, a CRC32.

Every byte counts in bits per pixel, so this is not the safetensors + JSON container of model files
(about 690 bytes of header). An image is coded by one network (version 1) or, when its budget is more
than one network can use, by a grid of tiles with one network each (version 2, issue 18's fourth pass).
The encoder writes version 1 whenever there is one tile, so such files are byte-identical to before.

Version 1 (one network): 42 bytes plus 4 per layer (62 bytes for the default network, 0.03 bpp at 128x128).

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

Version 2 (tiles; every tile has the same network shape, basis seed and Fourier matrix, its own
coefficients): 38 bytes plus, per tile, 10 bytes and 4 per layer.

    0-27   as version 1 (version byte 2)
    28     4    CRC32 of the encoder's own 8-bit decode of the whole image
    32     1    tile rows R           33  1  tile columns C (row r spans [floor(r*H/R), floor((r+1)*H/R)))
    34     per tile, row by row: quantization step (float32), symbol bound (uint16), payload words (uint32),
           then per layer: k_b (uint16), scale code (uint8), step-ratio code (uint8)
    ...    the tiles' payloads, one after another
    end-4  4    CRC32 of every byte before it

`parse` checks the size, magic, version and CRC before reading any field, then every field against
HEADER_FIELDS, then across fields (the layer tables describe this network, no budget above its layer,
every tile at least MIN_SIDE pixels a side, the payload lengths add up to the file, and the work a file
asks for, basis numbers and render multiply-adds, is bounded) before anything is allocated; any failure
is one ReparamError line. `pack` applies the same checks, so a written file reads back.
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
VERSION = 1                                    # one network
VERSION_TILED = 2                              # a grid of tiles, one network each
VERSIONS = (VERSION, VERSION_TILED)
_FIXED = struct.Struct("<4sBBBBHHHHfIIfIH")   # version 1: everything up to the per-layer table
_FIXED2 = struct.Struct("<4sBBBBHHHHfIIIBB")  # version 2: everything up to the first tile's record
_TILE = struct.Struct("<fHI")                  # version 2, per tile: step, bound, payload words
_LAYER = struct.Struct("<HBB")
FIXED_BYTES = _FIXED.size                      # 38
FIXED2_BYTES = _FIXED2.size                    # 34
TILE_BYTES = _TILE.size                        # 10
LAYER_BYTES = _LAYER.size                      # 4
MAX_TILES = 255                                # rows and columns each
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
class TileCode:
    """How one network's coefficients are coded: what a version-1 file holds once, a version-2 file per tile."""

    step: float
    budgets: list[int]
    scale_codes: list[int]
    ratio_codes: list[int]
    bound: int


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
    tiles: list[TileCode]              # row by row; one tile = a version-1 file
    rows: int = 1
    cols: int = 1
    decoded_crc32: int = 0
    sigmoid: bool = False
    gaussian_basis: bool = False
    gaussian_model: bool = False
    sine: bool = False

    @property
    def layers(self) -> int:
        return self.depth + 1

    def header_bytes(self) -> int:
        return file_overhead(self.layers, len(self.tiles))

    def boxes(self) -> list[tuple[int, int, int, int]]:
        return tile_boxes(self.height, self.width, self.rows, self.cols)


def file_overhead(layers: int, tiles: int = 1) -> int:
    """Bytes of a file that are not payload (header, layer tables, CRC)."""
    if tiles == 1:
        return FIXED_BYTES + LAYER_BYTES * layers + CRC_BYTES
    return FIXED2_BYTES + tiles * (TILE_BYTES + LAYER_BYTES * layers) + CRC_BYTES


def tile_boxes(height: int, width: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile, row by row: row r spans [floor(r*H/R), floor((r+1)*H/R))."""
    ys = [r * height // rows for r in range(rows + 1)]
    xs = [c * width // cols for c in range(cols + 1)]
    return [(ys[r], ys[r + 1], xs[c], xs[c + 1]) for r in range(rows) for c in range(cols)]


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
    "rows": ("tile rows", _int_in(1, MAX_TILES), f"1..{MAX_TILES}"),
    "cols": ("tile columns", _int_in(1, MAX_TILES), f"1..{MAX_TILES}"),
    "decoded_crc32": ("decoded CRC32", _int_in(0, 2**32 - 1), "0..2**32-1"),
}
# ... and those of each tile's TileCode
TILE_FIELDS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "step": ("quantization step", _float_in(1e-12, 1e4), "a finite value in [1e-12, 1e4]"),
    "budgets": ("layer coefficient counts", lambda v: isinstance(v, list) and all(_int_in(1, 65535)(k) for k in v),
                "1..65535 each"),
    "scale_codes": ("entropy-model scale codes", lambda v: isinstance(v, list) and all(_int_in(0, 255)(c) for c in v),
                    "0..255 each"),
    "ratio_codes": ("step-ratio codes", lambda v: isinstance(v, list) and all(_int_in(0, 255)(c) for c in v),
                    "0..255 each"),
    "bound": ("symbol bound", _int_in(1, MAX_BOUND), f"1..{MAX_BOUND}"),
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render_macs(channels: int, height: int, width: int, inr_width: int, depth: int, fourier: int) -> int:
    """Multiply-adds of rendering the image (Fourier features + every Linear layer, for every pixel)."""
    per_pixel = 2 * fourier + sum(layer_sizes(channels, inr_width, depth, fourier))
    return height * width * per_pixel


def check_work(channels: int, height: int, width: int, inr_width: int, depth: int, fourier: int,
               tile_budgets: list[list[int]], where: str = "image file") -> None:
    """What a decoder agrees to compute: at most MAX_BASIS_ENTRIES regenerated basis numbers (sum over tiles
    and layers of k_b * layer size) and MAX_RENDER_MACS multiply-adds of rendering. The encoder calls it
    before fitting, so it never makes a file that a decoder refuses."""
    sizes = layer_sizes(channels, inr_width, depth, fourier)
    basis = sum(k * s for budgets in tile_budgets for k, s in zip(budgets, sizes, strict=False))
    if basis > MAX_BASIS_ENTRIES:
        raise ReparamError(f"{where}: {basis:,} basis numbers to regenerate (coefficients x layer sizes) is not "
                           f"allowed; allowed: at most {MAX_BASIS_ENTRIES:,}")
    macs = render_macs(channels, height, width, inr_width, depth, fourier)
    if macs > MAX_RENDER_MACS:
        raise ReparamError(f"{where}: rendering {width}x{height} pixels with a width-{inr_width} depth-{depth} "
                           f"network ({macs:,} multiply-adds) is not allowed; allowed: at most {MAX_RENDER_MACS:,}")


def _check_fields(table: dict, values: dict[str, Any], where: str, suffix: str = "") -> None:
    for name, v in values.items():
        label, ok, allowed = table[name]
        if not ok(v):
            raise ReparamError(f"{where}: {label} {_short(v)} is not allowed{suffix}; allowed: {allowed}")


def parse_grid(text: str) -> tuple[int, int]:
    """A tile grid written RxC (rows x columns, e.g. 2x2), each in 1..MAX_TILES; the one parser of that form."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(t.strip().isdigit() for t in parts):
        raise ReparamError(f"{text!r} is not a tile grid; allowed: RxC, e.g. 2x2")
    r, c = (int(t) for t in parts)
    if not (1 <= r <= MAX_TILES and 1 <= c <= MAX_TILES):
        raise ReparamError(f"{text!r} is not allowed; allowed: rows and columns in 1..{MAX_TILES}")
    return r, c


def check_grid(height: int, width: int, rows: int, cols: int, where: str = "image") -> None:
    """Every tile of an R x C grid at least MIN_SIDE pixels a side."""
    for n, side, name in ((rows, height, "tile rows"), (cols, width, "tile columns")):
        if side // n < MIN_SIDE:
            raise ReparamError(f"{where}: {name} {n} is not allowed for a side of {side} pixels; allowed: "
                               f"1..{max(1, side // MIN_SIDE)} (tiles of at least {MIN_SIDE} pixels)")


def _check_tile(t: TileCode, sizes: list[int], where: str) -> None:
    _check_fields(TILE_FIELDS, {n: getattr(t, n) for n in TILE_FIELDS}, where)
    if not len(t.budgets) == len(t.scale_codes) == len(t.ratio_codes) == len(sizes):
        raise ReparamError(f"{where}: layer count {len(t.budgets)} is not allowed; allowed: {len(sizes)} for "
                           f"depth {len(sizes) - 1}")
    for i, (k, s) in enumerate(zip(t.budgets, sizes, strict=True)):
        if k > s:
            raise ReparamError(f"{where}: layer {i} coefficient count {k} is not allowed; allowed: 1..{min(s, 65535)} "
                               f"(the layer has {s} weights)")


def check_network(channels: int, height: int, width: int, inr_width: int, depth: int, fourier: int,
                  tile_budgets: list[list[int]], rows: int = 1, cols: int = 1, where: str = "image") -> None:
    """The image, grid and network fields of a header that is yet to be written (the encoder's early check)."""
    _check_fields(HEADER_FIELDS, {"channels": channels, "height": height, "width": width, "inr_width": inr_width,
                                  "depth": depth, "fourier": fourier, "rows": rows, "cols": cols}, where,
                  " in an image file")
    check_grid(height, width, rows, cols, where)
    for budgets in tile_budgets:
        _check_fields(TILE_FIELDS, {"budgets": list(budgets)}, where, " in an image file")
    check_work(channels, height, width, inr_width, depth, fourier, tile_budgets, where)


def _check(h: Header, where: str) -> None:
    """Every field against HEADER_FIELDS and TILE_FIELDS, then across fields (one record per tile, each
    layer table describes this network, no budget exceeds its layer, the work is bounded): the same for
    writing and reading."""
    _check_fields(HEADER_FIELDS, {n: getattr(h, n) for n in HEADER_FIELDS}, where)
    check_grid(h.height, h.width, h.rows, h.cols, where)
    if len(h.tiles) != h.rows * h.cols:
        raise ReparamError(f"{where}: {len(h.tiles)} tile records are not allowed; allowed: {h.rows * h.cols} for "
                           f"a {h.rows}x{h.cols} grid")
    sizes = layer_sizes(h.channels, h.inr_width, h.depth, h.fourier)
    for t in h.tiles:
        _check_tile(t, sizes, where)
    check_work(h.channels, h.height, h.width, h.inr_width, h.depth, h.fourier, [t.budgets for t in h.tiles], where)


def layer_sizes(channels: int, width: int, depth: int, fourier: int) -> list[int]:
    """Weights + biases of each Linear layer of the Fourier MLP (equal to reparam.image.inr.layer_sizes)."""
    return [2 * fourier * width + width] + [width * width + width] * (depth - 1) + [width * channels + channels]


def _flags(h: Header) -> int:
    return (FLAG_SIGMOID * h.sigmoid) | (FLAG_GAUSSIAN_BASIS * h.gaussian_basis) | (
        FLAG_GAUSSIAN_MODEL * h.gaussian_model) | (FLAG_SINE * h.sine)


def _table(t: TileCode) -> bytes:
    return b"".join(_LAYER.pack(*r) for r in zip(t.budgets, t.scale_codes, t.ratio_codes, strict=True))


def pack(h: Header, payloads: list[bytes]) -> bytes:
    """The complete file: header, layer table(s), payload(s), CRC32; version 1 for one tile, else 2."""
    _check(h, "image file")
    if len(payloads) != len(h.tiles):
        raise ReparamError(f"{len(payloads)} payloads for {len(h.tiles)} tiles")
    for p in payloads:
        if len(p) % 4:
            raise ReparamError(f"payload of {len(p)} bytes is not whole 32-bit words")
    common = (MAGIC, VERSION if len(h.tiles) == 1 else VERSION_TILED, _flags(h), h.channels, h.depth, h.height,
              h.width, h.inr_width, h.fourier, h.sigma, h.fourier_seed, h.seed)
    if len(h.tiles) == 1:
        t = h.tiles[0]
        head = _FIXED.pack(*common, t.step, h.decoded_crc32, t.bound) + _table(t)
    else:
        head = _FIXED2.pack(*common, h.decoded_crc32, h.rows, h.cols) + b"".join(
            _TILE.pack(t.step, t.bound, len(p) // 4) + _table(t) for t, p in zip(h.tiles, payloads, strict=True))
    body = head + b"".join(payloads)
    data = body + struct.pack("<I", zlib.crc32(body))
    if len(data) > MAX_FILE:
        raise ReparamError(f"image file of {len(data)} bytes is over the format's limit of {MAX_FILE}")
    return data


def _read_table(data: bytes, at: int, layers: int) -> tuple[list[int], list[int], list[int]]:
    rows = [_LAYER.unpack_from(data, at + LAYER_BYTES * i) for i in range(layers)]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def parse(data: bytes, where: str = "image file") -> tuple[Header, list[bytes]]:
    """(header, one payload per tile) of a file's bytes; refuses anything damaged, truncated or out of bounds."""
    n = len(data)
    if n < FIXED2_BYTES + CRC_BYTES or data[:4] != MAGIC:
        raise ReparamError(f"{where}: not a reparam image file (no {MAGIC.decode()} header); "
                           "it is damaged, truncated or another kind of file")
    if n > MAX_FILE:
        raise ReparamError(f"{where}: {n} bytes is over the format's limit of {MAX_FILE}")
    version = data[4]
    if version not in VERSIONS:
        raise ReparamError(f"{where}: image file version {version} is not supported; allowed: "
                           f"{', '.join(map(str, VERSIONS))}")
    (stored,) = struct.unpack_from("<I", data, n - CRC_BYTES)
    if zlib.crc32(data[:n - CRC_BYTES]) != stored:
        raise ReparamError(f"{where}: CRC32 mismatch: the file is corrupted or truncated")
    flags, depth = data[5], data[7]
    if flags & ~FLAGS:
        raise ReparamError(f"{where}: unknown flags {flags:#04x}; allowed: bits 0-3")
    if not 1 <= depth <= MAX_DEPTH:
        raise ReparamError(f"{where}: depth {depth} is not allowed; allowed: 1..{MAX_DEPTH}")
    layers = depth + 1
    end = n - CRC_BYTES
    if version == VERSION:
        (_, _, _, channels, _, height, width, inr_width, fourier, sigma, fseed, seed, step, dcrc,
         bound) = _FIXED.unpack_from(data, 0)
        at = FIXED_BYTES + LAYER_BYTES * layers
        if n < FIXED_BYTES + CRC_BYTES or at > end or (end - at) % 4:
            raise ReparamError(f"{where}: {n} bytes do not hold the layer table and whole payload words of a "
                               f"depth-{depth} network")
        tiles = [TileCode(step, *_read_table(data, FIXED_BYTES, layers), bound)]
        rows = cols = 1
        payloads = [bytes(data[at:end])]
    else:
        (_, _, _, channels, _, height, width, inr_width, fourier, sigma, fseed, seed, dcrc, rows,
         cols) = _FIXED2.unpack_from(data, 0)
        record = TILE_BYTES + LAYER_BYTES * layers
        at = FIXED2_BYTES + rows * cols * record
        if rows < 1 or cols < 1 or at > end:
            raise ReparamError(f"{where}: {n} bytes do not hold the records of a {rows}x{cols} tile grid of a "
                               f"depth-{depth} network")
        tiles, words = [], []
        for i in range(rows * cols):
            off = FIXED2_BYTES + i * record
            step, bound, nwords = _TILE.unpack_from(data, off)
            tiles.append(TileCode(step, *_read_table(data, off + TILE_BYTES, layers), bound))
            words.append(nwords)
        if 4 * sum(words) != end - at:
            raise ReparamError(f"{where}: the tiles' payloads ({4 * sum(words)} bytes) do not fill the file's "
                               f"{end - at} payload bytes")
        payloads, p = [], at
        for w in words:
            payloads.append(bytes(data[p:p + 4 * w]))
            p += 4 * w
    h = Header(channels=channels, height=height, width=width, inr_width=inr_width, depth=depth, fourier=fourier,
               sigma=sigma, fourier_seed=fseed, seed=seed, tiles=tiles, rows=rows, cols=cols, decoded_crc32=dcrc,
               sigmoid=bool(flags & FLAG_SIGMOID), gaussian_basis=bool(flags & FLAG_GAUSSIAN_BASIS),
               gaussian_model=bool(flags & FLAG_GAUSSIAN_MODEL), sine=bool(flags & FLAG_SINE))
    _check(h, where)
    return h, payloads
