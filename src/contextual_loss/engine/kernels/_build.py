"""Build (on first use) and load the native strip kernels' shared library.

The C source in ``_native/`` ships with the package and is compiled with the system C compiler the
first time it is needed (under a second), into a per-user cache directory keyed by the source, the
compiler and the CPU. :func:`load_library` returns the loaded library, or ``None`` with the reason.
The ctypes signatures are declared by :mod:`contextual_loss.engine.kernels.native`. Environment:

- ``CONTEXTUAL_LOSS_NATIVE``: ``0`` disables the kernels, ``1`` (or unset) uses them when they build.
- ``CONTEXTUAL_LOSS_CACHE_DIR``: where the compiled library is kept (default:
  ``$XDG_CACHE_HOME/contextual-loss`` or ``~/.cache/contextual-loss``).
- ``CC``: the C compiler (default: the first of ``cc``, ``gcc``, ``clang`` found).

(This is today's build code moved here unchanged; its hardening is a separate piece of work.)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

__all__ = ["LoadResult", "load_library"]

_SOURCE_DIR = Path(__file__).with_name("_native")
_SOURCES = ("strip_kernels.c", "strip_kernels_body.h")
#: Tried in order: the first set that compiles is used. -ffp-contract=off keeps the rounding of
#: (u - umax) * s - L identical to the eager engine's separate operations.
_FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-funroll-loops"],
    ["-O3", "-march=native"],
    ["-O3"],
)
_COMMON_FLAGS = ["-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]

_lock = threading.Lock()
_result: list[LoadResult] = []


class LoadResult(NamedTuple):
    """The outcome of :func:`load_library`: the library or ``None``, a one-line status, and the file."""

    lib: ctypes.CDLL | None
    status: str
    path: Path | None


def _cache_dir() -> Path:
    """Where the compiled library is kept: an explicit directory, else the user's cache, else a temp dir."""
    explicit = os.environ.get("CONTEXTUAL_LOSS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    user = (Path(xdg) if xdg else Path.home() / ".cache") / "contextual-loss"
    try:
        user.mkdir(parents=True, exist_ok=True)
        if os.access(user, os.W_OK):
            return user
    except OSError:
        pass
    # A read-only or missing home (containers, sandboxes): a per-user directory under the temp dir.
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"contextual-loss-{uid}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """The CPU's model and feature flags: -march=native code must not be shared across CPUs."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features"))][:2]
    return "\n".join([platform.machine(), platform.processor(), *keep])


def _library_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False)
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((_SOURCE_DIR / name).read_bytes())
    for part in (version.stdout, repr(_FLAG_SETS), repr(_COMMON_FLAGS), _cpu_signature()):
        digest.update(part.encode())
    return digest.hexdigest()[:20]


def _compile(compiler: str, target: Path) -> str | None:
    """Compile the kernels into ``target`` (atomically); returns None or the last error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = "no flag set tried"
    for flags in _FLAG_SETS:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *flags, *_COMMON_FLAGS, str(_SOURCE_DIR / _SOURCES[0]), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            done, error = None, f"{type(exc).__name__}: {exc}"
        if done is not None and done.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent processes never load a half-written file
            return None
        if done is not None:
            error = (done.stderr or done.stdout).strip()[-500:]
        Path(tmp).unlink(missing_ok=True)
    return error


def _load() -> LoadResult:
    """Build (if needed) and load the library."""
    if os.environ.get("CONTEXTUAL_LOSS_NATIVE", "1").strip().lower() in {"0", "off", "false", "no"}:
        return LoadResult(None, "disabled by CONTEXTUAL_LOSS_NATIVE", None)
    compiler = _compiler()
    if compiler is None:
        return LoadResult(None, "no C compiler found (set CC)", None)
    target = None
    try:
        target = _cache_dir() / f"strip_kernels-{_library_key(compiler)}.so"
        if not target.exists():
            error = _compile(compiler, target)
            if error is not None:
                return LoadResult(None, f"compiling with {compiler} failed: {error}", None)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        return LoadResult(None, f"loading failed: {type(exc).__name__}: {exc}", target)
    return LoadResult(lib, f"in use: {target}", target)


def load_library() -> LoadResult:
    """The kernels' library, built on first use; cached per process (thread-safe)."""
    with _lock:
        if not _result:
            _result.append(_load())
        return _result[0]
