"""Every subcommand refuses bad input the same way: exit code 2, one line on stderr naming the value, no
traceback, and nothing written (no OUT, no OUT.partial, no file anywhere in the test's folder)."""

import json
import os
from pathlib import Path

import pytest
import torch

from reparam.cli.main import main

# {f}: a regular file; {d}: an existing folder; {prnc}/{model}/{img}: valid files; {pre}/{draw}: a
# 'tickets pretrain' / 'tickets draw' folder; {junk}: a file that is no reparam file; {res}: a results.json
# of the wrong schema inside a folder; {new}: a name that does not exist yet.
CASES = [
    # train: numbers, names, paths, resume
    (["train", "--out", "{f}/run"], "is a file"),
    (["train", "--out", "{d}"], "already exists"),
    (["train", "--out", "{f}"], "existing file"),
    (["train", "--out", "{new}", "--augment", "bogus"], "unknown augmentation 'bogus'"),
    (["train", "--out", "{new}", "--weight-decay", "nan"], "--weight-decay: 'nan'"),
    (["train", "--out", "{new}", "--lr", "inf"], "--lr: 'inf'"),
    (["train", "--out", "{new}", "--milestones", "1,,2"], "empty item"),
    (["train", "--out", "{new}", "--milestones", "3,2"], "not increasing"),
    (["train", "--out", "{new}", "--seed", "-1"], "--seed: -1"),
    (["train", "--out", "{new}", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--out", "{new}", "--train-subset", "2.5"], "--train-subset"),
    (["train", "--out", "{new}", "--select-on", "worst"], "--select-on"),
    (["train", "--out", "{new}", "--resume"], "nothing to resume"),
    (["train", "--out", "{new}", "--force"], "--force only applies with --resume"),
    (["train", "--out", "{new}", "--epoch", "1"], "unrecognized arguments: --epoch"),   # no prefix matching
    (["train", "--out", "{new}", "--data-root", "{new}/data"], "--data-root"),
    # pranc
    (["pranc", "train", "--out", "{new}", "--k", "100000000"], "allowed: 1.."),
    (["pranc", "train", "--out", "{new}", "--k", "100", "--basis", "hadamard"], "--basis"),
    (["pranc", "train", "--out", "{new}", "--k", "100", "--basis-seed", "-3"], "--basis-seed"),
    (["pranc", "train", "--out", "{new}", "--k", "100", "--budgets", "1,,2"], "--budgets"),
    (["pranc", "train", "--out", "{new}", "--k", "100", "--sigma", "nan"], "--sigma"),
    (["pranc", "eval", "{new}.prnc"], "file not found"),
    (["pranc", "eval", "{d}"], "is a folder"),
    (["pranc", "decode", "{prnc}", "--out", "{f}/x.safetensors"], "is a file"),
    (["pranc", "decode", "{prnc}", "--out", "{d}"], "is a folder"),
    (["pranc", "decode", "{junk}", "--out", "{new}.safetensors"], "not a reparam safetensors file"),
    (["pranc", "inspect", "{junk}"], "not a reparam safetensors file"),
    (["pranc", "inspect", "{model}"], "is not one of pranc"),
    (["pranc", "sweep", "--out", "{new}", "--model", "nope"], "unknown model 'nope'"),
    (["pranc", "sweep", "--out", "{new}", "--k", "10,,20"], "empty item"),
    (["pranc", "sweep", "--out", "{new}", "--k", "10,10"], "lists 10 twice"),
    (["pranc", "sweep", "--out", "{new}", "--baselines", "dense,,narrow"], "empty item"),
    (["pranc", "sweep", "--out", "{new}", "--k", "100000000"], "allowed: 1.."),
    (["pranc", "sweep", "--out", "{new}", "--resume"], "unrecognized arguments: --resume"),
    (["pranc", "compare-bases", "--out", "{new}", "--k", "10,10"], "lists 10 twice"),
    (["pranc", "compare-bases", "--out", "{new}", "--k", "100000000"], "allowed: 1.."),
    (["pranc", "compare-bases", "--out", "{new}", "--resume"], "unrecognized arguments: --resume"),
    (["pranc", "ablate", "wrong-seed", "--out", "{new}"], "needs --file"),
    (["pranc", "ablate", "wrong-seed", "--out", "{new}", "--file", "{new}.prnc"], "file not found"),
    (["pranc", "ablate", "wrong-seed", "--out", "{new}", "--file", "{d}"], "is a folder"),
    (["pranc", "ablate", "fp16", "--out", "{new}", "--file", "{junk}"], "not a reparam safetensors file"),
    # image
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "inf"], "--bpp: 'inf'"),
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "nan"], "--bpp: 'nan'"),
    (["image", "encode", "camera", "-o", "{f}/x.prnc", "--bpp", "1"], "is a file"),
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "1", "--width", "1000000"], "--width"),
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "1", "--max-k-share", "0"],
     "--max-k-share: 0 is not allowed"),
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "1", "--tiles", "2x0"],
     "--tiles: '2x0' is not allowed"),
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "1", "--tile-side", "8"],
     "tile side must be 0 (no limit) or an integer >= 32, got 8"),
    (["image", "encode", "camera", "-o", "{new}.prnc", "--bpp", "1", "--size", "100000"], "pixels"),
    (["image", "encode", "{big}", "-o", "{new}.prnc", "--bpp", "1"], "pixels; allowed: at most"),
    (["image", "encode", "nosuchimage", "-o", "{new}.prnc", "--bpp", "1"], "unknown image 'nosuchimage'"),
    (["image", "decode", "{junk}", "-o", "{new}.png"], "not a reparam image file"),
    (["image", "decode", "{img}", "-o", "{new}.jpg"], "must be a .png"),
    (["image", "decode", "{img}", "-o", "{new}.png", "--compare", "{junk}"], "not a readable image"),
    (["image", "decode", "{img}", "-o", "{new}.png", "--top", "0"], "--top"),
    (["image", "info", "{junk}"], "not a reparam image file"),
    (["image", "info", "{prnc}"], "not a reparam image file"),
    (["image", "rd", "camera", "--out", "{new}", "--bpp", "nan"], "--bpp: 'nan'"),
    (["image", "rd", "camera", "--out", "{new}", "--codecs", "prnc,,jpeg"], "empty item"),
    (["image", "rd", "camera", "--out", "{new}", "--codecs", "prnc,bogus"], "unknown codec 'bogus'"),
    (["image", "rd", "camera", "--out", "{new}", "--coefficients", "0"], "--coefficients"),
    # grow
    (["grow", "--budget", "0"], "--budget"),
    (["grow", "--fraction", "2"], "--fraction"),
    (["grow", "--seed", "-1", "--out", "{new}"], "--seed"),
    (["grow"], "--out is required"),
    (["grow", "--out", "{new}", "--augment", "bogus"], "unknown augmentation 'bogus'"),
    (["grow", "compare", "--out", "{new}", "--tables", "1,,2"], "empty item"),
    (["grow", "compare", "--out", "{new}", "--methods", "mixturegrowth,bogus"], "unknown method 'bogus'"),
    (["grow", "compare", "--out", "{new}", "--sweep-budget", "0.01", "--tables", "2"], "table 2"),
    (["grow", "compare", "--out", "{new}", "--fractions", "0.4,,0.6"], "empty item"),
    # trp
    (["trp", "train", "--out", "{new}", "--energy", "1.5"], "--energy"),
    (["trp", "train", "--out", "{new}", "--period", "0"], "--period"),
    (["trp", "train", "--out", "{new}", "--scheme", "bogus"], "unknown scheme 'bogus'"),
    (["trp", "train", "--out", "{new}", "--latency-batches", "1,,128"], "empty item"),
    (["trp", "decompose", "{new}.safetensors", "--out", "{new}"], "file not found"),
    (["trp", "decompose", "{junk}", "--out", "{new}"], "not a reparam safetensors file"),
    (["trp", "decompose", "{model}", "--out", "{new}", "--speedup", "1"], "--speedup"),
    (["trp", "decompose", "{model}", "--out", "{new}", "--finetune-epochs", "-1"], "--finetune-epochs"),
    (["trp", "decompose", "{prnc}", "--out", "{new}"], "is not one of model, checkpoint"),
    # compander
    (["compander", "train", "--out", "{new}", "--data", "synthetic", "--model", "mlp", "--exclude", "nolayer"],
     "unknown layer 'nolayer'"),
    (["compander", "train", "--out", "{new}", "--a", "0"], "--a: 0"),
    (["compander", "compare", "--out", "{new}", "--variants", "plain,,wc"], "empty item"),
    (["compander", "compare", "--out", "{new}", "--variants", "plain,plain"], "twice"),
    (["compander", "compare", "--out", "{new}", "--milestones", "2,2"], "twice"),
    (["compander", "grid", "--out", "{new}", "--a", "0.5,,0.8"], "empty item"),
    (["compander", "grid", "--out", "{new}", "--a", "inf"], "--a"),
    (["compander", "summarize", "{d}"], "results.json not found"),
    (["compander", "summarize", "{res}"], "not a `reparam compander compare` results file"),
    (["compander", "summarize", "{resbad}"], "not a `reparam compander compare` results file"),
    # tickets
    (["tickets", "pretrain", "--out", "{new}", "--classes", "5-2"], "FIRST <= LAST"),
    (["tickets", "pretrain", "--out", "{new}", "--eps", "nan"], "--eps"),
    (["tickets", "pretrain", "--out", "{new}", "--eps", "0,,0.1"], "empty item"),
    (["tickets", "pretrain", "--out", "{new}", "--resume"], "unrecognized arguments: --resume"),
    (["tickets", "pretrain", "--out", "{new}", "--model", "nope"], "unknown model 'nope'"),
    (["tickets", "draw", "--from", "{pre}", "--out", "{new}", "--scheme", "imp", "--rate", "0"], "--rate"),
    (["tickets", "draw", "--from", "{new}", "--out", "{new}2"], "--from"),
    (["tickets", "draw", "--from", "{pre}", "--out", "{new}", "--sparsity", "0.5,,0.9"], "empty item"),
    (["tickets", "draw", "--from", "{pre}", "--out", "{new}", "--sparsity", "1.0"], "--sparsity"),
    (["tickets", "draw", "--from", "{pre}", "--out", "{new}", "--scheme", "lmp", "--target", "nope"],
     "unknown dataset 'nope'"),
    (["tickets", "draw", "--from", "{d}", "--out", "{new}"], "no pretrain.json"),
    (["tickets", "transfer", "--from", "{draw}", "--out", "{new}", "--target", "nope"], "unknown dataset 'nope'"),
    (["tickets", "transfer", "--from", "{draw}", "--out", "{new}", "--target", "digits", "--target-classes",
      "5-99"], "unknown class 10"),
    (["tickets", "transfer", "--from", "{draw}", "--out", "{new}", "--target", "digits", "--shots", "-1"],
     "--shots"),
    (["tickets", "transfer", "--from", "{draw}", "--out", "{new}", "--target", "digits", "--eval-eps", "-1"],
     "--eval-eps"),
    (["tickets", "transfer", "--from", "{draw}", "--out", "{new}", "--target", "digits", "--epochs", "5"],
     "--protocol full only"),
    (["tickets", "export", "--mask", "{new}.mask.safetensors", "--out", "{new}"], "--mask"),
    (["tickets", "export", "--mask", "{junk}", "--out", "{new}"], "not a reparam safetensors file"),
    (["tickets", "compare", "--out", "{new}", "--targets", "digits,bogus"], "unknown dataset 'bogus'"),
    (["tickets", "compare", "--out", "{new}", "--targets", "digits,,digits-rotated"], "empty item"),
    (["tickets", "compare", "--out", "{new}", "--seeds", "0,0"], "twice"),
    (["tickets", "compare", "--out", "{new}", "--schemes", "omp,bogus"], "unknown scheme 'bogus'"),
    (["tickets", "compare", "--out", "{new}", "--classes", "0-99"], "unknown class 10"),
    # reproduce
    (["reproduce", "--methods", "bogus", "--out", "{new}"], "unknown method 'bogus'"),
    (["reproduce", "--methods", "dense,,pranc", "--out", "{new}"], "empty item"),
    (["reproduce", "--resume", "{f}"], "not a report folder"),
    (["reproduce", "--resume", "{new}"], "nothing to resume"),
    (["reproduce", "--out", "{d}"], "already exists"),
    (["reproduce", "--out", "{new}", "--resume", "{d}"], "name different folders"),
    (["reproduce", "--seed", "-1", "--out", "{new}"], "--seed"),
]


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height greyscale pixels (its data is one empty row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small valid inputs, made once: a .prnc, a model file, an image file, ticket folders."""
    root = tmp_path_factory.mktemp("inputs")
    from reparam.core.fileformat import save_model
    from reparam.image import codec
    from reparam.image.fit import FitConfig
    from reparam.image.inr import InrSpec
    from reparam.models import build_model
    from reparam.pranc import PrancConfig, apply_pranc
    from reparam.pranc.fileio import save_prnc

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[8])
    spec = model.build_args
    save_model(root / "model.safetensors", model, {"model_spec": spec, "method": "dense"})
    apply_pranc(model, PrancConfig(k=20))
    save_prnc(root / "model.prnc", model, architecture=spec)
    x = torch.rand(1, 8, 8)
    enc = codec.encode(x, 40.0, codec.CodecConfig(inr=InrSpec(width=8, depth=1, fourier=4),   # 40 true bpp: 8x8
                                                  fit=FitConfig(steps=2), qat_steps=2), progress=False)
    codec.save(root / "image.rpic", enc)
    (root / "junk.bin").write_bytes(b"not a file of any kind")
    (root / "big.png").write_bytes(_png_claiming(12000, 12000))
    res = root / "res"
    res.mkdir()
    (res / "results.json").write_text(json.dumps({"runs": {"a": 1}, "variants": "plain", "setting": 3}))
    resbad = root / "resbad"
    resbad.mkdir()
    (resbad / "results.json").write_text("{not json")
    # a 'tickets pretrain' folder (1 epoch, natural) and its 'tickets draw' folder
    pre, draw = root / "pre", root / "draw"
    assert main(["tickets", "pretrain", "--data", "digits", "--classes", "0-4", "--eps", "0", "--epochs", "1",
                 "--model", "mlp", "--out", str(pre), "--no-progress"]) == 0
    assert main(["tickets", "draw", "--from", str(pre), "--sparsity", "0.5", "--prune-linear", "--out", str(draw),
                 "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(c[0][:3]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_exit_2_one_line_nothing_written(files, tmp_path, monkeypatch, capsys, argv, words):
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("x")
    (work / "adir").mkdir()
    monkeypatch.chdir(work)   # relative defaults (runs/...) would land here
    subs = {"f": work / "afile", "d": work / "adir", "new": work / "new", "prnc": files / "model.prnc",
            "model": files / "model.safetensors", "img": files / "image.rpic", "junk": files / "junk.bin",
            "big": files / "big.png", "res": files / "res", "resbad": files / "resbad", "pre": files / "pre",
            "draw": files / "draw"}
    argv = [a.format(**subs) for a in argv]
    before, before_inputs = _snapshot(work), _snapshot(files)
    capsys.readouterr()
    rc = main([*argv, "--no-progress"] if _takes_no_progress(argv) else argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    line = err.strip()
    assert "\n" not in line and line.startswith("error:") and "Traceback" not in err, err
    assert words in line, (words, line)
    assert _snapshot(work) == before and _snapshot(files) == before_inputs
    assert not Path("/nonexistent").exists()


def _takes_no_progress(argv: list[str]) -> bool:
    """--no-progress keeps bars out of the captured output; only commands that have it get it."""
    no = {("pranc", "inspect"), ("image", "info"), ("compander", "summarize")}
    return tuple(argv[:2]) not in no


def test_reproduce_resume_of_a_missing_folder_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    target = Path(os.sep) / "reparam-no-such-folder-for-a-test"
    assert main(["reproduce", "--resume", str(target), "--no-progress"]) == 2
    assert not target.exists() and not Path(str(target) + ".partial").exists() and list(tmp_path.iterdir()) == []
    assert "nothing to resume" in capsys.readouterr().err
