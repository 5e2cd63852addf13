"""Build the native strip kernels on first use and load them safely (a hardened per-user cache).

The C sources in ``_native/`` are compiled with the system C compiler (``$CC``, else the first of
``cc``, ``gcc``, ``clang``) with ``-march=native``, once per source, compiler, flags and CPU, into a
per-user cache directory, and loaded with :mod:`ctypes`. docs/engine.md ("Building and loading the
native kernels") gives the measurements behind building on first use rather than at install time.

What is guaranteed, and how:

- **Nothing another user could have written is loaded.** The cache directory is opened component
  by component with ``O_NOFOLLOW`` and used only through its descriptor afterwards; it must be
  owned by the user and not writable by group or others (it is created 0700). A cached file must
  be a regular file owned by the user and not writable by group or others.
- **What is loaded is what was built.** The SHA-256 of the library is recorded at build time in
  its file name (``strip_kernels-<key>-<sha256>.so``; the name and the bytes are published
  together by one rename). A cached file is opened once, checked with ``fstat``, and its bytes
  are read from that descriptor and hashed; on Linux exactly those bytes are copied into a sealed
  memfd (no one can change them any more) and loaded from ``/proc/self/fd/N``. Where memfd is
  unavailable (other systems, no ``/proc``), the file is loaded by its path after the whole path
  has been checked (no component writable by another user), and its device and inode are
  compared with the verified descriptor's after the load.
- **A damaged library never crashes the process.** A truncated, zero-filled or replaced file
  fails the hash check before anything maps it; it is removed and the kernels are rebuilt.
- **Publishing is atomic.** Each process compiles in its own private temporary directory and
  publishes with ``rename`` within the cache directory, so concurrent first builds are safe (the
  last rename wins; readers see a whole file or none).
- **The build is bounded** (60 s for the compiler's version query and every flag set together;
  the compiler's process group is killed after that) and ``$CC`` is used exactly as given: a
  missing ``$CC`` is reported, not replaced. A failing compiler's output is kept in the status.
- If the cache directory cannot be used safely the kernels are still built, in a private
  temporary directory, and loaded for this process only (and a warning says why).

Falling back to the eager passes (or building for this process only) warns once per process with
:class:`NativeKernelsWarning`; nothing warns when the user turned the kernels off
(``CONTEXTUAL_LOSS_NATIVE=0`` or ``CONTEXTUAL_LOSS_KERNELS=eager``). Environment:
``CONTEXTUAL_LOSS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/contextual-loss`` or
``~/.cache/contextual-loss``, else ``$TMPDIR/contextual-loss-<uid>``) and ``CC``.

The caller (``kernels/native.py``) declares the ctypes signatures and checks ``cl_abi_version``
and ``cl_openmp``; if it rejects the library it reports through :func:`warn_fallback`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadResult", "NativeKernelsWarning", "build_and_load", "cache_directory", "load_library", "warn_fallback"]

SOURCE_DIR = Path(__file__).with_name("_native")
SOURCES = ("strip_kernels.c", "strip_kernels_body.h")
#: Tried in order: the first set that compiles is used. -ffp-contract=off keeps the rounding of
#: (u - umax) * s - L identical to the eager engine's separate operations.
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-funroll-loops"),
    ("-O3", "-march=native"),
    ("-O3",),
)
COMMON_FLAGS = ("-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
#: Seconds for the whole build (version query and all flag sets); a private override for tests.
BUILD_TIMEOUT_S = 60.0
_TIMEOUT_ENV = "_CONTEXTUAL_LOSS_BUILD_TIMEOUT"
#: Part of the cache key: bump when the cache's format or the way it is built changes.
_SCHEME = "cache-v2"
_PREFIX = "strip_kernels-"
_MAX_BYTES = 64 << 20
_OFF = {"0", "off", "false", "no"}
_USE_MEMFD = sys.platform.startswith("linux") and hasattr(os, "memfd_create")
#: memfd_create's MFD_EXEC (Linux 6.3): executable memfds even where vm.memfd_noexec makes them noexec.
_MFD_EXEC = getattr(os, "MFD_EXEC", 0x0010)


class NativeKernelsWarning(UserWarning):
    """The native CPU strip kernels are not used (or are rebuilt in every process); see the message."""


@dataclass(frozen=True)
class LoadResult:
    """The outcome of building and loading the kernels.

    Attributes:
        lib: the loaded library, or None.
        status: one line, "in use: PATH" (or "in use (...)") or why the kernels are not used.
        path: the verified cache file the library was loaded from, or None.
        disabled: True when the user turned the kernels off (no warning is due).

    """

    lib: ctypes.CDLL | None
    status: str
    path: Path | None
    disabled: bool = False


class _RefusedError(Exception):
    """A directory or file that must not be used; the message says why."""


_lock = threading.Lock()
_result: LoadResult | None = None
_warn_lock = threading.Lock()
_warned = False
#: Descriptors of loaded memfds, kept open for the life of the process: the dynamic loader knows a
#: library by its name /proc/self/fd/N, and a reused N must never name another file.
_keep_open: list[int] = []


def load_library(*, warn: bool = True) -> LoadResult:
    """The kernels, built and loaded on the first call of the process (thread-safe), then cached.

    Args:
        warn: issue the once-per-process :class:`NativeKernelsWarning` if the kernels are not in
            use (or not cached). Pass False where the caller raises instead of falling back.

    """
    global _result
    with _lock:
        if _result is None:
            _result = build_and_load()
        result = _result
    if warn and not result.disabled and (result.lib is None or result.path is None):
        warn_fallback(result.status)
    return result


def warn_fallback(reason: str) -> None:
    """Warn, once per process, that the kernels are not used (or are rebuilt per process) and why."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    if reason.startswith("in use"):
        what = "are rebuilt in every process, as no safe cache directory could be used"
        remedy = "point CONTEXTUAL_LOSS_CACHE_DIR at a directory only you can write"
    else:
        what = "are not used: the engine runs its eager PyTorch passes (same results, slower)"
        remedy = "set CONTEXTUAL_LOSS_KERNELS=eager to choose the eager passes without this warning"
    warnings.warn(
        f"contextual-loss: the native CPU strip kernels {what}. Why: {reason}. "
        f"Check with contextual_loss.engine.kernels.status(); {remedy}.",
        NativeKernelsWarning,
        stacklevel=3,
    )


def build_and_load() -> LoadResult:
    """Build (unless cached) and load the kernels now, reading the environment now; never raises."""
    off = _disabled_by()
    if off:
        return LoadResult(None, off, None, disabled=True)
    if os.name != "posix":
        return LoadResult(None, f"native kernels are built only on POSIX systems (this is {platform.system()})", None)
    try:
        return _build_and_load()
    except Exception as exc:  # a bug or an unforeseen system error must not break the loss: report it
        return LoadResult(None, f"loading failed: {type(exc).__name__}: {exc}", None)


def _disabled_by() -> str | None:
    if os.environ.get("CONTEXTUAL_LOSS_NATIVE", "1").strip().lower() in _OFF:
        return "disabled by CONTEXTUAL_LOSS_NATIVE"
    if os.environ.get("CONTEXTUAL_LOSS_KERNELS", "").strip().lower() == "eager":
        return "disabled by CONTEXTUAL_LOSS_KERNELS=eager"
    return None


def _build_and_load() -> LoadResult:
    deadline = time.monotonic() + _timeout()
    argv, shown = _compiler()
    if argv is None:
        return LoadResult(None, shown, None)
    key = _library_key(argv, deadline)
    if isinstance(key, _Failure):
        return LoadResult(None, f"compiling with {shown} {key}", None)
    dir_fd, directory, skipped = _open_cache()
    if dir_fd is None or directory is None:
        notes = [f"cache not used: {'; '.join(skipped)}"]
    else:
        notes = [f"skipped {reason}" for reason in skipped]
    try:
        if dir_fd is not None and directory is not None:
            found = _find_cached(dir_fd, key, notes)
            if found is not None:
                name, data, ident = found
                return _loaded(data, directory / name, ident, notes)
        built = _compile(argv, deadline)
        if isinstance(built, _Failure):
            return LoadResult(None, _with_notes(f"compiling with {shown} {built}", notes), None)
        if dir_fd is None or directory is None:
            return _loaded(built, None, None, ["built for this process only", *notes])
        name = f"{_PREFIX}{key}-{hashlib.sha256(built).hexdigest()}.so"
        try:
            ident = _publish(dir_fd, name, built)
        except OSError as exc:
            return _loaded(built, None, None, ["built for this process only", f"could not write {directory}: {exc}"])
        return _loaded(built, directory / name, ident, notes)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _loaded(data: bytes, path: Path | None, ident: tuple[int, int] | None, notes: list[str]) -> LoadResult:
    """Load the verified bytes ``data`` (published at ``path`` with device and inode ``ident``, if any)."""
    try:
        lib, note = _dlopen(data, path, ident)
    except (OSError, _RefusedError) as exc:
        return LoadResult(None, _with_notes(f"loading failed: {type(exc).__name__}: {exc}", notes), None)
    notes = [*notes, note] if note else notes
    return LoadResult(lib, _with_notes("in use" if path is None else f"in use: {path}", notes), path)


def _with_notes(status: str, notes: list[str]) -> str:
    return f"{status} ({'; '.join(notes)})" if notes else status


# --- compiler and key ------------------------------------------------------------------------------


class _Failure(str):
    """Why a compiler step failed (a str, kept distinct from results)."""


def _timeout() -> float:
    try:
        return float(os.environ.get(_TIMEOUT_ENV, BUILD_TIMEOUT_S))
    except ValueError:
        return BUILD_TIMEOUT_S


def _compiler() -> tuple[list[str] | None, str]:
    """The compiler's argv and its name for messages, or None and why there is none.

    ``$CC`` is used exactly (it may carry arguments, e.g. ``ccache gcc``); only an unset or empty
    ``$CC`` searches for ``cc``, ``gcc`` and ``clang``.
    """
    given = os.environ.get("CC", "").strip()
    if given:
        try:
            argv = shlex.split(given)
        except ValueError as exc:
            return None, f"CC={given!r} cannot be parsed: {exc}"
        found = shutil.which(argv[0]) if argv else None
        if found is None:
            return None, f"the C compiler CC={given!r} was not found (unset CC to use cc, gcc or clang)"
        return [found, *argv[1:]], given
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found], name
    return None, "no C compiler found (set CC)"


def _run(cmd: list[str], deadline: float) -> tuple[int, str] | _Failure:
    """Run ``cmd`` until ``deadline`` (its whole process group is killed then); exit status and output."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return _Failure(f"gave up: the build took more than {_timeout():g} s")
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    except OSError as exc:
        return _Failure(f"could not run {cmd[0]}: {type(exc).__name__}: {exc}")
    try:
        out, _ = proc.communicate(timeout=remaining)
    except BaseException as exc:  # the time is up, or an interrupt: no compiler may outlive the build
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver's children (cc1, as, ld) too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        proc.kill()
        proc.wait()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        return _Failure(f"gave up: the build took more than {_timeout():g} s")
    return proc.returncode, out.decode(errors="replace")


def _one_line(text: str, limit: int = 600) -> str:
    """Compiler output on one line (lines joined by ' | '), its end kept where it is long."""
    joined = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    if not joined:
        return "no output"
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def _cpu_signature() -> str:
    """The CPU's model and feature flags: -march=native code must not be shared across CPUs."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: platform.processor() (which runs `uname -p` there) is all we have
        return f"{platform.machine()}\n{platform.processor()}"
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features"))][:2]
    return "\n".join([platform.machine(), *keep])


def _library_key(argv: list[str], deadline: float) -> str | _Failure:
    """A hash of the sources, the compiler (path, arguments, version), the flags and the CPU."""
    ran = _run([*argv, "--version"], deadline)
    if isinstance(ran, _Failure):
        return ran
    digest = hashlib.sha256(_SCHEME.encode())
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    for part in (repr(argv), ran[1], repr(FLAG_SETS), repr(COMMON_FLAGS), _cpu_signature()):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:20]


def _compile(argv: list[str], deadline: float) -> bytes | _Failure:
    """Compile the kernels in a private temporary directory; the library's bytes, or why not."""
    failure = _Failure("failed: no flag set tried")
    try:
        workspace = tempfile.TemporaryDirectory(prefix="contextual-loss-build-")
    except OSError as exc:
        return _Failure(f"failed: no temporary directory to build in: {exc}")
    with workspace as tmp:
        out = Path(tmp) / "strip_kernels.so"
        for flags in FLAG_SETS:
            cmd = [*argv, *flags, *COMMON_FLAGS, str(SOURCE_DIR / SOURCES[0]), "-o", str(out), "-lm"]
            ran = _run(cmd, deadline)
            if isinstance(ran, _Failure):
                return ran
            if ran[0] == 0:
                with open(out, "rb") as f:
                    return f.read()
            failure = _Failure(f"failed (exit status {ran[0]}): {_one_line(ran[1])}")
    return failure


# --- the cache directory --------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def _cache_candidates() -> list[Path]:
    """Cache directories in the order tried: the explicit one, else the user's cache, then a temp dir."""
    explicit = os.environ.get("CONTEXTUAL_LOSS_CACHE_DIR")
    if explicit:
        return [Path(explicit)]
    # A read-only or missing home (containers, sandboxes): a per-user directory under the temp dir.
    temp = Path(tempfile.gettempdir()) / f"contextual-loss-{os.geteuid()}"
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        user = (Path(xdg) if xdg else Path.home() / ".cache") / "contextual-loss"
    except (RuntimeError, KeyError):  # no home directory at all
        return [temp]
    return [user, temp]


def cache_directory() -> Path | None:
    """The cache directory the kernels use (created if missing), or None if none is safe to use."""
    fd, path, _ = _open_cache()
    if fd is None or path is None:
        return None
    os.close(fd)
    return path


def _open_cache() -> tuple[int | None, Path | None, list[str]]:
    """A descriptor of the first usable cache directory and its real path (or None), and why others were not."""
    reasons: list[str] = []
    for path in _cache_candidates():
        try:
            real = Path(os.path.realpath(path))
            return _open_private_dir(real, whole_path=not _USE_MEMFD), real, reasons
        except (OSError, _RefusedError) as exc:
            reasons.append(f"{path}: {exc}")
    return None, None, reasons


def _open_private_dir(path: Path, *, whole_path: bool = False) -> int:
    """Open directory ``path`` (creating missing components 0700) without following symbolic links.

    Symbolic links are resolved once, then the real path is walked from ``/`` with ``O_NOFOLLOW``,
    one descriptor per component, so a link swapped meanwhile is refused rather than followed.
    The directory itself must be owned by the user and not writable by group or others. Its
    parents matter only where the library is later loaded by path (``whole_path``): then each must
    be owned by the user or root and not writable by others, unless sticky (like ``/tmp``).

    Returns:
        An open descriptor of the directory (the caller closes it).

    Raises:
        _RefusedError: a component is not safe (the message says which and why).
        OSError: a component cannot be opened or created.

    """
    parts = Path(os.path.realpath(path)).parts
    fd = os.open(parts[0], _DIR_FLAGS)
    try:
        for depth, name in enumerate(parts[1:], start=1):
            if whole_path:
                _check_parent(fd, Path(*parts[:depth]))
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        _check_private(os.fstat(fd), f"cache directory {path}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_private(st: os.stat_result, what: str) -> None:
    """Refuse what is not owned by the user or is writable by group or others."""
    if st.st_uid != os.geteuid():
        raise _RefusedError(f"{what} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise _RefusedError(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def _check_parent(fd: int, where: Path) -> None:
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise _RefusedError(f"{where} is owned by uid {st.st_uid}, neither root nor this user")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _RefusedError(f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def _find_cached(dir_fd: int, key: str, notes: list[str]) -> tuple[str, bytes, tuple[int, int]] | None:
    """A verified cached library for ``key``: its name, bytes and (device, inode); None if none.

    Files that fail a check are removed (the directory is the user's own) and noted.
    """
    prefix = f"{_PREFIX}{key}-"
    for name in sorted(os.listdir(dir_fd)):
        digest = name[len(prefix) : -len(".so")]
        if not (name.startswith(prefix) and name.endswith(".so") and re.fullmatch(r"[0-9a-f]{64}", digest)):
            continue
        try:
            data, ident = _read_verified(dir_fd, name, digest)
        except (OSError, _RefusedError) as exc:
            notes.append(f"removed {name}: {exc}")
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            continue
        return name, data, ident
    return None


def _read_verified(dir_fd: int, name: str, digest: str) -> tuple[bytes, tuple[int, int]]:
    """The bytes of file ``name`` if it is the user's own regular file and hashes to ``digest``.

    The file is opened once (``O_NOFOLLOW``); the checks (``fstat``) and the hash are of that
    descriptor, and the bytes returned are the ones hashed.

    Returns:
        The bytes and the file's (device, inode).

    """
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _RefusedError("not a regular file")
        _check_private(st, "the file")
        if st.st_size > _MAX_BYTES:
            raise _RefusedError(f"{st.st_size} bytes, more than a build makes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != digest:
        raise _RefusedError("damaged (its SHA-256 differs from the one recorded when it was built)")
    return data, (st.st_dev, st.st_ino)


def _publish(dir_fd: int, name: str, data: bytes) -> tuple[int, int]:
    """Write ``data`` to ``name`` atomically (a private temporary file, then rename); its (device, inode)."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    return st.st_dev, st.st_ino


# --- loading ---------------------------------------------------------------------------------------


def _dlopen(data: bytes, path: Path | None, ident: tuple[int, int] | None) -> tuple[ctypes.CDLL, str | None]:
    """Load the verified bytes ``data``: from a sealed memfd copy, else from ``path`` (checked after).

    Returns:
        The library, and a note when memfd was tried and could not be used.

    """
    note = None
    if _USE_MEMFD and os.path.isdir("/proc/self/fd"):
        try:
            return _dlopen_memfd(data), None
        except OSError as exc:
            if path is None:
                raise
            note = f"memfd unusable ({exc}), loaded by path"
    if path is None or ident is None:
        raise _RefusedError("no cache file to load from, and no memfd on this system")
    # Loading by path: no component of the path may be changeable by another user (checked here,
    # whatever was checked when the directory was opened), and the file's identity is compared
    # with the verified one after the load.
    os.close(_open_private_dir(path.parent, whole_path=True))
    lib = ctypes.CDLL(str(path))
    st = os.stat(path, follow_symlinks=False)
    if (st.st_dev, st.st_ino) != ident:
        raise _RefusedError(f"{path} changed while it was being loaded")
    return lib, note


def _dlopen_memfd(data: bytes) -> ctypes.CDLL:
    import fcntl  # POSIX only; memfd implies Linux

    try:
        fd = os.memfd_create("contextual-loss-strip-kernels", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | _MFD_EXEC)
    except OSError:  # kernels before 6.3 do not know MFD_EXEC (and do not need it)
        fd = os.memfd_create("contextual-loss-strip-kernels", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
    except BaseException:
        os.close(fd)
        raise
    _keep_open.append(fd)
    return lib
