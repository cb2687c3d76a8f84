"""The layers of the package: core <- shared (data, models, train, metrics) <- methods <- harness.

A module may import its own layer's modules and anything below; never above. Methods do not import each
other (what they share lives in core), with one declared exception: the image codec is PRANC applied to
an image, so `image` builds on `pranc`.
"""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reparam"

CORE, SHARED, METHODS, HARNESS = 0, 1, 2, 3
LAYER = {
    "core": CORE,
    "data": SHARED, "models": SHARED, "train": SHARED, "metrics": SHARED,
    "pranc": METHODS, "nola": METHODS, "compander": METHODS, "trp": METHODS, "tickets": METHODS,
    "mixturegrowth": METHODS, "image": METHODS,
    "experiments": HARNESS, "reproduce": HARNESS, "cli": HARNESS,
}
METHOD_DEPENDS = {("image", "pranc")}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if len(rel.parts) < 2:
            continue   # reparam/__init__.py and __main__.py sit on top of everything
        pkg = rel.parts[0]
        if pkg not in LAYER:
            out.append(f"{rel}: package {pkg!r} has no layer; add it to LAYER in this test")
            continue
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "reparam" or len(parts) < 2 or parts[1] not in LAYER:
                continue
            target = parts[1]
            if LAYER[target] > LAYER[pkg]:
                out.append(f"{rel}:{line} ({pkg}) imports {module}, a layer above it")
            elif LAYER[pkg] == METHODS == LAYER[target] and target != pkg and (pkg, target) not in METHOD_DEPENDS:
                out.append(f"{rel}:{line}: method {pkg} imports method {module}")
    return out


def test_no_module_imports_a_layer_above_it():
    assert violations() == []


def test_the_check_catches_a_library_module_importing_the_harness(tmp_path, monkeypatch):
    fake = tmp_path / "reparam"
    (fake / "pranc").mkdir(parents=True)
    (fake / "pranc" / "bad.py").write_text("from reparam.cli.common import build_from_spec\n")
    (fake / "compander").mkdir()
    (fake / "compander" / "bad.py").write_text("import reparam.pranc.core\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    found = violations()
    assert len(found) == 2 and "a layer above it" in found[1] and "imports method" in found[0]


@pytest.mark.parametrize("package", ["pranc", "compander", "trp", "tickets", "mixturegrowth", "nola"])
def test_method_packages_hold_no_command_line_or_reproduce_code(package):
    names = {p.name for p in (SRC / package).glob("*.py")}
    assert not names & {"cli.py", "reproduce.py", "experiments.py", "compare.py", "pipeline.py"}
    text = "\n".join(p.read_text() for p in (SRC / package).glob("*.py"))
    assert "argparse" not in text
