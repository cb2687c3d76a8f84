import json
import re

import pytest

from reparam.cli.main import main
from reparam.reproduce.claims import Claim, MethodReport, MethodSummary
from reparam.reproduce.report import build_html, build_markdown
from reparam.reproduce.runner import METHODS


def _report(verdict="holds"):
    c = Claim(method="m", claim_id="m-1", statement="A | B", paper_value="1", paper_setting="big",
              measured_value="2", measured_setting="small", verdict=verdict, statistic="x > y",
              plots=["p.png"], command="reparam m")
    return MethodReport(MethodSummary("m", "10 numbers", 0.9, 0.95, 1.5, "digits"), [c], seconds=3.0)


META = {"mode": "quick", "seed": 0, "threads": 1, "command": "reparam reproduce", "started": "now",
        "seconds": 60.0, "version": "0", "torch": "2", "machine": "x"}


def test_report_builders_show_summary_claims_and_missing():
    results = {"m": _report("does not hold"), "gone": "not available in this version"}
    md = build_markdown(results, META)
    assert "## Summary" in md and "DOES NOT HOLD" in md and "A \\| B" in md and "![m-1](p.png)" in md
    assert "-5.00 pts" in md and "not available" in md
    html = build_html(results, META)
    assert "<table>" in html and 'src="p.png"' in html and "A | B" in html


def test_resumed_report_states_what_the_reused_methods_cost():
    assert "add up to" not in build_markdown({"m": _report()}, META)   # 3 s of method time in a 60 s run
    slow = _report()
    slow.seconds = 5400.0   # finished by an earlier invocation, reused by --resume
    md, page = build_markdown({"m": slow}, META), build_html({"m": slow}, META)
    assert "took 1.0 minutes" in md and "add up to 90.0 minutes" in md and "add up to 90.0 minutes" in page


@pytest.mark.parametrize("method", [m for m in METHODS])
def test_each_available_method_runs_tiny(tmp_path, capsys, method):
    """A smoke run of each method's reproduce hook on tiny data, so a broken method fails CI."""
    out = tmp_path / "rep"
    rc = main(["reproduce", "--tiny", "--methods", method, "--out", str(out), "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    if method in results["missing"]:
        pytest.skip(f"{method} has not landed")
    claims = [c for c in results["claims"] if c["method"] in (method, results["summary"][0]["method"])]
    assert claims, "a method must report at least one claim"
    for c in claims:
        assert c["verdict"] in ("holds", "does not hold", "inconclusive")
        assert c["measured_value"] and c["statistic"]
        for p in c["plots"]:
            assert (out / p).exists(), p
    assert (out / "report.md").exists() and (out / "report.html").exists()


def test_unknown_method_is_refused(tmp_path, capsys):
    assert main(["reproduce", "--methods", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def _fashion_mnist_installed() -> bool:
    from reparam.core.errors import ReparamError
    from reparam.data.fashion_mnist import find_fashion_mnist

    try:
        find_fashion_mnist()
    except ReparamError:
        return False
    return True


@pytest.mark.parametrize("method", [m for m in METHODS])
def test_each_method_runs_tiny_full_mode(tmp_path, capsys, method):
    """The --full code path (Fashion-MNIST subsets, larger settings) on tiny data: every setting text and
    command names the data actually used."""
    if not _fashion_mnist_installed():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    out = tmp_path / "rep"
    rc = main(["reproduce", "--tiny", "--full", "--methods", method, "--out", str(out), "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    if method in results["missing"]:
        pytest.skip(f"{method} has not landed")
    assert results["meta"]["mode"] == "tiny (smoke test)"
    claims = results["claims"]
    assert claims
    summary = results["summary"][0]
    for c in claims:
        assert c["verdict"] in ("holds", "does not hold", "inconclusive")
        for p in c["plots"]:
            assert (out / p).exists(), p
    texts = [summary["setting"]] + [c["measured_setting"] for c in claims] + [c["command"] for c in claims]
    for t in texts:   # "digits28" is a ticket target's name, not the quick-mode data
        assert not re.search(r"digits(?!28)", t), t
    if method not in ("image-codec",):   # the image codec has no classification data
        assert any("Fashion-MNIST" in t or "fashion-mnist" in t for t in texts)


def test_full_mode_resume_reuses_finished_methods(tmp_path, capsys, monkeypatch):
    if not _fashion_mnist_installed():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    from reparam.reproduce import dense

    out = tmp_path / "rep"
    assert main(["reproduce", "--tiny", "--full", "--methods", "dense", "--out", str(out), "--no-progress"]) == 0
    first = json.loads((out / "results.json").read_text())["claims"]
    assert (out / "cache" / "dense.json").exists()

    def fail(ctx):
        raise AssertionError("a finished method must come from the cache")

    monkeypatch.setattr(dense, "run", fail)
    assert main(["reproduce", "--tiny", "--full", "--methods", "dense", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["claims"] == first


def test_mixturegrowth_resumes_job_by_job(tmp_path, monkeypatch):
    """Every MixtureGrowth job's result is cached (not only network 1): a second run in the same work folder
    trains nothing and reports the same claims, so a --full run killed mid-seed loses at most one job."""
    from dataclasses import asdict

    from reparam.experiments.mixturegrowth import pipeline
    from reparam.reproduce import mixturegrowth
    from reparam.reproduce.claims import ReproduceContext

    def ctx(out):
        return ReproduceContext(out_dir=tmp_path / out, quick=True, seed=0, threads=1, work_dir=tmp_path / "cache",
                                tiny=True)

    first = mixturegrowth.run(ctx("a"))
    assert len(list((tmp_path / "cache" / "mixturegrowth-cache").glob("run-*.json"))) == 6   # one per method

    def no_training(*a, **k):
        raise AssertionError("a cached job was trained again")

    monkeypatch.setattr(pipeline, "run_method", no_training)
    monkeypatch.setattr(pipeline, "train_net1", lambda *a, **k: (None, {}))
    second = mixturegrowth.run(ctx("b"))
    strip = ("details",)   # details hold wall-clock seconds
    assert [{k: v for k, v in asdict(c).items() if k not in strip} for c in first.claims] == \
        [{k: v for k, v in asdict(c).items() if k not in strip} for c in second.claims]


def test_trp_resumes_job_by_job(tmp_path, monkeypatch):
    """TRP's --full jobs (base model, each scheme's training + measurement, post-hoc, sweep) are cached in the
    work folder: a second run trains and measures nothing and reports the same claims, numbers included."""
    from dataclasses import asdict

    from reparam.experiments.trp import report
    from reparam.reproduce import trp as trp_reproduce
    from reparam.reproduce.claims import ReproduceContext

    def ctx(out):
        return ReproduceContext(out_dir=tmp_path / out, quick=True, seed=0, threads=1, work_dir=tmp_path / "cache",
                                tiny=True)

    first = trp_reproduce.run(ctx("a"))
    # the cached path computes what an uncached run does (timing claims aside)
    plain = trp_reproduce.run(ReproduceContext(out_dir=tmp_path / "p", quick=True, seed=0, threads=1, tiny=True))
    exact = ("trp-no-finetune", "trp-beats-posthoc-tsvd", "trp-spatial-faster-than-channel")
    assert [c.measured_value for c in first.claims if c.claim_id in exact] == \
        [c.measured_value for c in plain.claims if c.claim_id in exact]
    jobs = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache" / "trp-jobs").iterdir())
    assert jobs == ["base", "posthoc-channel", "posthoc-spatial", "sweep-channel", "sweep-spatial", "trp-channel",
                    "trp-spatial"], jobs   # base, 2 x (trp, post-hoc, sweep)

    def no_work(*a, **k):
        raise AssertionError("a cached job ran again")

    monkeypatch.setattr(trp_reproduce, "_fit", no_work)
    monkeypatch.setattr(report, "decompose_and_measure", no_work)
    monkeypatch.setattr(report, "energy_for_speedup", no_work)
    second = trp_reproduce.run(ctx("b"))
    assert [asdict(c) for c in first.claims] == [asdict(c) for c in second.claims]
    assert asdict(first.summary) == asdict(second.summary)


def test_adapters_resume_job_by_job(tmp_path, monkeypatch):
    """The adapters section caches its base model and each adapter's result: a second run in the same work folder
    trains nothing and reports the same claims (the NOLA file checks included)."""
    from dataclasses import asdict

    from reparam.experiments.adapters import runs
    from reparam.reproduce import adapters
    from reparam.reproduce.claims import ReproduceContext

    def ctx(out):
        return ReproduceContext(out_dir=tmp_path / out, quick=True, seed=0, threads=1, work_dir=tmp_path / "cache",
                                tiny=True)

    first = adapters.run(ctx("a"))
    jobs = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache" / "adapters-jobs").iterdir())
    assert jobs == ["adapt-linear", "adapt-nola", "base"], jobs

    def no_work(*a, **k):
        raise AssertionError("a cached job ran again")

    monkeypatch.setattr(runs, "adapt", no_work)
    monkeypatch.setattr(adapters, "_pretrain", no_work)
    second = adapters.run(ctx("b"))
    assert [asdict(c) for c in first.claims] == [asdict(c) for c in second.claims]
