import sys, time, torch
from reparam.experiments.tickets.targets import register_targets
from reparam.experiments.adapters.runs import load_base, adapt
from reparam.data import load_dataset
register_targets()
torch.set_num_threads(1)
splits = load_dataset(sys.argv[1], seed=0)
for spec in sys.argv[2:]:
    parts = spec.split(":")
    method = parts[0]; kw = {}
    for p in parts[1:]:
        key, v = p.split("=")
        kw[key] = float(v) if key == "lr" else v if key == "sharing" else int(v)
    model, _ = load_base("/tmp/a17/base")
    m, _ = adapt(model, splits, method, epochs=10, **kw)
    print(f"{spec:30s} test {m['test_acc']:.4f} val {m['val_acc']:.4f} stored {m['params_stored']} {m['train_seconds']:.1f}s", flush=True)
