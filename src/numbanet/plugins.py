"""Finding, loading and naming optimizers, losses and layers from plugins.

Load order: numbanet's built-ins (:mod:`numbanet._builtin`, through the same hooks a
third party uses), then every entry point in the ``numbanet`` group, then plugins
registered at run time with :func:`register_plugin`. Loading happens once, lazily, on the
first lookup; :func:`reload_plugins` starts over (after changing the environment).

Environment:

* ``NUMBANET_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins still load).
* ``NUMBANET_PLUGINS=numbanet-lion,other``: load only these installed distributions
  (names compared case-insensitively with ``-``, ``_`` and ``.`` treated alike; an entry
  point's own name matches too).

Names: every item has a qualified id ``distribution:name`` (``numbanet:adam``,
``numbanet-lion:lion``). A short name resolves to the built-in first (a plugin shadowing
a built-in gets one warning at load time and never replaces it; ask for it by qualified
id), else to the only plugin providing it, else raises an error listing the qualified ids.
A plugin whose hook raises or returns something other than a list of specs is disabled
with a :class:`PluginWarning` naming it; the others keep working.
"""

from __future__ import annotations

import difflib
import importlib.metadata as importlib_metadata
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from numbanet import hookspecs
from numbanet.nn.module import Module
from numbanet.specs import LossSpec, OptimizerSpec

if TYPE_CHECKING:
    from numbanet.losses import Loss
    from numbanet.optim import Optimizer

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "PluginWarning",
    "get_loss",
    "get_optimizer",
    "get_layer_class",
    "get_plugin_manager",
    "layer_qualified_id",
    "list_layers",
    "list_losses",
    "list_optimizers",
    "plugin_report",
    "register_plugin",
    "reload_plugins",
    "resolve_layer",
    "resolve_loss",
    "resolve_optimizer",
]

ENTRY_POINT_GROUP = "numbanet"
BUILTIN_DISTRIBUTION = "numbanet"
AUTOLOAD_ENV = "NUMBANET_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "NUMBANET_PLUGINS"

_HOOKS = {
    "optimizers": ("numbanet_register_optimizers", OptimizerSpec),
    "losses": ("numbanet_register_losses", LossSpec),
    "layers": ("numbanet_register_layers", Module),
}


_SINGULAR = {"optimizers": "optimizer", "losses": "loss", "layers": "layer"}


def _item_name(item: Any) -> str:
    """The registry name of a spec (``spec.name``) or a layer class (``cls.layer_type``)."""
    return item.layer_type if isinstance(item, type) else item.name


class PluginWarning(UserWarning):
    """A plugin was disabled, or shadows a built-in name."""


# What a plugin's import or hook may raise without taking the host down. SystemExit is
# included (a plugin calling sys.exit() is disabled, not obeyed); KeyboardInterrupt is not.
_PLUGIN_FAULTS = (Exception, SystemExit)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class PluginRecord:
    """What ``numbanet plugins`` shows for one plugin (a distribution)."""

    name: str
    version: str
    status: str  # "loaded", "failed", "skipped"
    error: str | None = None
    entry_points: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "entry_points": list(self.entry_points),
            "optimizers": list(self.optimizers),
            "losses": list(self.losses),
            "layers": list(self.layers),
        }


@dataclass(frozen=True)
class _Item:
    qualified_id: str
    distribution: str
    spec: Any


class _Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.plugin_dist: dict[str, str] = {}  # pluggy plugin name -> distribution
        self.items: dict[str, dict[str, _Item]] = {kind: {} for kind in _HOOKS}
        self.by_name: dict[str, dict[str, list[str]]] = {kind: {} for kind in _HOOKS}

    # -- loading -----------------------------------------------------------------------
    def add(self, plugin: object, plugin_name: str, dist: str, version: str) -> None:
        record = self.records.setdefault(dist, PluginRecord(dist, version, "loaded"))
        if record.status == "failed":
            return
        try:
            self.pm.register(plugin, name=plugin_name)
        except Exception as exc:  # pluggy.PluginValidationError, duplicate registration
            self.fail(dist, f"could not register {plugin_name!r}: {exc}")
            return
        self.plugin_dist[plugin_name] = dist
        record.entry_points.append(plugin_name)
        if not self.pm.get_hookcallers(plugin):
            warnings.warn(_no_hooks_message(plugin, plugin_name, dist), PluginWarning,
                          stacklevel=4)

    def fail(self, dist: str, message: str) -> None:
        record = self.records.setdefault(dist, PluginRecord(dist, "?", "failed"))
        record.status = "failed"
        record.error = message
        for kind in self.items:
            for qid in [q for q, it in self.items[kind].items() if it.distribution == dist]:
                del self.items[kind][qid]
        for kind in _HOOKS:
            getattr(record, kind).clear()
        if dist == BUILTIN_DISTRIBUTION:
            raise RuntimeError(f"numbanet's built-in plugins failed to load: {message}")
        warnings.warn(
            f"numbanet plugin {dist!r} is disabled: {message}", PluginWarning, stacklevel=4
        )

    def collect(self) -> None:
        for kind, (hook_name, spec_type) in _HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            # get_hookimpls() lists implementations in registration order: built-ins first.
            for impl in caller.get_hookimpls():
                dist = self.plugin_dist.get(impl.plugin_name, impl.plugin_name)
                record = self.records[dist]
                if record.status == "failed":
                    continue
                try:
                    result = impl.function()
                except _PLUGIN_FAULTS as exc:
                    self.fail(dist, f"hook {hook_name} raised {type(exc).__name__}: {exc}")
                    continue
                problem = _check_result(result, spec_type)
                if problem:
                    self.fail(dist, f"hook {hook_name} returned {problem}")
                    continue
                for spec in result:
                    name = _item_name(spec)
                    qid = f"{dist}:{name}"
                    if qid in self.items[kind]:
                        self.fail(dist, f"{_SINGULAR[kind]} {name!r} is registered twice")
                        break
                    self.items[kind][qid] = _Item(qid, dist, spec)
                    getattr(record, kind).append(name)
        for kind in self.items:
            names: dict[str, list[str]] = {}
            for qid, item in self.items[kind].items():
                names.setdefault(_item_name(item.spec), []).append(qid)
            self.by_name[kind] = names
            for name, qids in names.items():
                builtin = f"{BUILTIN_DISTRIBUTION}:{name}"
                if builtin in qids and len(qids) > 1:
                    others = ", ".join(q for q in qids if q != builtin)
                    warnings.warn(
                        f"{others} shadows numbanet's built-in {_SINGULAR[kind]} {name!r}; "
                        f"{name!r} still means the built-in, use the qualified id to pick "
                        "the plugin's",
                        PluginWarning,
                        stacklevel=4,
                    )

    # -- lookup ------------------------------------------------------------------------
    def resolve(self, kind: str, name: str) -> _Item:
        label = _SINGULAR[kind]
        if not isinstance(name, str):
            raise TypeError(f"{label} name must be a str, got {type(name).__name__}")
        if ":" in name:
            item = self.items[kind].get(name)
            if item is None:
                raise ValueError(self._unknown(kind, name))
            return item
        qids = self.by_name[kind].get(name, [])
        if not qids:
            raise ValueError(self._unknown(kind, name))
        builtin = f"{BUILTIN_DISTRIBUTION}:{name}"
        if builtin in qids:
            return self.items[kind][builtin]
        if len(qids) > 1:
            raise ValueError(
                f"{label} {name!r} is provided by several plugins: {', '.join(sorted(qids))}; "
                "pass one of these qualified ids instead"
            )
        return self.items[kind][qids[0]]

    def _unknown(self, kind: str, name: str) -> str:
        known = self.names(kind, qualified=False)
        close = difflib.get_close_matches(name.split(":")[-1], known, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        return f"unknown {_SINGULAR[kind]} {name!r}{hint} (available: {', '.join(known)})"

    def names(self, kind: str, qualified: bool) -> list[str]:
        if qualified:
            return sorted(self.items[kind])
        out = []
        for name, qids in self.by_name[kind].items():
            builtin = f"{BUILTIN_DISTRIBUTION}:{name}"
            if len(qids) == 1 or builtin in qids:
                out.append(name)
            # Shadowed and clashing plugin items stay reachable by qualified id.
            out.extend(q for q in qids if q != builtin and len(qids) > 1)
        return sorted(out)


def _no_hooks_message(plugin: object, plugin_name: str, dist: str) -> str:
    """Why a registered plugin provides nothing, and the fix."""
    label = getattr(plugin, "__name__", None) or type(plugin).__name__
    where = f"numbanet plugin {dist!r} (entry point {plugin_name!r}, module {label!r})"
    undecorated = sorted(name for name in _HOOK_NAMES if callable(getattr(plugin, name, None)))
    if undecorated:
        return (f"{where} defines {', '.join(undecorated)} without @numbanet.hookimpl, so "
                f"numbanet never calls it: decorate it with @numbanet.hookimpl")
    return (f"{where} implements no numbanet hook ({', '.join(_HOOK_NAMES)}); it provides "
            f"nothing: decorate the hook functions with @numbanet.hookimpl, or point the "
            f"entry point at the module that defines them")


_HOOK_NAMES = tuple(hook for hook, _ in _HOOKS.values())


def _check_result(result: object, spec_type: type) -> str | None:
    if spec_type is Module:
        return _check_layer_classes(result)
    if not isinstance(result, (list, tuple)):
        return f"{type(result).__name__} {result!r:.80}, expected a list of {spec_type.__name__}"
    bad = [r for r in result if not isinstance(r, spec_type)]
    if bad:
        return f"{bad[0]!r:.80}, expected {spec_type.__name__} items"
    return None


def _check_layer_classes(result: object) -> str | None:
    if not isinstance(result, (list, tuple)):
        return (f"{type(result).__name__} {result!r:.80}, expected a list of layer classes "
                f"(subclasses of numbanet.Module)")
    for item in result:
        if not (isinstance(item, type) and issubclass(item, Module)):
            hint = " (return the class, not an instance)" if isinstance(item, Module) else ""
            return f"{item!r:.80}, expected subclasses of numbanet.Module{hint}"
        name = item.layer_type
        if not (isinstance(name, str) and name.isidentifier()):
            return f"{item.__name__} with layer_type {name!r}, expected a Python identifier"
    return None


_lock = threading.RLock()
_registry: _Registry | None = None
_runtime_plugins: list[tuple[object, str]] = []


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _entry_points() -> Iterable[importlib_metadata.EntryPoint]:
    """The installed entry points of the ``numbanet`` group (tests may replace this)."""
    return importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)


def _load() -> _Registry:
    from numbanet import _builtin

    reg = _Registry()
    version = _builtin_version()
    for module in _builtin.MODULES:
        reg.add(module, f"{BUILTIN_DISTRIBUTION}.{module.__name__.rsplit('.', 1)[-1]}",
                BUILTIN_DISTRIBUTION, version)

    allow_raw = os.environ.get(ALLOW_ENV)
    allow = (
        None
        if allow_raw is None or not allow_raw.strip()
        else {_normalize(a) for a in allow_raw.split(",") if a.strip()}
    )
    if not _env_true(AUTOLOAD_ENV):
        for ep in _entry_points():
            dist_obj = getattr(ep, "dist", None)
            dist = dist_obj.metadata["Name"] if dist_obj is not None else ep.name
            dist_version = dist_obj.version if dist_obj is not None else "?"
            if _normalize(dist) == BUILTIN_DISTRIBUTION:
                continue  # our own package never loads itself twice
            if allow is not None and not ({_normalize(dist), _normalize(ep.name)} & allow):
                reg.records.setdefault(
                    dist, PluginRecord(dist, dist_version, "skipped", f"not in {ALLOW_ENV}")
                )
                continue
            try:
                plugin = ep.load()
            except _PLUGIN_FAULTS as exc:
                reg.records.setdefault(dist, PluginRecord(dist, dist_version, "loaded"))
                reg.fail(dist, f"importing entry point {ep.name} = {ep.value} raised "
                               f"{type(exc).__name__}: {exc}")
                continue
            reg.add(plugin, f"{dist}:{ep.name}", dist, dist_version)
    for plugin, name in _runtime_plugins:
        reg.add(plugin, name, name, _plugin_version(plugin))
    reg.collect()
    return reg


def _builtin_version() -> str:
    from numbanet import __version__

    return __version__


def _plugin_version(plugin: object) -> str:
    return str(getattr(plugin, "__version__", "?"))


def _get() -> _Registry:
    global _registry
    with _lock:
        if _registry is None:
            _registry = _load()
        return _registry


def reload_plugins() -> None:
    """Forget what was loaded; the next lookup loads built-ins and plugins again."""
    global _registry
    with _lock:
        _registry = None


def register_plugin(plugin: object, name: str) -> None:
    """Register an in-process plugin (a module or object with hook implementations).

    Useful in notebooks and tests; installed packages should use the ``numbanet``
    entry-point group instead. ``name`` plays the role of the distribution name in
    qualified ids (``name:item``). Registration takes effect at once.

    Raises:
        ValueError: ``name`` is empty, contains ``:``, or is already used.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"register_plugin: name must be a non-empty str without ':', got {name!r}")
    with _lock:
        if any(n == name for _, n in _runtime_plugins) or _normalize(name) == BUILTIN_DISTRIBUTION:
            raise ValueError(f"register_plugin: a plugin named {name!r} is already registered")
        _runtime_plugins.append((plugin, name))
        reload_plugins()


def unregister_plugin(name: str) -> None:
    """Remove a plugin added by :func:`register_plugin` (no error if absent)."""
    with _lock:
        _runtime_plugins[:] = [(p, n) for p, n in _runtime_plugins if n != name]
        reload_plugins()


def get_plugin_manager() -> pluggy.PluginManager:
    """The loaded :class:`pluggy.PluginManager` (for introspection)."""
    return _get().pm


def resolve_optimizer(name: str) -> tuple[str, OptimizerSpec]:
    """``(qualified_id, spec)`` for an optimizer name or qualified id."""
    item = _get().resolve("optimizers", name)
    return item.qualified_id, item.spec


def resolve_loss(name: str) -> tuple[str, LossSpec]:
    """``(qualified_id, spec)`` for a loss name or qualified id."""
    item = _get().resolve("losses", name)
    return item.qualified_id, item.spec


def list_optimizers(qualified: bool = False) -> list[str]:
    """Names accepted by :func:`get_optimizer`, sorted.

    Args:
        qualified: list every qualified id (``"numbanet:adam"``) instead. By default the
            list holds short names, plus qualified ids for plugin items whose short name
            is shadowed by a built-in or provided by several plugins.
    """
    return _get().names("optimizers", qualified)


def list_losses(qualified: bool = False) -> list[str]:
    """Names accepted by :func:`get_loss`, sorted (see :func:`list_optimizers`)."""
    return _get().names("losses", qualified)


def get_optimizer(name: str | OptimizerSpec, **hyperparams: Any) -> Optimizer:
    """Build an optimizer by name, with PyTorch's hyperparameter names.

    Args:
        name: short name (``"adam"``), qualified id (``"numbanet-lion:lion"``) or an
            :class:`OptimizerSpec` (not registered; handy when writing a plugin).
        **hyperparams: override the spec's defaults (``lr=1e-3, betas=(0.9, 0.999)``).

    Raises:
        ValueError: unknown optimizer or hyperparameter, value out of range.
        TypeError: a hyperparameter of the wrong type.
    """
    from numbanet.optim import Optimizer

    if isinstance(name, OptimizerSpec):
        return Optimizer(name, f"unregistered:{name.name}", **hyperparams)
    qid, spec = resolve_optimizer(name)
    return Optimizer(spec, qid, **hyperparams)


def get_loss(name: str | LossSpec, **hyperparams: Any) -> Loss:
    """Build a loss by name, with PyTorch's hyperparameter names.

    Args:
        name: short name (``"cross_entropy"``), qualified id or a :class:`LossSpec`.
        **hyperparams: ``reduction`` (``"mean"``, ``"sum"``, ``"none"``), ``weight`` (per
            class, for losses that support it) and the spec's own hyperparameters.

    Raises:
        ValueError: unknown loss or hyperparameter, value out of range.
        TypeError: a hyperparameter of the wrong type.
    """
    from numbanet.losses import Loss

    if isinstance(name, LossSpec):
        return Loss(name, f"unregistered:{name.name}", **hyperparams)
    qid, spec = resolve_loss(name)
    return Loss(spec, qid, **hyperparams)


def resolve_layer(name: str) -> tuple[str, type[Module]]:
    """``(qualified_id, layer class)`` for a layer type name (``"Dense"``) or qualified id
    (``"numbanet:Dense"``, ``"numbanet-rmsnorm:RMSNorm"``)."""
    item = _get().resolve("layers", name)
    return item.qualified_id, item.spec


def layer_qualified_id(cls: type) -> str | None:
    """The qualified id (``"numbanet:Dense"``) under which ``cls`` is registered, or
    ``None`` for a layer class no plugin registers. Model files store it, so a plugin's
    layer that shares a built-in's name loads as that plugin's layer again."""
    for qid, item in _get().items["layers"].items():
        if item.spec is cls:
            return qid
    return None


def get_layer_class(name: str) -> type[Module]:
    """The layer class registered under ``name`` (see :func:`resolve_layer`).

    Raises:
        ValueError: unknown layer type; the message lists the known ones.
    """
    return resolve_layer(name)[1]


def list_layers(qualified: bool = False) -> list[str]:
    """Layer type names known to :func:`numbanet.nn.layer_from_config` and
    :func:`numbanet.load`, sorted (see :func:`list_optimizers` for ``qualified``)."""
    return _get().names("layers", qualified)


def plugin_report() -> list[dict[str, Any]]:
    """One dict per plugin: name, version, status, error, entry points, provided items."""
    reg = _get()
    return [rec.as_dict() for rec in reg.records.values()]
