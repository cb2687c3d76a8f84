from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from reparam.core.errors import ReparamError, TrainingDiverged
from reparam.train import Callback, TrainConfig, Trainer
from reparam.train.config import resolve_device, set_default_device


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 1, 4, 4, generator=g)
    y = torch.arange(n) % 3
    x = (centers[y] + 0.5 * torch.randn(n, 1, 4, 4, generator=g)).clamp(-3, 3)
    ds = lambda a, b: TensorDataset(x[a:b], y[a:b])  # noqa: E731
    return SimpleNamespace(name="toy", train=ds(0, 64), val=ds(64, 80), test=ds(80, 96))


def _model(dropout=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


CFG = dict(epochs=4, batch_size=16, lr=0.1, progress=False, augment=None)


def test_trains_and_selects_on_val():
    res = Trainer(_model(), _data(), TrainConfig(**CFG)).fit()
    assert res.val_acc > 0.6 and len(res.history) == 4
    assert res.val_acc == max(r["val_acc"] for r in res.history)


class Order(Callback):
    def __init__(self):
        self.events = []

    def before_forward(self, t, x, y):
        self.events.append("before_forward")
        return x, y

    def extra_loss(self, t, logits, x, y):
        self.events.append("extra_loss")
        return None

    def after_backward(self, t):
        self.events.append("after_backward")

    def after_step(self, t):
        self.events.append(f"after_step{t.global_step}")

    def on_epoch_end(self, t, epoch, record):
        record["custom"] = epoch


def test_hooks_run_in_order_and_add_to_log(tmp_path):
    cb = Order()
    Trainer(_model(), _data(), TrainConfig(**dict(CFG, epochs=1)), [cb], out_dir=tmp_path).fit()
    assert cb.events[:4] == ["before_forward", "extra_loss", "after_backward", "after_step1"]
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and '"custom": 1' in log[0]


class Kill(Callback):
    """Simulates a process killed in the middle of epoch `at`."""

    def __init__(self, at):
        self.at = at

    def after_step(self, t):
        if t.epoch == self.at - 1 and t.global_step % t.steps_per_epoch == 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, optimizer):
    cfg = TrainConfig(**dict(CFG, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01, warmup_epochs=1))
    ref_model = _model()
    ref = Trainer(ref_model, _data(), cfg).fit()

    model = _model()
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, _data(), cfg, [Kill(at=3)], out_dir=tmp_path).fit()
    resumed_model = _model()  # a fresh process: new model, state comes from the checkpoint
    res = Trainer(resumed_model, _data(), cfg, out_dir=tmp_path).fit(resume=True)
    keys = ("epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in res.history] == [[r[k] for k in keys] for r in ref.history]
    assert res.test_acc == ref.test_acc and res.best_epoch == ref.best_epoch
    for a, b in zip(resumed_model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


class NaNLoss(Callback):
    def extra_loss(self, t, logits, x, y):
        return torch.tensor(float("nan")) if t.epoch == 1 else None


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="epoch 2.*last good checkpoint"):
        Trainer(_model(), _data(), TrainConfig(**CFG), [NaNLoss()], out_dir=tmp_path).fit()
    assert (tmp_path / "checkpoint.safetensors").exists()


def test_bad_config_and_empty_split():
    with pytest.raises(ReparamError, match="epochs"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ReparamError, match="optimizer"):
        TrainConfig(optimizer="lion").validate()
    d = _data()
    d.val = TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ReparamError, match="val split"):
        Trainer(_model(), d, TrainConfig(**CFG))


def test_device_setting():
    # "auto" means the CPU on a machine without CUDA, and training there is the plain CPU run, bit for bit
    assert str(resolve_device("cpu")) == "cpu"
    if not torch.cuda.is_available():
        assert str(resolve_device("auto")) == "cpu"
        with pytest.raises(ReparamError, match="no CUDA GPU"):
            TrainConfig(device="cuda").validate()
    for bad in ("tpu", "", "gpu0"):
        with pytest.raises(ReparamError, match="device"):
            TrainConfig(device=bad).validate()
    a = Trainer(_model(), _data(), TrainConfig(**CFG)).fit()
    b = Trainer(_model(), _data(), TrainConfig(**CFG, device="auto")).fit()
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    with pytest.raises(ReparamError, match="device"):
        set_default_device("tpu")
    assert str(resolve_device(None)) == "cpu"     # the process default is untouched by the refused value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_returns_model_home_and_matches_cpu():
    m = _model(dropout=0.0)
    res = Trainer(m, _data(), TrainConfig(**CFG, device="cuda")).fit()
    assert next(m.parameters()).device.type == "cpu"          # handed back where it came from
    ref = Trainer(_model(dropout=0.0), _data(), TrainConfig(**CFG)).fit()
    for x, y in zip(res.history, ref.history):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-4


def test_max_steps_stops_mid_epoch_and_the_schedule_spans_it():
    """A step budget finer than an epoch (MixtureGrowth's equal-FLOPs plans): 4 steps per epoch, 6 steps."""
    lrs = []

    class LR(Callback):
        def after_step(self, t):
            lrs.append(t.optimizer.param_groups[0]["lr"])

    t = Trainer(_model(), _data(), TrainConfig(**dict(CFG, epochs=2, max_steps=6)), callbacks=[LR()])
    res = t.fit()
    assert t.global_step == 6 and res.epochs == 2 and len(res.history) == 2
    assert lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 6 / 6)).item()))
    with pytest.raises(ReparamError, match="max_steps"):
        TrainConfig(max_steps=0).validate()
