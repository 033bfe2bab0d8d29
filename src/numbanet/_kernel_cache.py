"""Numba's disk cache, made to notice edits in the source files a kernel depends on.

Numba keys a cached kernel on the content of the one file that defines it. A kernel that
calls (and inlines) code from other modules, such as the GEMM whose epilogue inlines
:func:`numbanet.kernels.activations.activation_forward_1d`, therefore kept loading stale
machine code after an edit of those modules, until someone deleted the ``.nbi``/``.nbc``
files by hand (numba issue #1833).

:class:`DependencyAwareCache` fixes that for every kernel compiled through
:mod:`numbanet._jit`. Its source stamp (the value Numba stores in the cache index and
compares on load) is the pair ``(Numba's own stamp, dependency digest)``: the digest
hashes the content of every source file the kernel's module imports, followed
transitively through ``numbanet`` and through the kernel's own top-level package. When any
of those files changes, the stamp differs, Numba treats the index as stale (exactly as
after an edit of the kernel's own file), recompiles and overwrites the index. An
unchanged tree gives the same stamp, so a warm cache loads as before.

Dependencies are found statically, by reading ``import`` and ``from ... import``
statements (anywhere in the file, function bodies included); nothing is imported.
This over-approximates (a module imported but not called from a kernel still counts)
and never under-approximates what a kernel can reach through its module's globals.
Modules outside ``numbanet`` and the kernel's own package (numpy, numba, the
standard library, other installed packages) are not followed: Numba's index already
records its own version, and an edit of a third-party package is not a development loop
this has to serve. Code that reaches a function some other way than an import (for
example a kernel passed as an argument) is not covered; :mod:`numbanet.kernels.updates`
hashes plugin kernels into its generated module names for that reason.

Kernels compiled ahead of time (:mod:`numbanet._precompiled`) live in a second,
read-only cache directory shipped with the package. Its entries are stamped with the
dependency digest alone (no file modification time, no path), so they stay valid
wherever the package is installed; Numba's own index key adds the Python and Numba
versions, the bytecode hash, and the CPU name and features (the portable level of
:mod:`numbanet._target`). :class:`DependencyAwareCache` looks there when its own
directory has no entry, and compiles (saving to its own directory) when neither has.

Cost: each file is read and parsed once per process (memoised on its path, size and
modification time); stamping all of numbanet's kernels at import adds a few
milliseconds.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import inspect
import os
import re
import sys
import uuid
from collections.abc import Iterable
from typing import Any

from numba.core import sigutils
from numba.core.caching import CompileResultCacheImpl, FunctionCache, IndexDataCacheFile

__all__ = [
    "DependencyAwareCache",
    "PRECOMPILE_INTO_VARIABLE",
    "PRECOMPILED_DIR_VARIABLE",
    "dependency_digest",
    "enable_dependency_cache",
    "precompiled_tag",
    "shipped_directory",
    "source_dependencies",
]

#: Environment variable: a directory of ahead-of-time compiled kernels to use instead of
#: the package's own ``numbanet/_precompiled`` (tests; a site-wide shared copy).
PRECOMPILED_DIR_VARIABLE = "NUMBANET_PRECOMPILED_DIR"

#: Environment variable set by :mod:`numbanet._precompiled` in the processes that build
#: the shipped kernels: every kernel then loads from and saves to ``<dir>/<tag>/`` only.
PRECOMPILE_INTO_VARIABLE = "NUMBANET_PRECOMPILE_INTO"

#: Packages always followed, besides the kernel's own top-level package.
FOLLOWED_PACKAGES = ("numbanet",)

#: Bumped when the stamp's meaning changes, so old indexes are treated as stale.
_STAMP_VERSION = "numbanet-deps-1"

#: One import statement: ``(module, level, names)``.
_Import = tuple[str, int, tuple[str, ...]]


# An import statement at the start of a line (indented too: function bodies, `if` blocks).
# `from x import (a,\n b)` spans lines inside the parentheses.
_IMPORT_RE = re.compile(
    r"^[ \t]*(?:from[ \t]+(?P<module>\.*[\w.]*)[ \t]+import[ \t]+"
    r"(?P<names>\([^)]*\)|[^\n;]*)|import[ \t]+(?P<plain>[^\n;]*))",
    re.MULTILINE,
)


def _split_names(text: str) -> tuple[str, ...]:
    """``"a as b, c  # note"`` -> ``("a", "c")``; also a parenthesised, multi-line list."""
    text = re.sub(r"#[^\n]*", "", text).strip().strip("()")
    return tuple(
        part.split()[0] for part in text.split(",") if part.strip() and part.split()[0] != "*"
    )


@functools.cache
def _read_file(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[_Import, ...]]:
    """``(sha256 of the bytes, import statements)`` of one source file.

    Keyed on ``mtime_ns`` and ``size`` as well as the path, so a file edited while the
    process runs is read again. Each import is ``(module, level, names)``: ``import a.b``
    gives ``("a.b", 0, ())``, ``from .x import y, z`` gives ``("x", 1, ("y", "z"))``.

    Found with a regular expression, not :mod:`ast` (parsing numbanet's kernel modules
    took ~100x longer, a quarter of a second per process). A line inside a string that
    looks like an import counts too: harmless, it can only add a dependency.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    text = data.decode("utf-8", errors="replace").replace("\\\n", " ")
    imports: list[_Import] = []
    for m in _IMPORT_RE.finditer(text):
        if m["plain"] is not None:
            imports.extend((name, 0, ()) for name in _split_names(m["plain"]))
        else:
            module = m["module"]
            level = len(module) - len(module.lstrip("."))
            imports.append((module[level:], level, _split_names(m["names"])))
    return hashlib.sha256(data).hexdigest(), tuple(imports)


def _file_info(path: str) -> tuple[str, tuple[_Import, ...]]:
    st = os.stat(path)
    return _read_file(path, st.st_mtime_ns, st.st_size)


def _package_root(top: str) -> tuple[str, bool] | None:
    """``(path, is_package)`` of top-level module ``top``: its directory or its file."""
    module = sys.modules.get(top)
    if module is not None:
        paths = getattr(module, "__path__", None)
        if paths:
            return os.path.abspath(list(paths)[0]), True
        file = getattr(module, "__file__", None)
        return (os.path.abspath(file), False) if file else None
    try:
        spec = importlib.util.find_spec(top)  # top-level: locates, does not import
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return os.path.abspath(list(spec.submodule_search_locations)[0]), True
    if spec.origin and os.path.isfile(spec.origin):
        return os.path.abspath(spec.origin), False
    return None


@functools.cache
def _module_file(name: str, followed: frozenset[str]) -> str | None:
    """The source file of module ``name`` (a package's ``__init__.py``), or ``None`` when
    it is outside the followed packages or not a plain ``.py`` file on disk."""
    parts = name.split(".")
    if not parts[0] or parts[0] not in followed:
        return None
    root = _package_root(parts[0])
    if root is None:
        return None
    path, is_package = root
    if not is_package:
        return path if len(parts) == 1 and path.endswith(".py") else None
    for part in parts[1:]:
        path = os.path.join(path, part)
    for candidate in (os.path.join(path, "__init__.py"), path + ".py"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _resolve_relative(module: str, is_package: bool, level: int, target: str) -> str | None:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base) or level - 1 == len(base) and not target:
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _imported_modules(
    module: str, path: str, followed: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    """``(module name, file)`` of every followed module that ``path`` imports."""
    st = os.stat(path)
    return _imported_modules_of(module, path, st.st_mtime_ns, st.st_size, followed)


@functools.cache
def _imported_modules_of(
    module: str, path: str, mtime_ns: int, size: int, followed: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    return tuple(_scan_imports(module, path, _read_file(path, mtime_ns, size)[1], followed))


def _scan_imports(
    module: str,
    path: str,
    imports: tuple[_Import, ...],
    followed: frozenset[str],
) -> Iterable[tuple[str, str]]:
    is_package = os.path.basename(path) == "__init__.py"
    for target, level, names in imports:
        name = _resolve_relative(module, is_package, level, target) if level else target
        if not name:
            continue
        submodules = []
        for alias in names:  # `from pkg import sub`: sub may be a module itself
            sub_file = _module_file(f"{name}.{alias}", followed)
            if sub_file is not None:
                submodules.append((f"{name}.{alias}", sub_file))
        yield from submodules
        if len(submodules) < len(names) or not names:
            file = _module_file(name, followed)
            if file is not None:
                yield name, file


def source_dependencies(module: str, path: str) -> dict[str, str]:
    """Every source file that module ``module`` (defined in ``path``) depends on.

    Args:
        module: the module's import name, e.g. ``"numbanet.kernels.matmul"``.
        path: its source file.

    Returns:
        ``{module name: absolute file path}``, ``module`` itself included, closed under
        imports within ``numbanet`` and ``module``'s own top-level package.
    """
    followed = frozenset((*FOLLOWED_PACKAGES, module.split(".")[0]))
    deps = {module: os.path.abspath(path)}
    todo = [module]
    while todo:
        name = todo.pop()
        for dep, file in _imported_modules(name, deps[name], followed):
            if dep not in deps:
                deps[dep] = file
                todo.append(dep)
    return deps


def dependency_digest(module: str, path: str) -> str:
    """sha256 over the content of every source file module ``module`` depends on.

    Args:
        module: the module's import name (a kernel's ``py_func.__module__``).
        path: its source file.

    Location-independent (files are named by module, not by path). A file that cannot be
    read contributes a marker instead of failing: the cache then behaves like Numba's own.
    """
    digest = hashlib.sha256(_STAMP_VERSION.encode())
    try:
        deps = source_dependencies(module, path)
    except OSError:
        deps = {module: path}
    for name in sorted(deps):
        try:
            content_hash = _file_info(deps[name])[0]
        except OSError:
            content_hash = "unreadable"
        digest.update(f"{name}\0{content_hash}\n".encode())
    return digest.hexdigest()


class _DependencyStampedLocator:
    """Wraps the locator Numba chose; only the source stamp changes."""

    def __init__(self, inner: Any, py_func: Any) -> None:
        self._inner = inner
        self._py_func = py_func

    def __getattr__(self, name: str) -> Any:
        # Everything else is the inner locator's: Numba reads its private `_py_file`
        # to warn that a kernel cannot be cached (one that uses a dynamic global such
        # as numba.get_num_threads in a parallel region), and that warning became an
        # AttributeError while this class did not pass the attribute on.
        return getattr(self._inner, name)

    def ensure_cache_path(self) -> None:
        self._inner.ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._inner.get_cache_path()

    def get_disambiguator(self) -> str:
        return self._inner.get_disambiguator()

    def get_source_stamp(self) -> Any:
        func = self._py_func
        digest = dependency_digest(func.__module__, inspect.getfile(func))
        return (self._inner.get_source_stamp(), digest)


class _DependencyCacheImpl(CompileResultCacheImpl):
    def __init__(self, py_func: Any) -> None:
        super().__init__(py_func)
        self._locator = _DependencyStampedLocator(self._locator, py_func)


def precompiled_tag(level: str) -> str:
    """The directory name of kernels compiled for ``level`` by this Numba and Python.

    Numba's index checks both versions too; naming the directory by them keeps kernels
    of several versions apart and lets a lookup skip a whole mismatched tree at once.
    """
    import numba

    return f"{level}-numba{numba.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"


def _package_precompiled_root() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_precompiled")


def shipped_directory() -> str | None:
    """The directory of ahead-of-time compiled kernels this process can use, or ``None``.

    ``$NUMBANET_PRECOMPILED_DIR/<tag>`` when the variable is set, else
    ``numbanet/_precompiled/<tag>``, where ``<tag>`` is :func:`precompiled_tag` of the level
    Numba compiles for (:func:`numbanet._target.target_level`). ``None`` when Numba does
    not target a portable level (then no shipped code can match) or the directory is
    missing.
    """
    from numbanet._target import target_level

    level = target_level()
    if level is None:
        return None
    root = os.environ.get(PRECOMPILED_DIR_VARIABLE) or _package_precompiled_root()
    path = os.path.join(root, precompiled_tag(level))
    return path if os.path.isdir(path) else None


class _ShippedLocator:
    """Numba cache locator of a kernel in an ahead-of-time directory: ``<dir>/<module>/``.

    The source stamp is the dependency digest alone, so the entries do not depend on
    where the package is installed or on the files' modification times.
    """

    def __init__(self, directory: str, py_func: Any, stamp: str | None = None) -> None:
        self._path = os.path.join(directory, py_func.__module__)
        self._py_func = py_func
        self._stamp = stamp

    def ensure_cache_path(self) -> None:
        os.makedirs(self._path, exist_ok=True)

    def get_cache_path(self) -> str:
        return self._path

    def get_disambiguator(self) -> str:
        return str(self._py_func.__code__.co_firstlineno)

    def get_source_stamp(self) -> Any:
        if self._stamp is None:
            func = self._py_func
            self._stamp = dependency_digest(func.__module__, inspect.getfile(func))
        return self._stamp


class _DataFirstIndexFile(IndexDataCacheFile):
    """Numba's index and data files, written so that a reader never gets stale code.

    Numba saves the index before the data file and, when the index went stale (after
    an edit), numbers data files from 1 again, so a process reading in between (two MPI
    ranks compiling at once) loads the *old* file of that name: code of an earlier
    version of the source, or compiled for other types. Here each entry's data goes to a
    new, unique file first, then the index that points to it is written; the file it
    replaces, and after a stale index every file the new index does not name, are
    removed. A reader holding an old index then finds no file (a miss: it compiles),
    never the wrong one.
    """

    def save(self, key: Any, data: Any) -> None:
        overloads = self._load_index()
        fresh = not overloads
        base = self._index_name[: -len(".nbi")]
        name = f"{base}.{uuid.uuid4().hex[:16]}.nbc"
        self._save_data(name, data)
        replaced = overloads.get(key)
        overloads[key] = name
        self._save_index(overloads)
        unused = [replaced] if replaced else []
        if fresh:
            keep = set(overloads.values())
            unused = [os.path.basename(f) for f in glob.glob(
                os.path.join(glob.escape(self._cache_path), glob.escape(base) + ".*.nbc"))
                if os.path.basename(f) not in keep]
        for old in unused:
            try:
                os.remove(self._data_path(old))
            except OSError:
                pass


def _use_data_first_files(cache: FunctionCache) -> None:
    current = cache._cache_file
    cache._cache_file = _DataFirstIndexFile(current._cache_path, cache._impl.filename_base,
                                            current._source_stamp)


class _ShippedCacheImpl(CompileResultCacheImpl):
    def __init__(self, py_func: Any, directory: str, stamp: str | None) -> None:
        super().__init__(py_func)  # the file name: qualname, line, Python version
        self._locator = _ShippedLocator(directory, py_func, stamp)


class ShippedCache(FunctionCache):
    """The cache of one kernel in an ahead-of-time directory (see :class:`_ShippedLocator`)."""

    def __init__(self, py_func: Any, directory: str, stamp: str | None = None) -> None:
        # FunctionCache.__init__ builds its implementation as self._impl_class(py_func).
        # ``stamp``: the dependency digest, when the caller has it already.
        self._impl_class = functools.partial(_ShippedCacheImpl, directory=directory,
                                             stamp=stamp)
        super().__init__(py_func)
        _use_data_first_files(self)


class DependencyAwareCache(FunctionCache):
    """A :class:`numba.core.caching.FunctionCache` whose index goes stale when any source
    file the kernel's module depends on changes (see the module docstring).

    On a miss it also looks in the shipped ahead-of-time directory
    (:func:`shipped_directory`), which it never writes.
    """

    _impl_class = _DependencyCacheImpl

    def __init__(self, py_func: Any) -> None:
        super().__init__(py_func)
        _use_data_first_files(self)
        directory = shipped_directory()
        # The digest half of this cache's own stamp: computed once per kernel, not twice.
        digest = self._cache_file._source_stamp[1]
        self._shipped = (None if directory is None
                         else ShippedCache(py_func, directory, stamp=digest))

    def _load_overload(self, sig: Any, target_context: Any) -> Any:
        data = _checked(sig, super()._load_overload(sig, target_context))
        if data is None and self._shipped is not None and self._enabled:
            data = _checked(sig, self._shipped._load_overload(sig, target_context))
        return data


def _checked(sig: Any, data: Any) -> Any:
    """``data`` if it was compiled for ``sig``'s argument types, else ``None`` (a miss).

    A safeguard behind :class:`_DataFirstIndexFile`: with Numba's own file order, two MPI
    ranks compiling at once after an edit loaded a data file compiled for other types,
    and the caller failed to type ("Known signatures: <the old types>"). Compiling again
    is always correct.
    """
    if data is None:
        return None
    args, _ = sigutils.normalize_signature(sig)
    return data if tuple(data.signature.args) == tuple(args) else None


def enable_dependency_cache(dispatcher: Any) -> Any:
    """Give a Numba dispatcher the dependency-aware disk cache; returns the dispatcher.

    The replacement for ``dispatcher.enable_caching()`` (what ``cache=True`` calls). A
    plain function (``NUMBA_DISABLE_JIT=1``) is returned unchanged. In a process that
    builds the shipped kernels (``NUMBANET_PRECOMPILE_INTO`` set), the cache is that
    directory's instead.
    """
    if hasattr(dispatcher, "py_func") and hasattr(dispatcher, "_cache"):
        into = os.environ.get(PRECOMPILE_INTO_VARIABLE)
        if into:
            from numbanet._target import target_level

            level = target_level()
            if level is None:
                raise RuntimeError(
                    f"{PRECOMPILE_INTO_VARIABLE} is set but Numba does not target a portable "
                    "level; set NUMBA_CPU_NAME and NUMBA_CPU_FEATURES to one of "
                    "numbanet._target.LEVEL_FEATURES"
                )
            directory = os.path.join(into, precompiled_tag(level))
            dispatcher._cache = ShippedCache(dispatcher.py_func, directory)
        else:
            dispatcher._cache = DependencyAwareCache(dispatcher.py_func)
    return dispatcher
