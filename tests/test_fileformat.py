import pytest
import torch

from reparam.core.errors import ReparamError
from reparam.core.fileformat import (
    FORMAT_VERSION,
    check_state_matches,
    load_model_state,
    load_tensors,
    read_header,
    save_model,
    save_tensors,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.arange(5), "c": torch.randn(2, generator=g).half()}


def test_roundtrip_is_bit_exact(tmp_path):
    t = _tensors()
    header = save_tensors(tmp_path / "x.safetensors", t, "test", {"seed": 7})
    loaded, h = load_tensors(tmp_path / "x.safetensors", "test")
    assert h == header and h["seed"] == 7 and h["format_version"] == FORMAT_VERSION
    for k in t:
        assert loaded[k].dtype == t[k].dtype and torch.equal(loaded[k], t[k])


def test_wrong_kind_is_refused(tmp_path):
    save_tensors(tmp_path / "x", _tensors(), "mask")
    with pytest.raises(ReparamError, match="kind 'mask'"):
        load_tensors(tmp_path / "x", "pranc")


def test_corrupted_payload_fails_crc(tmp_path):
    p = tmp_path / "x"
    save_tensors(p, _tensors(), "test")
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes
    p.write_bytes(bytes(data))
    with pytest.raises(ReparamError, match="CRC32|corrupt"):
        load_tensors(p, "test")


def test_truncated_file_is_refused(tmp_path):
    p = tmp_path / "x"
    save_tensors(p, _tensors(), "test")
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ReparamError):
        load_tensors(p, "test")


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "g").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ReparamError, match="not a reparam"):
        read_header(tmp_path / "g")
    with pytest.raises(ReparamError, match="not found"):
        read_header(tmp_path / "missing")


def test_future_version_is_refused(tmp_path, monkeypatch):
    import reparam.core.fileformat as ff

    monkeypatch.setattr(ff, "FORMAT_VERSION", FORMAT_VERSION + 1)
    save_tensors(tmp_path / "x", _tensors(), "test")
    monkeypatch.setattr(ff, "FORMAT_VERSION", FORMAT_VERSION)
    with pytest.raises(ReparamError, match="format_version"):
        load_tensors(tmp_path / "x")


def test_state_mismatch_names_first_tensor(tmp_path):
    m1 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    save_model(tmp_path / "m", m1)
    with pytest.raises(ReparamError, match="'0.weight'"):
        load_model_state(tmp_path / "m", m2)
    with pytest.raises(ReparamError, match="missing tensor 'x'"):
        check_state_matches({}, {"x": torch.zeros(1)}, "s")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    save_tensors(tmp_path / "x", _tensors(), "test")
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_edited_header_fails_crc(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    p = tmp_path / "x"
    save_tensors(p, _tensors(), "test", {"seed": 7})
    header = read_header(p)
    header["seed"] = 8  # a tampered header with the old checksum
    save_file(load_file(str(p)), str(p), metadata={"reparam": json.dumps(header)})
    with pytest.raises(ReparamError, match="CRC32"):
        load_tensors(p, "test")
