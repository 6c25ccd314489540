"""Every benchmark script runs in its smoke mode (CI set), so none of them can rot."""

import glob
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# gpu_check.py is the driver of benchmarks/gpu_check.sh, whose CPU dry run tests/test_gpu_check.py runs
SCRIPTS = sorted(p for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
                 if os.path.basename(p) != "gpu_check.py")


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the smallest arguments that still exercise every code path of each script
SMOKE_ARGS = {
    "speed.py": ["--batch-sizes", "64", "--limit", "128"],
    "quality.py": ["--dataset", "digits", "--epochs", "1", "--limit", "120", "--test-limit", "60", "--seeds", "0", "1",
                   "--configs", "pyro_vae default", "vamp", "iwae5", "iaf", "default + cosine + early stopping",
                   "hvae iwae5", "hvae ladder iwae5", "best (--preset best)"],
    "small_data_run.py": ["smoke", "2", "0", "model=h", "inf=ladder", "iw=2", "shift=1", "es=5", "vamp=10"],
    "loglik.py": [],
    "m2_accuracy.py": [],
    "eval_cost.py": [],
    "overhead.py": ["--limit", "64"],
    "diagnostics.py": [],
}


def test_every_benchmark_is_covered():
    assert {os.path.basename(p) for p in SCRIPTS} <= set(SMOKE_ARGS), \
        "a new benchmark script needs an entry in SMOKE_ARGS"


@pytest.mark.parametrize("name", sorted(SMOKE_ARGS))
def test_benchmark_smoke(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CI", "1")
    out = tmp_path / "result.json"
    _load(os.path.join(ROOT, "benchmarks", name)).main(SMOKE_ARGS[name] + ["--json", str(out)])
    result = json.loads(out.read_text())
    assert result["smoke"] is True
    printed = capsys.readouterr().out
    assert "wrote" in printed
    if name == "speed.py":
        methods = {row["method"] for row in result["rows"]}
        assert {"hand-written PyTorch", "pyro_vae.fit default", "pyro_vae.fit Trace_ELBO"} <= methods
        assert all(row["epoch_seconds"] > 0 and row["ratio_to_hand_written"] > 0 and row["paired_ratio"] > 0
                   for row in result["rows"])
        fit_rows = [row for row in result["rows"] if row["method"].startswith("pyro_vae.fit")]
        assert fit_rows and all(row["first_epoch_of_fit_seconds"] > 0 for row in fit_rows)
        assert result["peak_gflops"] > 0
        assert (tmp_path / "result.png").stat().st_size > 0   # the chart of the ratios
    elif name == "quality.py":
        configs = {row["config"] for row in result["rows"]}
        assert any(c.startswith("peer") for c in configs) and "pyro_vae default" in configs
        assert all(row["log_px"] < 0 and row["log_px"] >= row["test_elbo"] - 2.0 for row in result["rows"])
        assert result["test_size"] == 60 and set(result["summary"]) == configs
        assert all(s["seeds"] == 2 and s["log_px_sd"] >= 0 for s in result["summary"].values())
        assert "mean +- sd over seeds" in printed
        best = [row for row in result["rows"] if row["config"] == "best (--preset best)"]
        assert len(best) == 2 and all(row["best_epoch"] == 1 and row["active_units"] >= 0 for row in best)
        scheduled = [row for row in result["rows"] if row["config"] == "default + cosine + early stopping"]
        assert len(scheduled) == 2 and all(row["epochs_trained"] == 1 and row["best_epoch"] == 1
                                           and row["last_lr"] == 1e-3 for row in scheduled)
        # early stopping watched 12 of the 120 training images held out, never the 60 test images
        assert result["validation_size"] == 12 and result["train_size"] == 108
        assert all(isinstance(row["best_epoch_validation_elbo"], float) for row in scheduled)
    elif name == "small_data_run.py":   # one row: the ladder model, its KL per layer
        assert set(result["kl"]) == set(result["used"]) == {"z1", "z2"}
        assert result["log_px"] >= result["test_elbo"] - 2.0 and result["epochs"] <= 2
    elif name == "diagnostics.py":
        rows = {row["config"]: row for row in result["rows"]}
        assert set(rows) == {"default", "iwae5-dreg"} and "--gradient" in rows["iwae5-dreg"]["command"]
        assert all(row["log_px"] >= row["test_elbo"] - 2.0 and row["fd"] > 0 and 0 <= row["precision"] <= 1
                   and row["amortization_gap"] == row["gap_elbo_refined"] - row["gap_elbo_encoder"]
                   for row in rows.values())
        assert "floor (training vs test images)" in printed
    elif name == "overhead.py":
        methods = {row["method"] for row in result["rows"]}
        assert {"hand-written PyTorch", "pyro_vae.fit default", "pyro_vae.fit Trace_ELBO", "pyro_vae.fit JitTrace_ELBO",
                "Pyro SVI.step Trace_ELBO", "fast eager (sync-free Trace_ELBO)", "fast replay"} <= methods
        assert not any("compile" in m for m in methods)   # smoke mode compiles nothing
        assert all(row["us_per_step"] > 0 and row["ratio_to_hand_written"] > 0 and row["paired_ratio"] > 0
                   and row["first_epoch_seconds"] > 0 for row in result["rows"])
        assert result["steps_per_epoch"] == 2 and result["threads"] == 1
    elif name == "eval_cost.py":
        rows = {row["prior"]: row for row in result["rows"]}
        assert {"N(0, I)", "VampPrior(500)", "MixtureOfGaussians(10)"} <= set(rows)
        assert rows["N(0, I)"]["ratio_to_default"] == 1.0
        assert all(row["seconds"] > 0 and row["ratio_to_default"] > 0 for row in result["rows"])
        generic = [row for row in result["rows"] if row["scoring"] == "MixtureSameFamily"]
        assert len(generic) == 2 and all(abs(row["log_px_minus_package"]) < 1e-3 for row in generic)
        assert result["num_samples"] == 10 and result["num_images"] == 30
    elif name == "m2_accuracy.py":
        assert result["results"] and all(0.0 <= r["test_accuracy"] <= 1.0 for r in result["results"])
    else:
        assert result["log_px"] >= result["elbo"] - 2.0 and result["seconds"] > 0
