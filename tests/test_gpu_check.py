"""The GPU check script's CPU dry run (``bash benchmarks/gpu_check.sh --device cpu --smoke``), so that the one
script meant to run unedited on a GPU cannot rot. (This file's name and its tests' names must not contain the
word the script selects its tests by, or the script would run itself.)"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
STAGES = ("speed", "nosync", "loglik", "launch", "compile", "cuda-tests")


def _load_driver():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_dry_run_on_the_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FASHION_MNIST_DIR", "PYTEST_ADDOPTS")}
    env["OUT"] = str(tmp_path)   # nothing is written into the repository
    # the script's own python3 must be the one running this suite (a virtual environment, say)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    done = subprocess.run(["bash", SCRIPT, "--device", "cpu", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]

    # the printed table: one line per stage and method, then the verdict
    assert "stage    method" in out and "RESULT: every stage ran" in out
    for method in ("hand-written PyTorch", "fit, Trace_ELBO (default)", "fit, JitTrace_ELBO",
                   "fit(compile=True): sync-free replay", 'fit(compile="eager")', "log p(x) = ", "pytest -m cuda: OK"):
        assert method in out, method

    # the JSON, in $OUT, with every stage: numbers > 0 or a note saying why a stage was skipped
    result = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert (tmp_path / "gpu-check-cpu.log").stat().st_size > 0
    assert result["complete"] and result["smoke"] and result["device"] == "cpu"
    assert result["data"]["name"] in ("fashion-mnist", "digits") and result["data_used"]
    assert set(STAGES) <= set(result["stages"])
    stages = result["stages"]
    for name in ("speed", "launch", "compile"):
        rows = stages[name]["rows"]
        assert stages[name]["status"] == "ok" and rows[0]["method"] == "hand-written PyTorch"
        assert all(r["epoch_seconds"] > 0 and r["paired_ratio"] > 0 and r["images_per_second"] > 0 for r in rows)
        if name != "launch":   # overhead.py's fit epochs keep no first epoch
            assert all(r["first_epoch_of_fit_seconds"] > 0 for r in rows if r["method"].startswith("fit"))
    assert len(stages["speed"]["rows"]) == 4 and stages["speed"]["batch_size"] == 128
    assert stages["nosync"]["status"] == "skipped" and "no CUDA" in stages["nosync"]["note"]
    assert stages["nosync"]["steps_checked"] > 0   # the hook ran, without the debug mode
    assert "stands in" in " ".join(stages["compile"]["notes"])
    loglik = stages["loglik"]
    assert loglik["status"] == "ok" and loglik["seconds"] > 0 and loglik["num_samples"] == 10
    assert loglik["elbo"] - 2.0 <= loglik["log_px"] < 0
    tests = stages["cuda-tests"]
    assert tests["status"] == "ok" and tests["rc"] == 0 and "skipped" in tests["summary"]
    # nothing of the check left behind in the repository
    assert not any(name.startswith("gpu-check-") for name in os.listdir(os.path.join(ROOT, "benchmarks", "results")))


def test_gpu_check_report_of_a_stopped_run(tmp_path, capsys):
    # a run killed during a stage: the table still prints what finished, names the stage and fails
    driver = _load_driver()
    path = tmp_path / "gpu-check-cuda.json"
    path.write_text(json.dumps({"smoke": False, "complete": False, "stages": {
        "speed": {"status": "ok", "seconds": 50.0, "notes": [], "rows": [
            {"stage": "speed", "method": "hand-written PyTorch", "epoch_seconds": 0.5, "paired_ratio": 1.0,
             "ratio_to_hand_written": 1.0, "images_per_second": 120000.0, "us_per_step": 1000.0, "rounds": 5,
             "batch_size": 128, "networks": "784-400-50 softplus MLPs", "first_epoch_of_fit_seconds": None}]},
        "nosync": {"status": "running"}}}))
    log = tmp_path / "pytest.log"
    log.write_text("....\n4 passed, 657 deselected in 30.00s\n")
    status = driver.main(["--report", str(path), "--pytest-rc", "0", "--pytest-log", str(log)])
    printed = capsys.readouterr().out
    assert status == 1
    assert "DID NOT FINISH" in printed and "FAILED: nosync" in printed and "4 passed" in printed
    saved = json.loads(path.read_text())
    assert saved["stages"]["cuda-tests"] == {**saved["stages"]["cuda-tests"], "status": "ok", "rc": 0}


def test_gpu_check_finds_its_data(tmp_path, monkeypatch):
    from pyro_vae.data import IDX_FILES   # the driver finds them as pv.data.load does

    driver = _load_driver()
    for stem in IDX_FILES:
        (tmp_path / (stem + ".gz")).write_bytes(b"")
    assert driver.find_data(str(tmp_path), smoke=False) == (str(tmp_path), "--data")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert driver.find_data(None, smoke=False) == (str(tmp_path), "$FASHION_MNIST_DIR")
    with pytest.raises(FileNotFoundError, match="four Fashion-MNIST IDX files"):
        driver.find_data(str(tmp_path / "missing"), smoke=True)
    monkeypatch.setattr(driver, "DATA_DIRS", ())
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "missing"))
    assert driver.find_data(None, smoke=True)[0] == "digits"
    with pytest.raises(FileNotFoundError, match="--data DIR"):
        driver.find_data(None, smoke=False)
