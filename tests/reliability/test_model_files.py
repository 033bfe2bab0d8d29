"""Model files from someone else: never run code, reject anything not exactly right.

A model file is an ``.npz`` (a ZIP of ``.npy`` members) read with ``allow_pickle=False``.
These tests take a good file, damage or tamper with it in one way each, and require a
``ValueError`` that names the file (or ``FileNotFoundError`` etc. for paths), never a
partly built model, a crash, or code execution. The last test kills a writer process
with SIGKILL in the middle of saving and checks the previous file survives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbanet as nbn

NOT_A_MODEL = r"not a readable numbanet model file|newer than this numbanet|cannot be built"


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, model_factory, data_factory):
    """A trained, compiled model (Adam state included) saved once for the module."""
    model = model_factory(optimizer="adam", lr=0.01)
    X, y = data_factory()
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path_factory.mktemp("files") / "good.npz"
    model.save(path)
    return path, model


def _members(path):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(str(arrays["meta"][()]))
    return arrays, meta


def _write(path, arrays, meta=None):
    arrays = dict(arrays)
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def test_good_file_round_trips(good_file, data_factory):
    path, model = good_file
    loaded = nbn.load(path)
    np.testing.assert_array_equal(loaded.flat_parameters, model.flat_parameters)
    X, _ = data_factory()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_rejected(good_file, tmp_path, fraction):
    data = good_file[0].read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match=NOT_A_MODEL) as info:
        nbn.load(cut)
    assert "cut.npz" in str(info.value)


@pytest.mark.parametrize("where", [0.05, 0.3, 0.6, 0.95])
def test_flipped_bytes_are_rejected(good_file, tmp_path, where):
    data = bytearray(good_file[0].read_bytes())
    pos = int(len(data) * where)
    for i in range(pos, pos + 8):
        data[i] ^= 0x5A
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        nbn.load(bad)


class _Exploit:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("member", ["param/0.weight", "meta", "format", "slot/exp_avg/0.bias",
                                    "extra"])
def test_pickled_member_is_refused_and_never_executed(good_file, tmp_path, member):
    arrays, _ = _members(good_file[0])
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit(marker)
    arrays[member] = payload
    bad = _write(tmp_path / "pickle.npz", arrays)
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        nbn.load(bad)
    assert not marker.exists()


def test_pickle_file_renamed_to_npz_is_refused_and_never_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    bad = tmp_path / "model.npz"
    bad.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        nbn.load(bad)
    assert not marker.exists()


def _tamper(kind, arrays, meta):
    """Apply one tampering; returns (arrays, meta, expected-message pattern)."""
    if kind == "newer-version":
        arrays["format_version"] = np.array(99)
        return arrays, meta, "newer than this numbanet"
    if kind == "version-not-a-number":
        arrays["format_version"] = np.array("one")
        return arrays, meta, NOT_A_MODEL
    if kind == "no-marker":
        del arrays["format"]
        return arrays, meta, "marker"
    if kind == "foreign-marker":
        arrays["format"] = np.array("keras-model")
        return arrays, meta, "marker"
    if kind == "meta-not-json":
        arrays["meta"] = np.array("{not json")
        return arrays, None, NOT_A_MODEL
    if kind == "meta-is-a-list":
        arrays["meta"] = np.array("[1, 2, 3]")
        return arrays, None, NOT_A_MODEL
    if kind == "meta-missing":
        del arrays["meta"]
        return arrays, None, NOT_A_MODEL
    if kind == "meta-config-missing":
        del meta["config"]
        return arrays, meta, NOT_A_MODEL
    if kind == "unknown-layer":
        meta["config"]["layers"][0]["type"] = "os.system"
        return arrays, meta, NOT_A_MODEL
    if kind == "config-huge-layer":
        # A 10^6 x 10^6 layer would try to allocate 8 TB before looking at the weights.
        meta["config"]["layers"][0]["out_features"] = 10**6
        meta["config"]["layers"][0]["in_features"] = 10**6
        return arrays, meta, NOT_A_MODEL
    if kind == "config-negative-size":
        meta["config"]["layers"][0]["out_features"] = -8
        return arrays, meta, NOT_A_MODEL
    if kind == "param-missing":
        del arrays["param/0.weight"]
        return arrays, meta, NOT_A_MODEL
    if kind == "param-wrong-shape":
        arrays["param/0.weight"] = arrays["param/0.weight"][:, :-1]
        return arrays, meta, NOT_A_MODEL
    if kind == "param-wrong-dtype":
        arrays["param/0.weight"] = arrays["param/0.weight"].astype(np.float32)
        return arrays, meta, NOT_A_MODEL
    if kind == "param-int":
        arrays["param/0.bias"] = arrays["param/0.bias"].astype(np.int64)
        return arrays, meta, NOT_A_MODEL
    if kind == "param-list-lies":
        meta["parameters"][0][1] = [5, 5]
        return arrays, meta, NOT_A_MODEL
    if kind == "slot-wrong-shape":
        arrays["slot/exp_avg/0.bias"] = np.zeros(3)
        return arrays, meta, NOT_A_MODEL
    if kind == "slot-missing":
        del arrays["slot/exp_avg_sq/1.weight"]
        return arrays, meta, NOT_A_MODEL
    if kind == "rng-garbage":
        meta["rng"] = {"bit_generator": "PCG64", "state": "nope"}
        return arrays, meta, NOT_A_MODEL
    if kind == "rng-not-a-dict":
        meta["rng"] = [1, 2]
        return arrays, meta, NOT_A_MODEL
    if kind == "unknown-optimizer":
        meta["optimizer"]["id"] = "evil-plugin:adam"
        return arrays, meta, "cannot be built"
    if kind == "optimizer-bad-hyperparameter":
        meta["optimizer"]["hyperparams"]["lr"] = -1.0
        return arrays, meta, "cannot be built"
    if kind == "optimizer-step-count-negative":
        meta["optimizer"]["step_count"] = -5
        return arrays, meta, NOT_A_MODEL
    if kind == "loss-unknown-hyperparameter":
        meta["loss"]["hyperparams"]["__class__"] = "x"
        return arrays, meta, "cannot be built"
    if kind == "metric-unknown":
        meta["metrics"] = [{"name": "x", "builtin": "__import__", "kwargs": {}}]
        return arrays, meta, NOT_A_MODEL
    if kind == "epochs-not-int":
        meta["epochs_completed"] = "many"
        return arrays, meta, NOT_A_MODEL
    if kind == "extra-member":
        arrays["payload"] = np.zeros(3)
        return arrays, meta, "unexpected member"
    if kind == "header-claims-huge-array":
        return arrays, meta, "claims shape"
    if kind == "dtype-not-float":
        meta["config"]["dtype"] = "int64"
        return arrays, meta, NOT_A_MODEL
    raise AssertionError(kind)


TAMPERINGS = ["newer-version", "version-not-a-number", "no-marker", "foreign-marker",
              "meta-not-json", "meta-is-a-list", "meta-missing", "meta-config-missing",
              "unknown-layer", "config-huge-layer", "config-negative-size", "param-missing",
              "param-wrong-shape", "param-wrong-dtype", "param-int", "param-list-lies",
              "slot-wrong-shape", "slot-missing", "rng-garbage", "rng-not-a-dict",
              "unknown-optimizer", "optimizer-bad-hyperparameter",
              "optimizer-step-count-negative", "loss-unknown-hyperparameter",
              "metric-unknown", "epochs-not-int", "extra-member", "dtype-not-float"]


@pytest.mark.parametrize("kind", TAMPERINGS)
def test_tampered_file_is_rejected_with_a_clear_error(good_file, tmp_path, kind):
    arrays, meta = _members(good_file[0])
    arrays, meta, pattern = _tamper(kind, arrays, meta)
    bad = _write(tmp_path / f"{kind}.npz", arrays, meta)
    with pytest.raises(ValueError, match=pattern) as info:
        nbn.load(bad)
    assert f"{kind}.npz" in str(info.value)


def test_header_claiming_more_data_than_the_file_holds_is_refused_before_allocating(
        good_file, tmp_path):
    """A .npy header is just text: one claiming a (10^6, 10^6) array in a few bytes must
    be refused from the header, not by numpy trying to allocate 8 TB."""
    # Rewrite one member's header with zipfile, which computes a valid CRC as an attacker
    # would; the shape grows into the header's space padding, keeping its length.
    old = b"'shape': (4, 8), }" + b" " * 12
    new = b"'shape': (99999999, 9), }".ljust(len(old))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good_file[0]) as src, zipfile.ZipFile(bomb, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "param/0.weight.npy":
                assert data.count(old) == 1
                data = data.replace(old, new)
            dst.writestr(name, data)
    with pytest.raises(ValueError, match="claims shape"):
        nbn.load(bomb)


def test_nan_weights_load_with_a_warning(good_file, tmp_path):
    """save(allow_nonfinite=True) writes diverged weights on purpose; load says so."""
    arrays, meta = _members(good_file[0])
    arrays["param/1.bias"] = arrays["param/1.bias"] * np.nan
    path = _write(tmp_path / "nan.npz", arrays, meta)
    with pytest.warns(RuntimeWarning, match="NaN or infinity"):
        nbn.load(path)


@pytest.mark.skipif(not os.path.exists("/dev/zero") or not hasattr(os, "mkfifo"),
                    reason="needs /dev/zero and FIFOs")
def test_devices_and_fifos_are_refused_without_reading(tmp_path):
    """/dev/zero streams forever and a FIFO blocks until a writer appears: both used to
    hang load(); only regular files are opened."""
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        with pytest.raises(ValueError, match="not a regular file"):
            nbn.load(path)


def test_a_npy_file_and_an_empty_zip_are_rejected(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    empty = tmp_path / "empty.npz"
    with zipfile.ZipFile(empty, "w"):
        pass
    for path in (npy, empty):
        with pytest.raises(ValueError, match=NOT_A_MODEL):
            nbn.load(path)


# ------------------------------------------------------------------ kill the writer

WRITER = textwrap.dedent('''
    import sys
    import numbanet as nbn
    path = sys.argv[1]
    model = nbn.Sequential([nbn.Dense(1200, 1200), nbn.Dense(1200, 10)], seed=0)
    k = 0
    while True:
        k += 1
        model.flat_parameters[:] = k
        nbn.save(model, path, metadata={"k": k})
        print(k, flush=True)
''')


def test_killing_the_writer_mid_save_leaves_the_previous_file_intact(tmp_path):
    """SIGKILL a process that saves a ~6 MB model in a loop, at a random moment.

    Whatever instant the kill lands on, ``path`` must load and hold exactly one complete
    save: the last one the writer reported, or the one whose rename finished just before
    the kill and before its report.
    """
    rng = random.Random(8)
    path = tmp_path / "model.npz"
    for _round in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        try:
            first = int(proc.stdout.readline())  # at least one complete save exists
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reported = [first, *(int(line) for line in proc.stdout.read().split())]
        proc.stdout.close()
        last = reported[-1]
        model = nbn.load(path)
        k = model.metadata["k"]
        assert k in (last, last + 1)
        assert all((p.value == k).all() for p in model.parameters())
    # A killed writer can leave its hidden temporary file behind, never a partial model.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.npz"]
    assert all(name.startswith(".model.npz.") and name.endswith(".tmp") for name in leftovers)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_randomly_damaged_file_loads_intact_or_raises_valueerror(good_file, tmp_path, edits,
                                                                 cut):
    """Random byte edits and truncations: either the damage missed everything that
    matters (a zip timestamp, header padding) and the model is the original, or load
    raises the ValueError naming the file. Nothing else, and never a half-built model."""
    path, model = good_file
    data = bytearray(path.read_bytes())
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(bytes(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = nbn.load(bad)
    except ValueError as exc:
        assert "damaged.npz" in str(exc)
        return
    np.testing.assert_array_equal(loaded.flat_parameters, model.flat_parameters)
    assert loaded.optimizer.step_count == model.optimizer.step_count
