"""NOLA on the one protocol: the adapters guide's own-loop example as written (it starts at the pretrained
function bit for bit, learns, writes an adapter of a few hundred bytes that rebuilds the adapted model on its
base, and folds to a plain model computing the same function), the handle, and the summary."""

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import reparam
from docexamples import doc_path, own_loop_code
from reparam import nola

DOC = doc_path("adapters")


def pretrained_state():
    """A model trained on a source task (class = brightness level); the guide's example adapts it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for x, y in batches(seed=5):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval().state_dict()


def batches(n: int = 20, seed: int = 0, flip: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (16,), generator=g)
        x = torch.rand(16, 1, 6, 6, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * 0.25
        out.append((x, 3 - y if flip else y))      # the target task: the labels in reverse order
    return out


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in data) / len(data)


def run_example(data, tmp_path):
    code = own_loop_code("adapters", "nola")
    body, last = code[:code.rindex("nola.fold(model)")], "nola.fold(model)"
    ns = {"batches": data, "pretrained_state": pretrained_state()}
    tmp_path.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec(compile(body, str(DOC), "exec"), ns)
    finally:
        os.chdir(cwd)
    return ns, last


def test_the_guides_own_loop_starts_at_the_base_learns_and_saves_a_small_adapter(tmp_path):
    target = batches(flip=True)
    base = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
    base.load_state_dict(pretrained_state())
    base.eval()
    x = target[0][0]
    ns, _ = run_example([], tmp_path / "zero")                    # zero steps: exactly the pretrained model
    with torch.no_grad():
        assert torch.equal(ns["model"].eval()(x), base(x))
    ns, last = run_example(target, tmp_path / "run")
    model, handle = ns["model"], ns["handle"]
    assert mean_loss(model, target) < 0.5 * mean_loss(base, target)
    assert handle.stored == 2 * (2 * 8) and handle.layers == ["0", "5"]
    path = tmp_path / "run" / "adapter.safetensors"
    assert path.stat().st_size < 2048
    rebuilt = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
    rebuilt.load_state_dict(pretrained_state())
    nola.load_adapter(path, rebuilt)
    with torch.no_grad():
        ref = model.eval()(x)
        assert torch.equal(rebuilt.eval()(x), ref)
    exec(last, ns)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref)


def test_the_handle_and_the_summary():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 36, 4))
    h = nola.apply(model, nola.Config(k=3, l=5, rank=2), filter_fn=lambda m, n: n != "4")
    assert h.method == "nola" and h.layers == ["0"] and h.tensors == ["0.weight"] and h.stored == 8
    assert type(h.hooks[0]).__name__ == "KeepNormStatistics"
    assert "seed + 8 coefficients (rank 2, k=3, l=5, per-layer)" in h.describe()
    rows = reparam.summary(model, print_table=False)
    assert rows[-1].dense == sum(p.numel() for p in nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).parameters())
    assert rows[-1].stored == sum(r.stored for r in rows[:-1])
    assert {r.method for r in rows} >= {"nola", "dense"}
