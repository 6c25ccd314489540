"""Property test over corrupted run folders: whatever is done to a run folder's files, loading it, reading its
metrics, and ``pyro-vae evaluate`` / ``sample`` / ``train --resume`` on it end in success or in one of
pyro_vae's own errors (for the CLI: exit status 2 and no traceback), within bounded memory."""

import contextlib
import io
import json
import os
import resource
import shutil
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_vae as pv
from pyro_vae import checkpoint, cli

FLAGS = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--eval-samples", "5",
         "--no-progress"]
FILES = ("config.json", "checkpoint.pt", "metrics.json")
MAX_RSS_KIB = 2 * 2 ** 20   # 2 GiB, as ru_maxrss counts on Linux


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["train", *FLAGS, "--out", str(folder)]) == 0
    return folder


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.integers(-2 ** 70, 2 ** 70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=8)
_TENSORS = st.builds(lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
                     st.lists(st.integers(0, 4), max_size=3).map(tuple),
                     st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]),
                     st.sampled_from([0.0, 1.0, -3.0, float("nan"), float("inf")]))
_VALUES = st.one_of(_JSON, _TENSORS, st.lists(_TENSORS, max_size=2),
                    st.dictionaries(st.sampled_from(["torch", "shuffle", "state", "param_groups", "epoch"]),
                                    st.one_of(_TENSORS, _JSON), max_size=3))
_KINDS = ["truncate", "flip", "json", "bytes", "delete", "entry", "entry", "entry", "json entry", "json entry"]


def _variants(value):
    """Replacements for ``value`` that resemble it: a wrong dtype, size or type, one element less or more."""
    if isinstance(value, torch.Tensor):
        flat = value.reshape(-1)
        return [flat[:1], flat[:0], value.float(), value.long(), value.to(torch.uint8), value.double(), flat,
                value.unsqueeze(0), torch.full_like(value.float(), float("nan")), value.tolist()]
    if isinstance(value, list):
        return [value[:-1], value + value[-1:], [], value[::-1], tuple(value), {"0": value}]
    if isinstance(value, dict):
        return [dict(list(value.items())[1:]), {}, list(value.values()), {**value, "extra": 1}]
    if isinstance(value, bool):
        return [not value, int(value), str(value)]
    if isinstance(value, (int, float)):
        return [-value, value + 1, float(value), str(value), None, [value], 10 ** 30, float("nan")]
    return [None, 0, "", [value]]


def _walk(data, node):
    """A path into a nested dict/list, drawn one level at a time (stopping anywhere, the root included)."""
    path = []
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3)) > 0:
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    return path, node


def _replace(data, root, json_only=False):
    path, node = _walk(data, root)
    value = data.draw(st.one_of(st.sampled_from([v for v in _variants(node)
                                                 if not json_only or not isinstance(v, (torch.Tensor, tuple))]),
                                _JSON if json_only else _VALUES))
    if not path:
        return value
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return root


def _corrupt(data, folder):
    kind = data.draw(st.sampled_from(_KINDS))
    name = data.draw(st.sampled_from(["config.json", "metrics.json"] if kind in ("json", "json entry") else FILES))
    path = os.path.join(folder, "checkpoint.pt" if kind == "entry" else name)
    if not os.path.exists(path):
        return
    if kind == "truncate":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[:int(len(raw) * data.draw(st.floats(0, 1)))])
    elif kind == "flip":
        raw = bytearray(open(path, "rb").read())
        for _ in range(data.draw(st.integers(1, 6))):
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        open(path, "wb").write(bytes(raw))
    elif kind == "json":
        open(path, "w").write(json.dumps(data.draw(_JSON)))
    elif kind == "bytes":
        open(path, "wb").write(data.draw(st.binary(max_size=64)))
    elif kind == "delete":
        os.remove(path)
    elif kind == "json entry":
        try:
            value = json.load(open(path))
        except ValueError:
            return
        open(path, "w").write(json.dumps(_replace(data, value, json_only=True)))
    else:   # a checkpoint entry, loaded and saved back as an attacker (or a bad script) would
        try:
            state = torch.load(path, weights_only=True)
        except Exception:   # an earlier corruption broke the file: nothing to edit
            return
        torch.save(_replace(data, state), path)


def _cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in args])
    text = err.getvalue()
    assert "Traceback" not in text, text[-3000:]
    assert code in (0, 2), (code, text[-3000:])
    if code == 2:
        assert text.strip().splitlines()[-1].startswith("pyro-vae: error:"), text[-3000:]
    return code


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.data())
def test_corrupted_run_folders_give_only_our_errors(base_run, data):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        # the pictures a finished resume draws read nothing from the folder: skipped for speed
        patch.setattr(pv.plots, "save_all", lambda *args, **kwargs: {})
        folder = os.path.join(tmp, "run")
        os.mkdir(folder)
        for name in FILES:
            shutil.copy(os.path.join(base_run, name), folder)
        for _ in range(data.draw(st.integers(1, 3))):
            _corrupt(data, folder)
        try:
            pv.load_run(folder)
        except pv.PyroVAEError as e:
            assert "\n" not in str(e)
        try:
            checkpoint.RunFolder(folder).read_metrics()
        except pv.CheckpointError as e:
            assert "\n" not in str(e)
        _cli("evaluate", folder, "--num-samples", "2", "--no-progress")
        _cli("sample", folder, "--num", "2", "--out", os.path.join(tmp, "x.png"))
        _cli("train", *FLAGS, "--resume", "--out", folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < MAX_RSS_KIB
