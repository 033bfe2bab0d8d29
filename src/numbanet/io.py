"""Saving and loading models: one ``.npz`` file, no pickle.

``save(model, path)`` writes everything needed to continue training bit for bit:

========================  ==============================================================
key                       content
========================  ==============================================================
``format``                the string ``"numbanet-model"`` (foreign files are rejected)
``format_version``        int; :data:`FORMAT_VERSION` when written
``meta``                  one JSON string: architecture (``model.get_config()``), loss
                          and optimizer qualified ids and hyperparameters, the
                          optimizer's step count, metric names, epochs completed, the
                          state of the model's random generator, the parameter and slot
                          names with their shapes, the layers' qualified registry
                          ids (``layer_ids``: ``"numbanet:Dense"``), user ``metadata``
``param/<name>``          each parameter, e.g. ``param/0.weight`` ``(64, 128)``
``buffer/<name>``         each non-trainable layer buffer (``buffer/1.running_mean``)
``slot/<slot>/<name>``    each optimizer state slot per parameter (``slot/exp_avg/0.bias``)
``loss/weight``           the loss's class weights, when set
========================  ==============================================================

Format version 2 added layer buffers (``buffers`` in the metadata, ``buffer/`` arrays);
files of version 1, written before, load unchanged. Layer types are looked up in the
layer registry, so a model using a plugin's layer loads wherever that plugin is
installed (and says which type is missing elsewhere).

Arrays are keyed by parameter name (the contract of ``Optimizer.state_dict``), not by
offsets in the flat buffer, so a file stays loadable if the buffer layout changes.
Everything is read back with ``allow_pickle=False``: a model file cannot run code.

The write is atomic: the archive goes to a temporary file in the target's directory, is
flushed and ``fsync``-ed, then renamed over ``path`` with :func:`os.replace`. A crash or a
full disk leaves the previous file intact, never a truncated one. Weights holding NaN or
infinity are refused unless ``allow_nonfinite=True``, so a diverged run cannot overwrite
a good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "READABLE_VERSIONS", "load", "save"]

FORMAT_NAME = "numbanet-model"
FORMAT_VERSION = 2
#: Versions :func:`load` reads (1: before layer buffers).
READABLE_VERSIONS = (1, 2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _hyperparams_from_json(hp: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; hyperparameters such as betas are tuples of floats.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}


def _metric_entries(model: Any) -> list[dict[str, Any]]:
    from numbanet import metrics as metrics_module

    entries = []
    for metric in model.metrics:
        fn_name = getattr(metric.fn, "__name__", "")
        builtin = fn_name if getattr(metrics_module, fn_name, None) is metric.fn else None
        entries.append({"name": metric.name, "builtin": builtin,
                        "kwargs": _jsonable(metric.kwargs)})
    return entries


def _check_path(path: Any, what: str = "path") -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{what} must not be empty")
    return path


def save(model: Any, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None,
         allow_nonfinite: bool = False) -> None:
    """Write ``model`` to ``path`` (one ``.npz``), atomically.

    Args:
        model: a :class:`~numbanet.Sequential`, compiled or not.
        path: the file to write (replaced if it exists). No suffix is added.
        metadata: optional JSON-serialisable dict stored alongside (the command line
            keeps the dataset name here); :func:`load` returns it as ``model.metadata``.
        allow_nonfinite: write even if a parameter holds NaN or infinity.

    Raises:
        TypeError: ``path`` is not a path, ``metadata`` not JSON-serialisable.
        ValueError: the weights hold NaN/infinity (and ``allow_nonfinite`` is False).
        OSError: the directory does not exist or is not writable.
    """
    from numbanet.kernels.checks import all_finite
    from numbanet.plugins import layer_qualified_id

    path = _check_path(path)
    if not allow_nonfinite and not all_finite(model.flat_parameters):
        raise ValueError(
            f"not saving to {path!r}: the model's weights hold NaN or infinity (training "
            f"diverged?); pass allow_nonfinite=True to write them anyway"
        )
    layout = model.parameter_layout()
    arrays: dict[str, np.ndarray] = {}
    for name, start, stop, shape in layout:
        arrays[f"param/{name}"] = model.flat_parameters[start:stop].reshape(shape)
    buffer_layout = model.buffer_layout()
    for name, start, stop, shape in buffer_layout:
        arrays[f"buffer/{name}"] = model.flat_buffers[start:stop].reshape(shape)

    meta: dict[str, Any] = {
        "numbanet_version": _version(),
        "config": model.get_config(),
        "parameters": [[name, list(shape)] for name, _, _, shape in layout],
        "buffers": [[name, list(shape)] for name, _, _, shape in buffer_layout],
        "layer_ids": [layer_qualified_id(type(layer)) for layer in model.layers],
        "epochs_completed": int(getattr(model, "epochs_completed", 0)),
        "rng": _jsonable(model.rng.bit_generator.state),
        "loss": None,
        "optimizer": None,
        "metrics": _metric_entries(model),
        "metadata": metadata if metadata is not None else {},
    }
    if model.loss is not None:
        hp = dict(model.loss.hyperparams)
        weight = hp.pop("weight", None)
        if weight is not None:
            arrays["loss/weight"] = np.asarray(weight, dtype=np.float64)
        meta["loss"] = {"id": model.loss.qualified_id, "hyperparams": _jsonable(hp),
                        "has_weight": weight is not None}
    if model.optimizer is not None:
        opt = model.optimizer
        state = opt.state_dict(layout)
        for slot_name, per_param in state["slots"].items():
            for pname, arr in per_param.items():
                arrays[f"slot/{slot_name}/{pname}"] = arr
        meta["optimizer"] = {
            "id": opt.qualified_id,
            "hyperparams": _jsonable(state["hyperparams"]),
            "max_grad_norm": getattr(opt, "max_grad_norm", None),
            "step_count": int(state["step_count"]),
            "slots": sorted(state["slots"]),
        }
    try:
        meta_json = json.dumps(meta, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    arrays["format"] = np.array(FORMAT_NAME)
    arrays["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    arrays["meta"] = np.array(meta_json)
    _atomic_savez(path, arrays)


def _version() -> str:
    try:
        from numbanet import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return str(__version__)


def _umask() -> int:
    # There is no read-only umask query; set and restore it at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        # Otherwise mkstemp's error names the temporary file, which the user never chose.
        raise FileNotFoundError(f"cannot save to {path!r}: the directory {directory!r} "
                                f"does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Persist the rename itself (POSIX); not possible on every platform/filesystem.
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ------------------------------------------------------------------------------ load

# What a damaged or hostile archive can make zipfile, numpy's .npy reader and our own
# structure checks raise; all of it becomes one ValueError naming the file. (A corrupt
# central directory can claim an unknown compression method: NotImplementedError.)
_READ_ERRORS = (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                json.JSONDecodeError, UnicodeDecodeError, IndexError, NotImplementedError,
                OverflowError, TypeError, AttributeError, struct.error)


def _not_a_model(path: str, reason: str) -> ValueError:
    return ValueError(f"{path!r} is not a readable numbanet model file: {reason}")


def load(path: str | os.PathLike[str], *, compile: bool = True) -> Any:
    """Read a model written by :func:`save`: architecture, weights, loss, optimizer with
    its state and step count, metrics, epochs completed and the random generator's state.

    A model saved after compiling comes back compiled, ready to ``fit`` further; the
    continued run is bit-identical to one that never stopped. User-defined metric
    functions are not stored: pass them to ``compile`` again (a warning says so).

    Args:
        path: a file written by :func:`save`.
        compile: ``False`` (Keras's spelling) loads for inference only: architecture,
            weights and buffers, without building the loss, the optimizer or the metrics,
            so a model trained with a plugin optimizer or loss predicts where that plugin
            is not installed. What the model was compiled with is still readable in
            ``model.training_config`` (``{"loss": {"id", "hyperparams"}, "optimizer":
            {"id", ...}, "metrics": [...]}``, or ``None``), and ``model.compile`` works
            as on any model.

    Returns:
        a :class:`~numbanet.Sequential`; its ``metadata`` attribute holds what was passed
        to ``save(..., metadata=...)``.

    Raises:
        TypeError: ``path`` is not a path.
        FileNotFoundError / IsADirectoryError / PermissionError: the file cannot be opened.
        ValueError: not a numbanet model file (foreign, truncated or corrupt, a newer
            format version), or it needs a loss/optimizer plugin that is not installed.
    """
    path = _check_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a model file")
    if not os.path.isfile(path):
        # A device or FIFO (/dev/zero, a named pipe) would block or stream forever.
        raise ValueError(f"{path!r} is not a readable numbanet model file: not a regular file")
    try:
        if not zipfile.is_zipfile(path):
            raise _tagged(_not_a_model(path, "not an .npz archive"))
        headers = _member_headers(path)
        archive = np.load(path, allow_pickle=False)
        with archive:
            return _load_archive(path, archive, headers, compile=bool(compile))
    except _READ_ERRORS as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(repr(path)):
            raise
        if isinstance(exc, ValueError) and getattr(exc, "_numbanet", False):
            raise
        reason = str(exc) or type(exc).__name__
        if "pickle" in reason:
            reason = "not an .npz archive (numpy could not interpret its contents)"
        else:
            reason = f"{reason} (truncated or corrupt?)"
        raise _not_a_model(path, reason) from None


def _member_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member, read from the headers alone.

    Nothing is unpickled or allocated here: a member holding Python objects (a pickle) is
    refused outright, and one whose header claims more data than the archive holds (a
    memory bomb) is refused before numpy would allocate it.
    """
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise _not_a_model(path, f"unexpected member {info.filename!r}")
            key = info.filename[:-4]
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise _not_a_model(path, f"member {key!r} has .npy version {version}")
            if dtype.hasobject:
                raise _tagged(_not_a_model(
                    path, f"member {key!r} holds Python objects (a pickle); model files never "
                          f"do, and numbanet does not unpickle"))
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise _not_a_model(path, f"member {key!r} claims shape {shape} {dtype} but "
                                         f"holds {info.file_size} bytes")
            headers[key] = (tuple(shape), dtype)
    return headers


def _check_meta(path: str, meta: Any) -> None:
    """The JSON metadata has the structure :func:`save` writes (types, not just keys)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _not_a_model(path, f"malformed metadata: {what}")

    def is_count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    need(isinstance(meta, dict), "not a JSON object")
    config = meta.get("config")
    need(isinstance(config, dict) and isinstance(config.get("layers"), list)
         and all(isinstance(layer, dict) for layer in config["layers"]),
         "'config' is not an architecture")
    for key in ("parameters", "buffers"):
        entries = meta.get(key, [])
        need(isinstance(entries, list) and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and isinstance(p[1], list) and all(is_count(d) for d in p[1]) for p in entries),
            f"{key!r} is not a list of [name, shape]")
    need("parameters" in meta, "'parameters' is missing")
    need(isinstance(meta.get("rng"), dict), "'rng' is not a generator state")
    need(is_count(meta.get("epochs_completed", 0)), "'epochs_completed' is not a count")
    need(isinstance(meta.get("metadata", {}), dict), "'metadata' is not an object")
    need(isinstance(meta.get("metrics", []), list)
         and all(isinstance(m, dict) for m in meta.get("metrics", [])),
         "'metrics' is not a list")
    loss, opt = meta.get("loss"), meta.get("optimizer")
    if loss is not None:
        need(isinstance(loss, dict) and isinstance(loss.get("id"), str)
             and isinstance(loss.get("hyperparams"), dict), "'loss' is malformed")
    if opt is not None:
        need(isinstance(opt, dict) and isinstance(opt.get("id"), str)
             and isinstance(opt.get("hyperparams"), dict), "'optimizer' is malformed")
        need(is_count(opt.get("step_count")), "the optimizer's step count is not a count")
        need(isinstance(opt.get("slots", []), list)
             and all(isinstance(x, str) for x in opt.get("slots", [])),
             "the optimizer's slot names are not strings")


def _check_members(path: str, meta: dict[str, Any],
                   headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Every array the metadata promises is there with its shape and dtype, nothing else.

    Runs before the model is built, so a file cannot make numbanet allocate an
    architecture larger than the weights it actually holds.
    """
    try:
        dtype = np.dtype(meta["config"].get("dtype", "float32"))
    except TypeError:
        raise _not_a_model(path, "malformed metadata: unknown dtype") from None
    expected: dict[str, tuple[int, ...]] = {}
    for name, shape in meta["parameters"]:
        expected[f"param/{name}"] = tuple(shape)
    for name, shape in meta.get("buffers", []):
        expected[f"buffer/{name}"] = tuple(shape)
    opt = meta.get("optimizer")
    for slot in (opt or {}).get("slots", []):
        for name, shape in meta["parameters"]:
            expected[f"slot/{slot}/{name}"] = tuple(shape)
    for key, (shape, got) in headers.items():
        if key in ("format", "format_version", "meta", "loss/weight"):
            continue
        if key not in expected:
            raise _not_a_model(path, f"unexpected member {key!r}")
        if shape != expected[key] or got != dtype:
            raise _not_a_model(path, f"{key!r} has shape {shape} and dtype {got}, expected "
                                     f"{expected[key]} {dtype}")
    missing = sorted(set(expected) - set(headers))
    if missing:
        raise _not_a_model(path, f"missing array(s) {missing[:4]}")


def _build_model(path: str, meta: dict[str, Any]) -> Any:
    """The model the metadata describes, built only after its layers' parameter and buffer
    shapes are checked against the arrays the file holds, so a file cannot make numbanet
    allocate an architecture larger than the weights it actually contains."""
    from numbanet.nn import Sequential
    from numbanet.nn.registry import layer_from_config

    config = meta["config"]
    ids = meta.get("layer_ids") or [None] * len(config["layers"])
    if len(ids) != len(config["layers"]) or not all(i is None or isinstance(i, str)
                                                    for i in ids):
        raise _not_a_model(path, "malformed metadata: 'layer_ids' does not match the layers")
    try:
        layers = [layer_from_config(c, qid) for c, qid in zip(config["layers"], ids,
                                                             strict=True)]
    except (ValueError, TypeError) as exc:
        raise _tagged(_not_a_model(path, f"bad architecture: {exc}")) from None
    for key, shapes_of in (("parameters", "parameter_shapes"), ("buffers", "buffer_shapes")):
        described = [(f"{i}.{local}", tuple(shape)) for i, layer in enumerate(layers)
                     for local, shape in getattr(layer, shapes_of)()]
        stored = [(name, tuple(shape)) for name, shape in meta.get(key, [])]
        if described != stored:
            what = "parameter" if key == "parameters" else "buffer"
            raise _not_a_model(path, f"the {what} list does not match the architecture")
    try:
        return Sequential(layers, seed=config.get("seed"), dtype=config.get("dtype", "float32"),
                          input_shape=config.get("input_shape"))
    except (ValueError, TypeError) as exc:
        raise _not_a_model(path, f"bad architecture: {exc}") from None


def _load_archive(path: str, archive: Any,
                  headers: dict[str, tuple[tuple[int, ...], np.dtype]], compile: bool) -> Any:
    files = set(archive.files)
    if "format" not in files or str(archive["format"][()]) != FORMAT_NAME:
        raise _not_a_model(path, f"no '{FORMAT_NAME}' marker; it holds {sorted(files)[:8]}")
    version = int(archive["format_version"][()])
    if version > FORMAT_VERSION:
        raise _tagged(ValueError(
            f"{path!r} uses model format version {version}, newer than this numbanet "
            f"understands ({FORMAT_VERSION}); upgrade numbanet"))
    if version not in READABLE_VERSIONS:
        raise _not_a_model(path, f"unknown format version {version}")
    meta = json.loads(str(archive["meta"][()]))
    _check_meta(path, meta)
    _check_members(path, meta, headers)
    model = _build_model(path, meta)
    layout = model.parameter_layout()
    for name, start, stop, _shape in model.buffer_layout():
        model.flat_buffers[start:stop] = archive[f"buffer/{name}"].reshape(-1)
    for name, start, stop, shape in layout:
        arr = archive[f"param/{name}"]
        if arr.shape != tuple(shape) or arr.dtype != model.dtype:
            raise _not_a_model(path, f"parameter {name!r} has shape {arr.shape} and dtype "
                                     f"{arr.dtype}, expected {tuple(shape)} {model.dtype}")
        model.flat_parameters[start:stop] = arr.reshape(-1)

    rng_state = meta["rng"]
    if rng_state.get("bit_generator") != type(model.rng.bit_generator).__name__:
        raise _not_a_model(path, f"random generator {rng_state.get('bit_generator')!r} is not "
                                 f"{type(model.rng.bit_generator).__name__}")
    try:
        model.rng.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError) as exc:
        raise _not_a_model(path, f"bad random generator state: {exc}") from None
    if not np.isfinite(model.flat_parameters).all():
        # save() writes such weights only with allow_nonfinite=True (inspecting a diverged
        # run); say so instead of letting predictions come back NaN without a word.
        warnings.warn(f"{path!r}: the model's weights hold NaN or infinity", RuntimeWarning,
                      stacklevel=3)
    model.epochs_completed = int(meta.get("epochs_completed", 0))
    model.metadata = dict(meta.get("metadata") or {})

    model.training_config = None
    if meta.get("loss") is not None and meta.get("optimizer") is not None:
        model.training_config = {"loss": meta["loss"], "optimizer": meta["optimizer"],
                                 "metrics": meta.get("metrics", [])}
        if compile:
            _restore_training(path, model, meta, archive, files, layout)
    return model


def _tagged(exc: ValueError) -> ValueError:
    exc._numbanet = True  # type: ignore[attr-defined]
    return exc


def _restore_training(path: str, model: Any, meta: dict[str, Any], archive: Any,
                      files: set[str], layout: list[Any]) -> None:
    from numbanet.metrics import get_metric
    from numbanet.plugins import get_loss, get_optimizer

    loss_meta, opt_meta = meta["loss"], meta["optimizer"]
    loss_hp = _hyperparams_from_json(loss_meta["hyperparams"])
    if loss_meta.get("has_weight"):
        loss_hp["weight"] = archive["loss/weight"]
    try:
        loss = get_loss(loss_meta["id"], **loss_hp)
    except (ValueError, TypeError) as exc:
        raise _tagged(ValueError(
            f"{path!r} needs the loss {loss_meta['id']!r}, which cannot be built here: {exc}"
        )) from None
    opt_hp = _hyperparams_from_json(opt_meta["hyperparams"])
    try:
        optimizer = get_optimizer(opt_meta["id"], max_grad_norm=opt_meta.get("max_grad_norm"),
                                  **opt_hp)
    except (ValueError, TypeError) as exc:
        raise _tagged(ValueError(
            f"{path!r} needs the optimizer {opt_meta['id']!r}, which cannot be built here "
            f"(is its plugin installed?): {exc}"
        )) from None
    metrics = []
    for entry in meta.get("metrics", []):
        if entry.get("builtin"):
            metrics.append(get_metric(entry["builtin"], **entry.get("kwargs", {})))
        else:
            warnings.warn(f"{path!r}: metric {entry['name']!r} was a user function and is not "
                          f"stored in model files; pass it to model.compile again",
                          UserWarning, stacklevel=4)
    model.compile(loss=loss, optimizer=optimizer, metrics=metrics)

    slots: dict[str, dict[str, np.ndarray]] = {}
    for slot_name in opt_meta.get("slots", []):
        slots[slot_name] = {name: archive[f"slot/{slot_name}/{name}"]
                            for name, _, _, _ in layout}
    if slots or int(opt_meta["step_count"]):
        state = {"optimizer": optimizer.qualified_id, "step_count": int(opt_meta["step_count"]),
                 "hyperparams": opt_hp, "slots": slots}
        try:
            optimizer.load_state_dict(state, layout)
        except (ValueError, TypeError) as exc:
            raise _not_a_model(path, f"optimizer state: {exc}") from None
