"""Seeded fuzzing of every file reparam reads: damaged files are refused with a ReparamError (never another
exception, never a crash) and never silently read as something else.

Two kinds of damage:
* raw: bytes flipped, inserted, zeroed or cut off anywhere in the file. A reader may only accept such a
  file if what it reads is identical to what the undamaged file gives (e.g. a flip inside JSON padding).
* crafted (the reparam containers): the JSON header edited (a value replaced by a wrong type, a huge or
  negative number, NaN, a deep nesting; a key deleted; the header not an object) and the CRC32 recomputed,
  as an attacker could. Such a file may be read (e.g. a changed free-form field) but must not crash or
  exhaust memory: every header value is bounded and type-checked before use.

The image codec file is fuzzed through its public `decode` and the `reparam image info` command only (raw
damage), so the test holds whatever container the codec uses.

`python tests/test_fuzz_files.py` prints the table quoted in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import random
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from reparam.core.errors import ReparamError

SEED = 1234
RAW = 200       # raw mutations per file kind
CRAFTED = 100   # crafted header mutations per container kind
NASTY = ["__BIGINT__", "__DEEP__", None, True, -1, 0, 2**70, 10**9, 1e308, float("nan"), "x", "", [], {}, [1, 2, 3],
         {"name": "mlp"}, [[0] * 3] * 3]


# ------------------------------------------------------------------------------------------------ mutations
def raw_mutation(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(5)
    if op == 0:                                   # flip 1-4 bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
    elif op == 1:                                 # cut off
        b = b[:rng.randrange(len(b))]
    elif op == 2:                                 # insert garbage
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == 3:                                 # zero a range
        i, n = rng.randrange(len(b)), rng.randint(1, 64)
        b[i:i + n] = bytes(len(b[i:i + n]))
    else:                                         # flip one byte inside the first 2 KB (the header)
        b[rng.randrange(min(len(b), 2048))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:8]):
            yield from _paths(v, (*prefix, i))


def crafted_mutation(path: Path, rng: random.Random) -> bytes:
    """The file with its reparam header edited and the CRC32 recomputed."""
    from safetensors import safe_open
    from safetensors.torch import save as st_save

    from reparam.core.fileformat import _crc32, _header_crc

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()["reparam"])
    op = rng.randrange(10)
    if op == 0:
        text = json.dumps(rng.choice([[1, 2], "header", 3.5, None]))
        return st_save(tensors, metadata={"reparam": text})
    targets = [p for p in _paths(header) if p]
    where = rng.choice(targets)
    parent = header
    for key in where[:-1]:
        parent = parent[key]
    if op == 1 and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = rng.choice(NASTY)
    header["crc32"] = _header_crc(header, _crc32(tensors))
    text = json.dumps(header, sort_keys=True)
    text = text.replace('"__BIGINT__"', "9" * 5000).replace('"__DEEP__"', "[" * 20000 + "]" * 20000)
    return st_save(tensors, metadata={"reparam": text})


# ------------------------------------------------------------------------------------------------ file kinds
def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_files(root: Path) -> dict[str, Path]:
    from reparam.core.fileformat import save_model
    from reparam.image import codec
    from reparam.image.fit import FitConfig
    from reparam.image.inr import InrSpec
    from reparam.models import build_model
    from reparam.pranc import PrancConfig, apply_pranc
    from reparam.pranc.fileio import save_prnc

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=4, in_channels=1, image_size=6, hidden=[8])
    spec = model.build_args
    save_model(root / "model.safetensors", model, {"model_spec": spec, "method": "dense"})
    apply_pranc(model, PrancConfig(k=16))
    save_prnc(root / "model.prnc", model, architecture=spec, extra={"dataset": "digits", "data_seed": 0})
    enc = codec.encode(torch.rand(1, 8, 8), 40.0, codec.CodecConfig(inr=InrSpec(width=8, depth=1, fourier=4),
                                                                    fit=FitConfig(steps=2), qat_steps=2),
                       progress=False)   # 40 true bpp: the header dominates an 8x8 image
    codec.save(root / "image.prnc", enc)
    batch = {b"data": np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072), b"labels": [0, 1, 2, 3]}
    (root / "cifar_batch").write_bytes(pickle.dumps(batch, protocol=2))
    idx = np.arange(2 * 4 * 4, dtype=np.uint8)
    (root / "images.idx").write_bytes(bytes([0, 0, 8, 3]) + np.array([2, 4, 4], ">u4").tobytes() + idx.tobytes())
    return {k: root / n for k, n in (("prnc", "model.prnc"), ("model", "model.safetensors"), ("image", "image.prnc"),
                                       ("cifar", "cifar_batch"), ("idx", "images.idx"))}


def _image_info(path: Path) -> str:
    from reparam.cli.image import cmd_info

    buf = io.StringIO()
    with redirect_stdout(buf):
        cmd_info(argparse.Namespace(file=str(path)))
    return buf.getvalue().replace(str(path), "FILE")


def readers(files: dict[str, Path]):
    """kind -> [(reader name, read(path) -> comparable result)]."""
    from reparam.data.cifar import load_pickle
    from reparam.data.fashion_mnist import read_idx
    from reparam.image import codec
    from reparam.pranc.fileio import inspect_prnc, load_prnc
    from reparam.trp.io import load_model_file

    def info(p):
        d = inspect_prnc(p)
        d.pop("file")
        return json.dumps(d, sort_keys=True)

    def cifar(p):
        d = load_pickle(p)
        return (np.asarray(d.get("data")).tobytes(), json.dumps(d.get("labels")))

    return {
        "prnc": [("load_prnc", lambda p: _state(load_prnc(p)[0])), ("inspect_prnc", info)],
        "model": [("trp.io.load_model_file", lambda p: _state(load_model_file(p)[0]))],
        "image": [("codec.decode", lambda p: codec.decode(p).image), ("reparam image info", _image_info)],
        "cifar": [("cifar.load_pickle", cifar)],
        "idx": [("fashion_mnist.read_idx", lambda p: read_idx(p).tobytes())],
    }


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return _same(a, b)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


# Formats without a checksum of their own: a flipped data byte is read as different data by design.
NO_CHECKSUM = {"cifar", "idx"}


def fuzz(root: Path, raw: int = RAW, crafted: int = CRAFTED, seed: int = SEED) -> dict[str, dict[str, int]]:
    files = make_files(root)
    table: dict[str, dict[str, int]] = {}
    for kind, reads in readers(files).items():
        rng = random.Random(f"{seed}-{kind}")
        original = files[kind].read_bytes()
        expected = [r(files[kind]) for _, r in reads]
        n_crafted = crafted if kind in ("prnc", "model") else 0
        row = dict(mutations=raw + n_crafted, refused=0, read_identical=0, read_changed=0, crafted_read=0,
                   crashes=0, silent=0, slowest_ms=0)
        for i in range(raw + n_crafted):
            is_crafted = i >= raw
            data = crafted_mutation(files[kind], rng) if is_crafted else raw_mutation(original, rng)
            path = root / f"m_{kind}"
            path.write_bytes(data)
            for (name, read), want in zip(reads, expected):
                t0 = time.perf_counter()
                try:
                    got = read(path)
                except ReparamError:
                    row["refused"] += 1
                except Exception as e:   # noqa: BLE001 - anything else is the bug this test looks for
                    row["crashes"] += 1
                    row.setdefault("first_crash", f"{name}: {type(e).__name__}: {e}"[:300])
                else:
                    if is_crafted:
                        row["crafted_read"] += 1
                    elif equal(want, got):
                        row["read_identical"] += 1
                    elif kind in NO_CHECKSUM:
                        row["read_changed"] += 1
                    else:
                        row["silent"] += 1
                        row.setdefault("first_silent", f"{name}, mutation {i}")
                row["slowest_ms"] = max(row["slowest_ms"], int(1000 * (time.perf_counter() - t0)))
        table[kind] = row
    return table


def test_fuzzed_files_are_refused_in_one_line_or_read_identically(tmp_path):
    t0 = time.perf_counter()
    table = fuzz(tmp_path)
    for kind, row in table.items():
        assert row["crashes"] == 0, (kind, row)
        assert row["silent"] == 0, (kind, row)
        assert row["refused"] > 0, (kind, row)
        assert row["slowest_ms"] < 5000, (kind, row)   # no header value drives a large allocation
    assert time.perf_counter() - t0 < 60


@pytest.mark.parametrize("kind", ["prnc", "image"])
def test_header_only_readers_verify_the_crc(tmp_path, kind):
    """inspect/info used to describe a file whose payload was damaged: now they refuse it."""
    from reparam.pranc.fileio import inspect_prnc

    files = make_files(tmp_path)
    data = bytearray(files[kind].read_bytes())
    data[-1] ^= 0x40                      # the last byte is coefficient data, far from the header
    bad = tmp_path / "bad.prnc"
    bad.write_bytes(bytes(data))
    read = inspect_prnc if kind == "prnc" else _image_info
    with pytest.raises(ReparamError, match="CRC32 mismatch"):
        read(bad)


if __name__ == "__main__":   # the table of docs/reliability.md
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = fuzz(Path(d))
        for k, r in result.items():
            print(k, json.dumps(r))
        print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
