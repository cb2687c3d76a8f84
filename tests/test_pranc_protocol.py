"""PRANC on the one protocol: the guide's own-loop example as written, Embedding and attention layers in
the basis, the handle, refusals that leave the model untouched, and the .prnc file with chains."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from docexamples import doc_path, own_loop_code
from reparam import compander, pranc, tickets
from reparam.core.errors import ReparamError
from reparam.pranc.fileio import load_prnc, save_prnc

DOC = doc_path("pranc")




def batches(n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (16,), generator=g)
        out.append((torch.rand(16, 1, 6, 6, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * 0.25, y))
    return out


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in data) / len(data)


def test_the_guides_own_loop_runs_and_learns():
    code = own_loop_code("pranc")
    data = batches()
    body, last = code[:code.rindex("pranc.fold(model)")], "pranc.fold(model)"
    torch.manual_seed(0)
    ns = {"batches": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(body, str(DOC), "exec"), ns)          # zero steps: the start
    start = mean_loss(ns["model"], data)
    torch.manual_seed(0)
    ns = {"batches": data}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(body, str(DOC), "exec"), ns)
    model, handle = ns["model"], ns["handle"]
    trained = mean_loss(model, data)
    assert trained < 0.8 * start, (start, trained)
    assert handle.stored == 40 and handle.layers == ["0", "5"]
    x = data[0][0]
    with torch.no_grad():
        ref = model(x)
    exec(last, ns)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)                   # eval weights are the exact ones: bit-identical


class WithEmbeddingAndAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens, memory):
        t = self.emb(tokens)
        t = self.ln(t + self.attn(t, t, t, need_weights=False)[0])
        t = t + self.cross(t, memory, memory, need_weights=False)[0]
        return self.head(t.mean(1))


def test_embedding_and_attention_projections_are_generated_and_train():
    torch.manual_seed(0)
    m = WithEmbeddingAndAttention()
    h = pranc.apply(m, pranc.Config(k=30))
    # the model: Embedding, in_proj_weight and LayerNorm stayed dense without a word
    assert {"emb.weight", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
            "cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight"} <= set(h.tensors)
    assert dict(h.left_dense).keys() == {"ln.weight", "ln.bias"}
    core = pranc.pranc_core(m)
    scale = {s.state_name: s.scale for s in core.segments}
    assert scale["emb.weight"] == pytest.approx(3 ** 0.5) and scale["head.weight"] == pytest.approx(8 ** -0.5)
    assert scale["attn.in_proj_weight"] == pytest.approx((6 / (24 + 8)) ** 0.5)
    tok, mem = torch.randint(0, 10, (5, 6)), torch.rand(5, 7, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(m(tok, mem), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    m.eval()
    with torch.no_grad():
        ref = m(tok, mem)
        pranc.fold(m)
        torch.testing.assert_close(m(tok, mem), ref, rtol=0, atol=1e-6)   # MHA's eval kernel may differ


def test_refusals_leave_the_model_untouched_and_name_both_methods():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    compander.apply(m, compander.Config())
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ReparamError, match=r"^cannot apply pranc to 0\.weight: it already has compander.*"
                                           r"apply PRANC first, then compander$"):
        pranc.apply(m, pranc.Config(k=5))
    assert m.state_dict().keys() == state.keys()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert [type(p).__name__ for p in m[0].parametrizations.weight] == ["Compander"]


def test_prnc_file_refuses_a_chain_it_cannot_store_and_round_trips_pranc_alone(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    pranc.apply(m, pranc.Config(k=12, seed=5))
    with torch.no_grad():
        pranc.pranc_core(m).alpha.add_(torch.linspace(0, 0.1, 12))
    save_prnc(tmp_path / "a.prnc", m)
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    loaded, _ = load_prnc(tmp_path / "a.prnc", fresh)
    x = torch.rand(2, 1, 6, 6)
    m.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tickets.apply(m, tickets.Config(sparsity=0.5))
    with pytest.raises(ReparamError, match=r"0\.weight has pranc then tickets; a \.prnc file stores PRANC alone"):
        save_prnc(tmp_path / "b.prnc", m)
    assert not (tmp_path / "b.prnc").exists()


def test_partial_fold_of_a_chain_keeps_the_rest_of_pranc_working():
    """compander.fold bakes the compandered PRANC tensors; PRANC's coefficients stay with the others."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    pranc.apply(m, pranc.Config(k=8))
    compander.apply(m, compander.Config(), filter_fn=lambda mod, name: name == "0")
    x = torch.rand(3, 4)
    m.eval()
    with torch.no_grad():
        ref = m(x)
    compander.fold(m)
    assert pranc.pranc_core(m) is not None and not parametrize.is_parametrized(m[0], "weight")
    core = pranc.pranc_core(m)
    assert any(p is core.alpha for p in m.parameters())      # alpha is still registered in the model
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    m.train()
    m(x).sum().backward()
    assert core.alpha.grad is not None and core.alpha.grad.abs().sum() > 0
