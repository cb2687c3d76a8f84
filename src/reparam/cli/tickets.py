"""`reparam tickets pretrain | draw | transfer | compare`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from reparam.cli.common import (
    add_runtime_args,
    add_select_on,
    add_train_args,
    fraction_open,
    list_of,
    nonneg_float,
    nonneg_int,
    number,
    positive_float,
    positive_int,
    print_table,
    run_folder,
    seed_int,
    setup_runtime,
    sparsity,
)
from reparam.cli.validate import names
from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_model_state, read_header
from reparam.core.outdir import write_json
from reparam.models import build_from_spec

eps_list = list_of(nonneg_float, what="numbers >= 0")
sparsity_list = list_of(sparsity, what="sparsities in [0, 1)")


def _class_list(text: str) -> list[int]:
    """'0-4' (inclusive, first <= last) or '0,1,2' -> [0, 1, 2, ...]; each class once."""
    text = text.strip()
    if "-" in text and "," not in text:
        a, b = text.split("-", 1)
        try:
            lo, hi = int(a), int(b)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a class range like 0-4") from None
        if lo < 0 or hi < lo:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; a class range is FIRST-LAST with "
                                             "0 <= FIRST <= LAST, e.g. 0-4")
        return list(range(lo, hi + 1))
    return list_of(nonneg_int, what="class indices")(text)


def _dataset_name(name: str, option: str) -> str:
    """A registered dataset (the ticket targets included), checked before any work."""
    from reparam.data import DATASETS
    from reparam.experiments.tickets.targets import register_targets

    register_targets()
    if name not in DATASETS:
        raise ReparamError(f"{option}: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return name


def _json_object(path: Path, what: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A small JSON index file written by an earlier step, with `fields` {name: type(s)} checked."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReparamError(f"{path}: not a readable {what} ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ReparamError(f"{path}: not a {what} (the top level is not an object)")
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind) or (isinstance(data.get(key), bool) and bool not in
                                                   (kind if isinstance(kind, tuple) else (kind,))):
            raise ReparamError(f"{path}: not a {what} ({key!r} is missing or has the wrong type)")
    return data


def _mask_header(path: Path, h: dict[str, Any]) -> dict[str, Any]:
    for key, kind in (("from", str), ("eps", (int, float)), ("scheme", str), ("pattern", str)):
        if not isinstance(h.get(key), kind) or isinstance(h.get(key), bool):
            raise ReparamError(f"{path}: not a ticket mask written by 'tickets draw' ({key!r} is missing or "
                               "has the wrong type)")
    return h


def register(subparsers) -> None:
    p = subparsers.add_parser("tickets", help="robust tickets: pretrain, draw, transfer, compare")
    sub = p.add_subparsers(dest="tickets_command", metavar="STEP")

    pre = sub.add_parser("pretrain", help="natural and robust (PGD / noise) pretraining, one model per eps")
    add_train_args(pre, model="cnn", data="digits", epochs=20, lr=0.05, batch_size=64, resume=False)
    pre.add_argument("--classes", type=_class_list, default=None, help="source classes, e.g. 0-4")
    pre.add_argument("--eps", type=eps_list, default=[0.0, 0.1, 0.2], help="eps grid; 0 = natural")
    pre.add_argument("--norm", default="linf", choices=["linf", "l2"])
    pre.add_argument("--steps", type=positive_int, default=5, help="PGD steps during training")
    pre.add_argument("--alpha", type=positive_float, default=None, help="PGD step size (default 2.5 eps / steps)")
    pre.add_argument("--noise", action="store_true",
                     help="Gaussian-noise training (randomized smoothing style): eps is the noise sigma")
    pre.add_argument("--eval-eps", type=nonneg_float, default=None, help="eps of the PGD-10 source evaluation")
    pre.set_defaults(func=cmd_pretrain)

    dr = sub.add_parser("draw", help="draw tickets (masks) from every pretrained model in a folder")
    dr.add_argument("--from", dest="src", required=True, help="folder written by 'tickets pretrain'")
    dr.add_argument("--scheme", default="omp", choices=["omp", "imp", "aimp", "lmp"])
    dr.add_argument("--pattern", default="unstructured", help="unstructured | channel | channel-l2 | nm:N:M")
    dr.add_argument("--scope", default="global", choices=["global", "layer"])
    dr.add_argument("--sparsity", type=sparsity_list, default=[0.5, 0.8, 0.9, 0.95])
    dr.add_argument("--exclude-first-conv", action="store_true", help="never prune the first conv")
    dr.add_argument("--prune-linear", action="store_true", help="also prune Linear layers (never the head)")
    dr.add_argument("--rate", type=fraction_open, default=0.2,
                    help="IMP: fraction of remaining pruned per round, in (0, 1)")
    dr.add_argument("--round-epochs", type=positive_int, default=3, help="IMP: retraining epochs per round")
    dr.add_argument("--round-lr", type=positive_float, default=0.01)
    dr.add_argument("--aimp-eps", type=positive_float, default=0.1, help="A-IMP: PGD eps of eq. (1)")
    dr.add_argument("--target", default=None, help="LMP: target dataset (masks are learned on it)")
    dr.add_argument("--target-classes", type=_class_list, default=None)
    dr.add_argument("--shots", type=nonneg_int, default=10, help="LMP: train images per class (0: all)")
    dr.add_argument("--lmp-epochs", type=positive_int, default=30)
    add_select_on(dr)
    dr.add_argument("--out", required=True)
    dr.add_argument("--overwrite", action="store_true")
    dr.add_argument("--seed", type=seed_int, default=0)
    add_runtime_args(dr)
    dr.set_defaults(func=cmd_draw)

    tr = sub.add_parser("transfer", help="transfer every ticket of a draw folder to a target task")
    tr.add_argument("--from", dest="src", required=True, help="folder written by 'tickets draw'")
    tr.add_argument("--target", required=True, help="target dataset, e.g. digits-rotated, digits28-noisy")
    tr.add_argument("--target-classes", type=_class_list, default=None, help="e.g. 5-9")
    tr.add_argument("--shots", type=nonneg_int, default=10, help="train images per class (0: all)")
    tr.add_argument("--protocol", default="linear", choices=["full", "linear"])
    tr.add_argument("--epochs", type=positive_int, default=None,
                    help="full fine-tuning epochs (default 30; --protocol full only)")
    tr.add_argument("--lr", type=positive_float, default=0.01)
    tr.add_argument("--batch-size", type=positive_int, default=16)
    tr.add_argument("--linear-steps", type=positive_int, default=300)
    tr.add_argument("--eval-eps", type=nonneg_float, default=0.1, help="PGD-20 robust accuracy eps (0: skip)")
    tr.add_argument("--eval-limit", type=nonneg_int, default=200)
    tr.add_argument("--data-root", default=None)
    tr.add_argument("--seed", type=seed_int, default=0)
    add_select_on(tr)
    tr.add_argument("--out", required=True)
    tr.add_argument("--overwrite", action="store_true")
    add_runtime_args(tr)
    tr.set_defaults(func=cmd_transfer)

    ex = sub.add_parser("export", help="channel ticket -> physically smaller model: MACs, params, latency")
    ex.add_argument("--mask", required=True, help="a channel-pattern mask file written by 'tickets draw'")
    ex.add_argument("--batch", type=number(int, 1, 4096), default=64, help="batch size of the latency measurement")
    ex.add_argument("--out", required=True)
    ex.add_argument("--overwrite", action="store_true")
    add_runtime_args(ex)
    ex.set_defaults(func=cmd_export)

    cp = sub.add_parser("compare", help="robust-vs-natural grid over seeds: table of deltas and plots")
    cp.add_argument("--data", default="digits", help="source dataset")
    cp.add_argument("--classes", type=_class_list, default=[0, 1, 2, 3, 4])
    cp.add_argument("--targets", default="digits,digits-inverted,digits-rotated,digits-noisy,digits-blurred")
    cp.add_argument("--target-classes", type=_class_list, default=[5, 6, 7, 8, 9])
    cp.add_argument("--shots", type=nonneg_int, default=10)
    cp.add_argument("--model", default="cnn")
    cp.add_argument("--eps", type=eps_list, default=[0.0, 0.1, 0.2])
    cp.add_argument("--norm", default="linf", choices=["linf", "l2"])
    cp.add_argument("--pretrain-epochs", type=positive_int, default=10)
    cp.add_argument("--schemes", default="omp", help="comma list of omp, imp, aimp, lmp")
    cp.add_argument("--pattern", default="unstructured")
    cp.add_argument("--sparsity", type=sparsity_list, default=[0.0, 0.8, 0.9, 0.95, 0.98])
    cp.add_argument("--protocols", default="linear,full")
    cp.add_argument("--ft-epochs", type=positive_int, default=15)
    cp.add_argument("--imp-epochs", type=positive_int, default=3)
    cp.add_argument("--lmp-epochs", type=positive_int, default=30)
    cp.add_argument("--eval-eps", type=nonneg_float, default=0.1)
    cp.add_argument("--eval-limit", type=nonneg_int, default=100)
    cp.add_argument("--seeds", type=list_of(seed_int, what="seeds"), default=[0, 1, 2])
    add_select_on(cp)
    cp.add_argument("--work", default=None, help="cache folder (default OUT.work); reused when present")
    cp.add_argument("--data-root", default=None)
    cp.add_argument("--out", required=True)
    cp.add_argument("--overwrite", action="store_true")
    add_runtime_args(cp)
    cp.set_defaults(func=cmd_compare)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


# ------------------------------------------------------------------------------------------------------
def cmd_pretrain(args) -> int:
    from reparam.cli.common import load_splits, train_and_report
    from reparam.experiments.tickets.targets import register_targets
    from reparam.models import build_for, build_model
    from reparam.tickets.attacks import PGDConfig, robust_accuracy
    from reparam.tickets.hooks import AdversarialTraining, GaussianNoiseTraining

    setup_runtime(args)
    register_targets()
    if not args.eps or any(e < 0 for e in args.eps):
        raise ReparamError(f"--eps needs values >= 0, got {args.eps}")
    opts = {"classes": args.classes} if args.classes else {}
    splits = load_splits(args, **opts)
    build_model(args.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                image_size=splits.image_size)   # an unknown model fails here, before OUT.partial exists
    eval_eps = args.eval_eps if args.eval_eps is not None else (max(args.eps) or 0.1)
    index = []
    with run_folder(args, resume=False) as work:
        for eps in args.eps:
            model = build_for(args.model, splits, args.seed)
            cfg = PGDConfig(eps=eps, norm=args.norm, steps=args.steps, alpha=args.alpha).check()
            if eps == 0:
                cbs = []
            elif args.noise:
                cbs = [GaussianNoiseTraining(eps, seed=args.seed)]
            else:
                cbs = [AdversarialTraining(cfg, seed=args.seed)]
            sub = argparse.Namespace(**vars(args))
            sub.out, sub.resume, sub.overwrite = str(work / f"eps_{eps:g}"), False, False
            sub._model_spec = dict(model.build_args)   # read by some versions of train_and_report
            ecfg = PGDConfig(eps=eval_eps, norm=args.norm, steps=10, alpha=2.5 * eval_eps / 10)

            def finalize(m, _w, ecfg=ecfg):
                return {"source_robust_acc": robust_accuracy(m, splits.test, ecfg, seed=args.seed),
                        "robust_eval": asdict(ecfg)}

            metrics = train_and_report(sub, method="tickets-pretrain", model=model, splits=splits,
                                       callbacks=cbs, finalize=finalize, shown_out=Path(args.out) / f"eps_{eps:g}",
                                       extra={"eps": eps, "norm": args.norm, "objective": (
                                           "natural" if eps == 0 else "noise" if args.noise else "pgd"),
                                           "pgd": asdict(cfg), "classes": args.classes})
            index.append({"eps": eps, "dir": f"eps_{eps:g}", "test_acc": metrics["test_acc"],
                          "source_robust_acc": metrics["source_robust_acc"]})
        write_json(work / "pretrain.json", {"data": args.data, "classes": args.classes, "seed": args.seed,
                                            "data_root": args.data_root, "models": index})
    print_table("source accuracy per eps", [(f"eps={r['eps']:g} clean / robust",
                                             f"{r['test_acc']:.4f} / {r['source_robust_acc']:.4f}")
                                            for r in index])
    return 0


PRETRAIN_INDEX = {"data": str, "seed": int, "models": list, "classes": (list, type(None)),
                  "data_root": (str, type(None))}


def _pretrained(folder: Path) -> tuple[dict[str, Any], list[tuple[float, Path]]]:
    idx = folder / "pretrain.json"
    if not idx.is_file():
        raise ReparamError(f"{folder} is not a 'tickets pretrain' folder (no pretrain.json)")
    meta = _json_object(idx, "'tickets pretrain' index", PRETRAIN_INDEX)
    models = []
    for m in meta["models"]:
        ok = isinstance(m, dict) and isinstance(m.get("eps"), (int, float)) and not isinstance(m["eps"], bool) \
            and isinstance(m.get("dir"), str) and m["dir"] and "/" not in m["dir"] and m["dir"] not in (".", "..")
        if not ok:
            raise ReparamError(f"{idx}: a 'models' entry is not {{eps: number, dir: folder name}}")
        models.append((float(m["eps"]), folder / m["dir"] / "model.safetensors"))
    if not models:
        raise ReparamError(f"{idx} lists no pretrained model")
    return meta, models


def load_pretrained(path: Path):
    spec = read_header(path).get("model_spec")
    if not isinstance(spec, dict):
        raise ReparamError(f"{path}: the header has no model_spec; give a model written by 'tickets pretrain'")
    try:
        model = build_from_spec(spec)
    except ReparamError as e:
        raise ReparamError(f"{path}: {e}") from None
    load_model_state(path, model)
    return model


def cmd_draw(args) -> int:
    from reparam.data import load_dataset
    from reparam.experiments.tickets.grid import few_shot
    from reparam.experiments.tickets.targets import register_targets
    from reparam.tickets import masks as mk
    from reparam.tickets.draw import IMPConfig, LMPConfig, imp, lmp, omp
    from reparam.tickets.patterns import parse_pattern
    from reparam.train import TrainConfig

    setup_runtime(args)
    register_targets()
    meta, models = _pretrained(Path(args.src))
    pattern = parse_pattern(args.pattern)
    for s in args.sparsity:
        if not 0 <= s < 1:
            raise ReparamError(f"--sparsity values must be in [0, 1), got {s}")
    if args.scheme == "lmp" and not args.target:
        raise ReparamError("--scheme lmp learns masks on a target task: pass --target")
    filt = mk.prunable(first_conv=not args.exclude_first_conv, linear=args.prune_linear)
    # the data a scheme needs is loaded (and refused) before OUT.partial exists
    src = tgt = None
    if args.scheme in ("imp", "aimp"):
        src = load_dataset(_dataset_name(meta["data"], "pretrain.json data"), seed=meta["seed"],
                           root=meta.get("data_root"), **({"classes": meta["classes"]} if meta.get("classes") else {}))
    elif args.scheme == "lmp":
        opts = {"classes": args.target_classes} if args.target_classes else {}
        tgt = load_dataset(_dataset_name(args.target, "--target"), seed=args.seed, **opts)
        tgt = few_shot(tgt, args.shots, args.seed) if args.shots else tgt
    rows = []
    with run_folder(args, resume=False) as work:
        for eps, path in models:
            model = load_pretrained(path)
            base = {"from": str(path.resolve()), "eps": eps, "scheme": args.scheme, "pattern": str(pattern),
                    "scope": args.scope}
            folder = work / f"eps_{eps:g}"
            folder.mkdir()
            if args.scheme == "omp":
                for s in args.sparsity:
                    m = omp(model, s, pattern, args.scope,
                            mk.prunable(first_conv=not args.exclude_first_conv, linear=args.prune_linear))
                    mk.save_masks(folder / f"sp_{s:g}.mask.safetensors", m, {**base, "sparsity_target": s})
                    rows.append((eps, s, mk.sparsity(m)))
            elif args.scheme in ("imp", "aimp"):
                import math

                from reparam.tickets.attacks import PGDConfig
                rounds = max(1, max(round(math.log(1 - s) / math.log(1 - args.rate)) for s in args.sparsity
                                    if s > 0) if any(s > 0 for s in args.sparsity) else 1)
                cfg = IMPConfig(rate=args.rate, rounds=rounds, pattern=pattern, scope=args.scope,
                                train=TrainConfig(epochs=args.round_epochs, batch_size=64, lr=args.round_lr,
                                                  seed=args.seed, progress=False, checkpoint=False),
                                pgd=PGDConfig(eps=args.aimp_eps) if args.scheme == "aimp" else None)
                for rec in imp(model, src, cfg, filt, seed=args.seed):
                    mk.save_masks(folder / f"round_{rec.round}.mask.safetensors", rec.masks,
                                  {**base, "round": rec.round, "sparsity_target": rec.sparsity})
                    rows.append((eps, rec.sparsity, rec.sparsity))
            else:
                for s in args.sparsity:
                    cfg = LMPConfig(sparsity=s, pattern=pattern, train=TrainConfig(
                        epochs=args.lmp_epochs, batch_size=16, optimizer="adam", lr=0.01, weight_decay=0.0,
                        seed=args.seed, progress=False, checkpoint=False))
                    m, _net, res = lmp(model, tgt, cfg, filt, seed=args.seed)
                    mk.save_masks(folder / f"sp_{s:g}.mask.safetensors", m,
                                  {**base, "sparsity_target": s, "target": args.target,
                                   "lmp_test_acc": res.test_acc})
                    rows.append((eps, s, mk.sparsity(m)))
        write_json(work / "draw.json", {"from": str(Path(args.src).resolve()), "scheme": args.scheme,
                                        "pattern": str(pattern), "scope": args.scope, "masks": rows})
    print_table(f"{args.scheme} {pattern} tickets", [(f"eps={e:g} target {t:g}", f"sparsity {s:.4f}")
                                                     for e, t, s in rows])
    return 0


def cmd_transfer(args) -> int:
    from reparam.data import load_dataset
    from reparam.experiments.tickets.evaluation import ood_eval
    from reparam.experiments.tickets.grid import few_shot
    from reparam.experiments.tickets.targets import register_targets
    from reparam.experiments.tickets.transfer import LinearConfig, transfer
    from reparam.tickets import masks as mk
    from reparam.tickets.attacks import PGDConfig, robust_accuracy
    from reparam.train import TrainConfig

    setup_runtime(args)
    register_targets()
    src_dir = Path(args.src)
    if not (src_dir / "draw.json").is_file():
        raise ReparamError(f"{src_dir} is not a 'tickets draw' folder (no draw.json)")
    files = sorted(src_dir.glob("eps_*/*.mask.safetensors"))
    if not files:
        raise ReparamError(f"{src_dir} holds no masks")
    if args.epochs is not None and args.protocol != "full":
        raise ReparamError("--epochs sets full fine-tuning epochs: it applies to --protocol full only; the linear "
                           "protocol trains --linear-steps steps")
    epochs = args.epochs or 30
    _dataset_name(args.target, "--target")
    opts = {"classes": args.target_classes} if args.target_classes else {}
    # every mask, pretrained model, source index and the target task are read (or refused) before
    # OUT.partial exists
    tickets, sources = [], {}
    for f in files:
        masks, h = mk.load_masks(f)
        h = _mask_header(f, h)
        origin = Path(h["from"])
        if origin not in sources:
            model = load_pretrained(origin)
            src_meta = _json_object(origin.parent.parent / "pretrain.json", "'tickets pretrain' index",
                                    PRETRAIN_INDEX)
            sources[origin] = (tuple(model.build_args["image_size"]), src_meta)
        tickets.append((f, masks, h, origin))
    t = load_dataset(args.target, seed=args.seed, root=args.data_root, resize=sources[tickets[0][3]][0], **opts)
    target = few_shot(t, args.shots, args.seed) if args.shots else t
    results = []
    with run_folder(args, resume=False) as work:
        for f, masks, h, origin in tickets:
            model = load_pretrained(origin)
            t0 = time.perf_counter()
            tcfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                               seed=args.seed, progress=False, checkpoint=False)
            net, res = transfer(model, masks, target, args.protocol, train_config=tcfg,
                                linear=LinearConfig(steps=args.linear_steps, seed=args.seed))
            m = {"method": "tickets", "test_acc": res["test_acc"], "val_acc": res["val_acc"],
                 "sparsity": mk.sparsity(masks), "layer_sparsity": mk.layer_sparsity(masks),
                 "eps": h["eps"], "scheme": h["scheme"], "pattern": h["pattern"], "target": args.target,
                 "protocol": args.protocol, "seed": args.seed, "mask": str(f.resolve()),
                 "seconds": time.perf_counter() - t0}
            if args.eval_eps > 0 and args.eval_limit:
                ecfg = PGDConfig(eps=args.eval_eps, steps=20, alpha=2.5 * args.eval_eps / 20)
                m["robust_acc"] = robust_accuracy(net, target.test, ecfg, seed=args.seed, limit=args.eval_limit)
            src_meta = sources[origin][1]
            src = load_dataset(src_meta["data"], seed=src_meta["seed"], root=src_meta.get("data_root"),
                               **({"classes": src_meta["classes"]} if src_meta.get("classes") else {}))
            if src.test.tensors[0].shape[1:] == target.test.tensors[0].shape[1:]:
                m.update({f"ood_{k}": v for k, v in ood_eval(net, target.test.tensors[0],
                                                              src.test.tensors[0]).items()})
            d = work / f.parent.name / f.name.replace(".mask.safetensors", "")
            d.mkdir(parents=True)
            write_json(d / "metrics.json", m)
            results.append(m)
        write_json(work / "transfer.json", results)
    print_table(f"transfer to {args.target} ({args.protocol})",
                [(f"eps={r['eps']:g} sparsity {r['sparsity']:.3f}", r["test_acc"]) for r in results])
    return 0


def cmd_export(args) -> int:
    import torch

    from reparam.core.fileformat import save_model
    from reparam.tickets import masks as mk
    from reparam.tickets.export import export_channel_ticket, size_report

    setup_runtime(args)
    masks, h = mk.load_masks(args.mask)
    h = _mask_header(Path(args.mask), h)
    if not str(h.get("pattern", "")).startswith("channel"):
        raise ReparamError(f"{args.mask} holds a {h.get('pattern')!r} ticket; export needs a channel ticket "
                           "(draw with --pattern channel)")
    model = load_pretrained(Path(h["from"]))
    x = torch.rand(args.batch, model.build_args["in_channels"], *model.build_args["image_size"])
    small = export_channel_ticket(model, masks, x)
    with run_folder(args, resume=False) as work:
        dense, exported = size_report(model, x), size_report(small, x)
        save_model(work / "model.safetensors", small, {"source_mask": str(Path(args.mask).resolve()),
                                                       "note": "re-export from the mask to rebuild"})
        m = {"method": "tickets-export", "mask": str(args.mask), "sparsity": mk.sparsity(masks),
             "dense": dense, "exported": exported, "macs_ratio": exported["macs"] / dense["macs"],
             "params_ratio": exported["params"] / dense["params"],
             "speedup": dense["latency_s"] / exported["latency_s"]}
        write_json(work / "metrics.json", m)
    print_table("channel ticket export", [("MACs dense / exported", f"{dense['macs']:.3g} / {exported['macs']:.3g}"),
                                          ("params dense / exported",
                                           f"{dense['params']:.0f} / {exported['params']:.0f}"),
                                          ("latency speedup", f"{m['speedup']:.2f}x")])
    return 0


def cmd_compare(args) -> int:
    from reparam.experiments.tickets import report
    from reparam.experiments.tickets.grid import SCHEMES, GridConfig, domain_gaps, load_source, run_seed
    from reparam.models.registry import model_options

    setup_runtime(args)
    _dataset_name(args.data, "--data")
    targets = [_dataset_name(t, "--targets") for t in names(args.targets, None, "--targets")]
    model_options(args.model)   # an unknown model fails here
    from reparam.data import load_dataset

    for name, classes in [(args.data, args.classes)] + [(t, args.target_classes) for t in dict.fromkeys(targets)]:
        load_dataset(name, root=args.data_root, classes=classes)   # unknown classes fail before any training
    cfg = GridConfig(source=args.data, source_classes=args.classes, targets=targets,
                     target_classes=args.target_classes, shots=args.shots, model=args.model, eps=args.eps,
                     norm=args.norm, pre_epochs=args.pretrain_epochs, schemes=names(args.schemes, SCHEMES,
                                                                                   "--schemes", "scheme"),
                     pattern=args.pattern, sparsities=args.sparsity,
                     protocols=names(args.protocols, ("linear", "full"), "--protocols", "protocol"),
                     ft_epochs=args.ft_epochs, imp_epochs=args.imp_epochs, lmp_epochs=args.lmp_epochs,
                     eval_eps=args.eval_eps, eval_limit=args.eval_limit, seeds=args.seeds,
                     data_root=args.data_root).check()
    work_cache = Path(args.work) if args.work else Path(str(args.out) + ".work")
    from rich.progress import Progress

    rows: list[dict[str, Any]] = []
    gaps: dict[str, dict[str, float]] = {}
    with run_folder(args, resume=False) as work:
        with Progress(disable=args.no_progress) as prog:
            task = prog.add_task("seeds", total=len(cfg.seeds))
            for seed in cfg.seeds:
                rows += run_seed(cfg, seed, work_cache, progress=lambda msg: prog.console.print(msg))
                if 0.0 in cfg.eps:
                    from reparam.experiments.tickets.grid import Cache, build

                    src = load_source(cfg, seed)
                    nat, _ = Cache(work_cache / f"seed{seed}").model("pre_eps0", lambda: None,
                                                                     lambda src=src: build(cfg, src))
                    g = domain_gaps(cfg, nat, src, seed)
                    for t, v in g.items():
                        gaps.setdefault(t, {"mmd": 0.0, "a_distance": 0.0})
                        for k in v:
                            gaps[t][k] += v[k] / len(cfg.seeds)
                prog.advance(task)
        with open(work / "rows.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        plots = []
        for scheme in cfg.schemes:
            plots += report.plot_accuracy(rows, work, scheme)
        summary = {"config": asdict(cfg), "headline": report.headline(rows), "domain_gaps": gaps,
                   "gain_vs_gap": {f"{e:g}/{p}": report.domain_gain_correlation(rows, e, p, cfg.schemes[0], gaps)
                                   for e in cfg.eps if e > 0 for p in cfg.protocols},
                   "plots": plots}
        write_json(work / "summary.json", summary)
        (work / "deltas.md").write_text(report.delta_markdown(rows))
    print((Path(args.out) / "deltas.md").read_text())
    return 0
