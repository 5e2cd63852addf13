"""Building and loading the native strip kernels (kernels/_build.py): safe cache, clear failures.

Where a library that must never be loaded is involved, ``_build.py`` runs in a fresh subprocess
as a standalone module (it needs only the standard library, so these start in a fraction of a
second): if the library were loaded, its constructor would write a marker file there, not in the
test process. The kernels are built once per session (``built``) and copied where a test needs a
warm cache. Tests run as root (CI) or not; handing files to another user needs root.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from contextual_loss.engine.kernels import _build
from contextual_loss.engine.kernels.native import ABI_VERSION

BUILD_PY = Path(_build.__file__)
SRC = BUILD_PY.parents[3]
IS_LINUX = platform.system() == "Linux"
HAS_CC = any(shutil.which(name) for name in ("cc", "gcc", "clang"))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FOREIGN_UID = 54321  # any uid that is not ours

needs_cc = pytest.mark.skipif(not (IS_LINUX and HAS_CC), reason="needs Linux and a C compiler")
needs_linux = pytest.mark.skipif(not IS_LINUX, reason="the checks and memfd loading tested here are Linux's")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="only root can give a file or directory to another user")

ENV_KEYS = ("CC", "CONTEXTUAL_LOSS_NATIVE", "CONTEXTUAL_LOSS_KERNELS", "CONTEXTUAL_LOSS_CACHE_DIR", _build._TIMEOUT_ENV)
PRELUDE = f"""
import importlib.util, json, os, sys, warnings
spec = importlib.util.spec_from_file_location("_cl_build", {str(BUILD_PY)!r})
build = importlib.util.module_from_spec(spec)
sys.modules["_cl_build"] = build
spec.loader.exec_module(build)
"""
PLANTED_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("CL_TEST_MARKER");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) { fputs("the planted library ran", f); fclose(f); }
}
int64_t cl_abi_version(void) { return 2; }
int cl_openmp(void) { return 1; }
"""
# Compiles nothing: answers --version, fails otherwise (keeps subprocess tests free of real builds).
REFUSING_CC = """#!/bin/sh
if [ "$1" = --version ]; then echo "refusing-cc 1.0"; exit 0; fi
echo "refusing-cc: error: this test compiler compiles nothing" >&2
exit 1
"""


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ENV_KEYS}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def _standalone(code: str, **env: str) -> dict:
    """Run ``code`` after loading _build.py as module ``build`` in a fresh process; its last JSON line."""
    return _result(_python(PRELUDE + textwrap.dedent(code), _env(**env)))


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _isolated_env(monkeypatch: pytest.MonkeyPatch, cache: Path, **extra: str) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CONTEXTUAL_LOSS_CACHE_DIR", str(cache))
    monkeypatch.setenv("LC_ALL", "C")
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kernels built once for the session (default compiler): the published cache file."""
    if not (IS_LINUX and HAS_CC):
        pytest.skip("needs Linux and a C compiler")
    cache = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as mp:
        _isolated_env(mp, cache)
        result = _build.build_and_load()
    assert result.path is not None, result.status
    return result.path


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A shared library whose constructor writes the file named by $CL_TEST_MARKER."""
    if not (IS_LINUX and HAS_CC):
        pytest.skip("needs Linux and a C compiler")
    where = tmp_path_factory.mktemp("planted")
    source = where / "planted.c"
    source.write_text(PLANTED_C)
    argv, shown = _build._compiler()
    assert argv is not None, shown
    subprocess.run([*argv, "-shared", "-fPIC", str(source), "-o", str(where / "planted.so")], check=True)
    return (where / "planted.so").read_bytes()


def _copy_into(library: Path, cache: Path) -> Path:
    cache.mkdir(mode=0o700, exist_ok=True)
    target = cache / library.name
    shutil.copyfile(library, target)
    target.chmod(0o600)
    return target


# --- a planted library is never loaded ------------------------------------------------------------

PLANT_CASES = {
    "world-writable directory": "writable by group or others",
    "group-writable directory": "writable by group or others",
    "foreign directory": f"owned by uid {FOREIGN_UID}",
    "group-writable file": "the file is writable by group or others",
    "foreign file": f"the file is owned by uid {FOREIGN_UID}",
    "symbolic link to the file": "removed",
    "symbolic link to a world-writable directory": "writable by group or others",
    "private directory and file (control: the attack if the checks were missing)": "in use",
}


@needs_cc
@pytest.mark.parametrize("case", list(PLANT_CASES))
def test_planted_library_is_never_loaded(case, planted, tmp_path, monkeypatch):
    if "foreign" in case and not IS_ROOT:
        pytest.skip("only root can give a file or directory to another user")
    compiler = _script(tmp_path / "refusing-cc", REFUSING_CC)
    # The attacker computes the name the victim looks for, with the hash of the planted file.
    _isolated_env(monkeypatch, tmp_path, CC=str(compiler))
    argv, _ = _build._compiler()
    key = _build._library_key(argv, time.monotonic() + 60)
    name = f"strip_kernels-{key}-{hashlib.sha256(planted).hexdigest()}.so"
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / name).write_bytes(planted)
    (cache / name).chmod(0o644)
    used = cache
    if case == "world-writable directory":
        cache.chmod(0o777)
    elif case == "group-writable directory":
        cache.chmod(0o770)
    elif case == "foreign directory":
        os.chown(cache / name, FOREIGN_UID, FOREIGN_UID)
        os.chown(cache, FOREIGN_UID, FOREIGN_UID)
    elif case == "group-writable file":
        (cache / name).chmod(0o664)
    elif case == "foreign file":
        os.chown(cache / name, FOREIGN_UID, FOREIGN_UID)
    elif case == "symbolic link to the file":
        elsewhere = tmp_path / "elsewhere.so"
        (cache / name).rename(elsewhere)
        (cache / name).symlink_to(elsewhere)
    elif case == "symbolic link to a world-writable directory":
        cache.chmod(0o777)
        used = tmp_path / "link"
        used.symlink_to(cache)
    marker = tmp_path / "constructor-ran"
    got = _standalone(
        "result = build.build_and_load()\n"
        "print(json.dumps({'status': result.status, 'loaded': result.lib is not None}))",
        CC=str(compiler),
        CONTEXTUAL_LOSS_CACHE_DIR=str(used),
        CL_TEST_MARKER=str(marker),
    )
    assert PLANT_CASES[case] in got["status"]
    if case.startswith("private"):
        assert marker.exists() and got["loaded"]  # the test can see a load: the checks are what stop it
        return
    assert not marker.exists(), got["status"]
    assert not got["loaded"]
    assert "refusing-cc: error: this test compiler compiles nothing" in got["status"]  # then it built its own


# --- a damaged cache: detected, rebuilt, and the loss is right in a fresh process ------------------

FRESH_PROCESS = """
import json, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from contextual_loss.engine import native
    from contextual_loss.functional import contextual_loss
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 6, generator=gen, requires_grad=True)
    y = torch.randn(1, 8, 6, 6, generator=gen)
    values, grads = [], []
    for engine in ("streaming", "streaming", "streaming", "dense"):
        loss = contextual_loss(x, y, engine=engine)
        values.append(loss.item())
        grads.append(torch.autograd.grad(loss, x)[0].flatten().tolist())
print(json.dumps({
    "status": native.status(),
    "values": values,
    "grads": grads,
    "warnings": [str(w.message) for w in caught if w.category.__name__ == "NativeKernelsWarning"],
}))
"""


@needs_cc
def test_damaged_cache_is_rebuilt_and_a_failing_build_warns_once_in_fresh_processes(built, planted, tmp_path):
    procs = {}
    for case in ("truncated", "zero-filled", "foreign library", "no compiler"):
        cache = tmp_path / case.replace(" ", "-")
        library = _copy_into(built, cache)
        data = library.read_bytes()
        if case == "truncated":
            library.write_bytes(data[:1000])  # what made every process die with SIGBUS in ctypes.CDLL
        elif case == "zero-filled":
            library.write_bytes(bytes(len(data)))
        elif case == "foreign library":
            library.write_bytes(planted)  # a valid library, but not the one that was built
        env = _env(CONTEXTUAL_LOSS_CACHE_DIR=str(cache), CL_TEST_MARKER=str(tmp_path / "constructor-ran"))
        if case == "no compiler":
            shutil.rmtree(cache)
            env["CC"] = "false"
        procs[case] = _python(FRESH_PROCESS, env)
    for case, proc in procs.items():  # started together: the fresh processes' start-up overlaps
        got = _result(proc)
        dense_value, dense_grad = got["values"][-1], got["grads"][-1]
        for value, grad in zip(got["values"][:-1], got["grads"][:-1], strict=True):
            assert value == pytest.approx(dense_value, rel=1e-5), case
            assert grad == pytest.approx(dense_grad, rel=1e-4, abs=1e-7), case
        if case == "no compiler":
            assert got["status"].startswith("compiling with false failed"), got["status"]
            assert len(got["warnings"]) == 1, got["warnings"]  # once per process, not once per call
            assert "compiling with false failed" in got["warnings"][0]
            assert "contextual_loss.engine.kernels.status()" in got["warnings"][0]
            continue
        assert got["status"].startswith(f"in use: {tmp_path}"), got["status"]
        assert f"removed {built.name}: damaged" in got["status"]
        assert got["warnings"] == []
        (rebuilt,) = (tmp_path / case.replace(" ", "-")).iterdir()
        key = built.name.rsplit("-", 1)[0]
        assert rebuilt.name == f"{key}-{hashlib.sha256(rebuilt.read_bytes()).hexdigest()}.so"
    assert not (tmp_path / "constructor-ran").exists()


# --- concurrent first builds ------------------------------------------------------------------------

CONCURRENT = """
import time
while not os.path.exists(os.environ["CL_TEST_GO"]):
    time.sleep(0.005)
result = build.build_and_load()
print(json.dumps({"status": result.status, "abi": result.lib.cl_abi_version() if result.lib else None}))
"""


@needs_cc
def test_concurrent_first_builds_both_end_with_a_working_library(tmp_path):
    real = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    # A compiler that takes a moment, so that both processes find the cache empty and both build.
    slow = _script(tmp_path / "slow-cc", f'#!/bin/sh\nsleep 0.3\nexec {real} "$@"\n')
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = _env(CC=str(slow), CONTEXTUAL_LOSS_CACHE_DIR=str(cache), CL_TEST_GO=str(go))
    procs = [_python(PRELUDE + CONCURRENT, env) for _ in range(2)]
    go.touch()
    results = [_result(proc) for proc in procs]
    for got in results:
        assert got["status"].startswith(f"in use: {cache}/strip_kernels-"), got["status"]
        assert got["abi"] == ABI_VERSION
    files = list(cache.iterdir())
    assert files and all(path.name.endswith(".so") and not path.name.startswith(".") for path in files)
    for path in files:  # whatever each process published is whole and verifiable
        assert path.name.split("-")[-1] == hashlib.sha256(path.read_bytes()).hexdigest() + ".so"


# --- the compiler: $CC exactly, its error text, a bound on the time -----------------------------------


def test_missing_cc_is_an_error_not_a_switch_to_cc(tmp_path, monkeypatch):
    _isolated_env(monkeypatch, tmp_path / "cache", CC="/nonexistent/cc")
    result = _build.build_and_load()
    assert result.lib is None
    assert result.status == "the C compiler CC='/nonexistent/cc' was not found (unset CC to use cc, gcc or clang)"
    assert not (tmp_path / "cache").exists()  # nothing was built with another compiler


@pytest.mark.skipif(shutil.which("false") is None, reason="needs the 'false' command")
def test_cc_false_names_the_compiler_and_its_exit_status(tmp_path, monkeypatch):
    _isolated_env(monkeypatch, tmp_path, CC="false")
    result = _build.build_and_load()
    assert result.lib is None
    assert result.status == "compiling with false failed (exit status 1): no output"
    assert list(tmp_path.iterdir()) == []


def test_failing_compiler_output_is_kept_in_the_status(tmp_path, monkeypatch):
    fake = _script(tmp_path / "fake-cc", '#!/bin/sh\necho "fake-cc: error: line one" >&2\necho "line two"\nexit 3\n')
    _isolated_env(monkeypatch, tmp_path / "cache", CC=str(fake))
    status = _build.build_and_load().status
    assert status.startswith(f"compiling with {fake} failed (exit status 3): ")
    assert "fake-cc: error: line one | line two" in status
    assert "\n" not in status


@needs_cc
def test_real_compiler_error_and_cc_with_arguments(tmp_path, monkeypatch):
    # $CC may carry arguments; this one makes the real compiler fail on a missing header.
    _isolated_env(monkeypatch, tmp_path / "cache", CC="cc -include /nonexistent/missing_header.h")
    status = _build.build_and_load().status
    assert status.startswith("compiling with cc -include /nonexistent/missing_header.h failed (exit status 1): ")
    assert "missing_header.h" in status and "No such file or directory" in status


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """Whether the process ``pid`` has died (a SIGKILL is delivered asynchronously: poll for a while)."""
    deadline = time.monotonic() + wait_s
    while not _dead(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # killed; a container's init may not reap it


@needs_linux
@pytest.mark.parametrize("step", ["version", "compile"])
def test_build_time_is_bounded_and_the_compiler_is_killed(step, tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    hang = f"sleep 60 &\necho $! > {pid_file}\nwait\n"
    version = hang if step == "version" else "echo slow-cc 1.0\nexit 0\n"
    fake = _script(tmp_path / "slow-cc", f'#!/bin/sh\nif [ "$1" = --version ]; then\n{version}fi\n{hang}')
    _isolated_env(monkeypatch, tmp_path / "cache", CC=str(fake), **{_build._TIMEOUT_ENV: "0.5"})
    result = _build.build_and_load()
    assert result.lib is None
    assert result.status == f"compiling with {fake} gave up: the build took more than 0.5 s"
    assert _gone(int(pid_file.read_text()))  # the compiler's children are killed with it


def test_no_compiler_found(tmp_path, monkeypatch):
    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert _build.build_and_load().status == "no C compiler found (set CC)"


# --- warnings: once per process, none when the user turned the kernels off ------------------------

WARNINGS = """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = [build.load_library() for _ in range(3)]
    if results[0].lib is None and not results[0].disabled:
        build.warn_fallback("a second reason")  # e.g. the caller's ABI check: still one warning
assert all(result is results[0] for result in results)  # cached per process
print(json.dumps({"status": results[0].status, "warnings": [[w.category.__name__, str(w.message)] for w in caught]}))
"""


@pytest.mark.parametrize(
    ("case", "env", "count"),
    [
        ("failing build", {"CC": "false"}, 1),
        ("CONTEXTUAL_LOSS_NATIVE=0", {"CONTEXTUAL_LOSS_NATIVE": "0"}, 0),
        ("CONTEXTUAL_LOSS_KERNELS=eager", {"CONTEXTUAL_LOSS_KERNELS": "eager"}, 0),
    ],
)
def test_fallback_warns_once_per_process_and_not_when_disabled(case, env, count, tmp_path):
    got = _standalone(WARNINGS, CONTEXTUAL_LOSS_CACHE_DIR=str(tmp_path), **env)
    assert len(got["warnings"]) == count, got
    if count:
        ((category, message),) = got["warnings"]
        assert category == "NativeKernelsWarning"
        assert got["status"] in message and "contextual_loss.engine.kernels.status()" in message
    else:
        assert got["status"].startswith("disabled by CONTEXTUAL_LOSS_")


@needs_cc
def test_warm_cache_loads_without_warning_and_a_refused_cache_warns_once(built, tmp_path):
    warm = _standalone(WARNINGS, CONTEXTUAL_LOSS_CACHE_DIR=str(_copy_into(built, tmp_path / "warm").parent))
    assert warm["warnings"] == [] and warm["status"] == f"in use: {tmp_path / 'warm' / built.name}"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    refused = _standalone(WARNINGS, CONTEXTUAL_LOSS_CACHE_DIR=str(shared))  # built for this process only
    assert refused["status"].startswith("in use (built for this process only; cache not used: ")
    ((category, message),) = refused["warnings"]
    assert category == "NativeKernelsWarning" and "rebuilt in every process" in message
    assert list(shared.iterdir()) == []  # nothing written to the unsafe directory


def test_load_library_is_cached_and_thread_safe(monkeypatch):
    calls = []

    def slow_build() -> _build.LoadResult:
        calls.append(threading.get_ident())
        time.sleep(0.05)
        return _build.LoadResult(None, "a reason", None)

    monkeypatch.setattr(_build, "_result", None)
    monkeypatch.setattr(_build, "_warned", False)
    monkeypatch.setattr(_build, "build_and_load", slow_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(_build.load_library(warn=False))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 8 and all(r is results[0] for r in results)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _build.load_library()
        _build.load_library()
    assert [w.category for w in caught] == [_build.NativeKernelsWarning]


@pytest.mark.parametrize(("name", "value"), [("CONTEXTUAL_LOSS_NATIVE", "off"), ("CONTEXTUAL_LOSS_KERNELS", "eager")])
def test_disabled_by_the_environment(name, value, tmp_path, monkeypatch):
    _isolated_env(monkeypatch, tmp_path, **{name: value})
    result = _build.build_and_load()
    assert result.lib is None and result.disabled and result.status.startswith(f"disabled by {name}")


# --- the directory walk and the load itself ----------------------------------------------------------


@needs_linux
def test_missing_directories_are_created_private(tmp_path):
    fd = _build._open_private_dir(tmp_path / "a" / "b")
    os.close(fd)
    for path in (tmp_path / "a", tmp_path / "a" / "b"):
        assert path.stat().st_mode & 0o777 == 0o700


@needs_linux
def test_whole_path_check_refuses_a_parent_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    fd = _build._open_private_dir(shared / "cache")  # where the load uses a sealed copy: only the directory counts
    os.close(fd)
    with pytest.raises(_build._RefusedError, match="shared is writable by group or others"):
        _build._open_private_dir(shared / "cache", whole_path=True)
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot replace what is ours
    os.close(_build._open_private_dir(shared / "cache", whole_path=True))


@needs_cc
def test_loaded_bytes_are_a_sealed_copy_of_the_verified_file(built, tmp_path, monkeypatch):
    library = _copy_into(built, tmp_path / "cache")
    _isolated_env(monkeypatch, tmp_path / "cache")
    result = _build.build_and_load()
    assert result.path == library and result.status == f"in use: {library}"
    fd = int(result.lib._name.rsplit("/", 1)[1])
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SEAL):
        assert seals & seal
    with open(f"/proc/self/fd/{fd}", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() + ".so" == library.name.rsplit("-", 1)[1]


@needs_cc
def test_loading_by_path_where_memfd_is_unusable(built, tmp_path, monkeypatch):
    library = _copy_into(built, tmp_path / "cache")
    _isolated_env(monkeypatch, tmp_path / "cache")

    def no_memfd(data: bytes):
        raise OSError("simulated: no executable memfd")

    monkeypatch.setattr(_build, "_dlopen_memfd", no_memfd)
    result = _build.build_and_load()
    assert result.status == f"in use: {library} (memfd unusable (simulated: no executable memfd), loaded by path)"
    assert result.lib._name == str(library) and result.lib.cl_abi_version() == ABI_VERSION
    tmp_path.chmod(0o775)  # loading by path needs every parent safe from other users
    result = _build.build_and_load()
    assert result.lib is None
    assert result.status == f"loading failed: _RefusedError: {tmp_path} is writable by group or others (mode 0775)"
    tmp_path.chmod(0o755)
    monkeypatch.setattr(_build, "_USE_MEMFD", False)  # other systems: no memfd at all, the whole path checked
    result = _build.build_and_load()
    assert result.status == f"in use: {library}" and result.lib._name == str(library)


@needs_cc
def test_unwritable_cache_still_loads_what_was_built(built, tmp_path, monkeypatch):
    _isolated_env(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(_build, "_compile", lambda argv, deadline: built.read_bytes())  # as built this session

    def full(dir_fd: int, name: str, data: bytes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_build, "_publish", full)
    result = _build.build_and_load()
    assert result.lib is not None and result.path is None and result.lib.cl_abi_version() == ABI_VERSION
    cache = tmp_path / "cache"
    assert (
        result.status
        == f"in use (built for this process only; could not write {cache}: [Errno 28] No space left on device)"
    )


@needs_cc
def test_refused_user_cache_falls_back_to_the_temp_directory_and_says_so(built, tmp_path, monkeypatch):
    _isolated_env(monkeypatch, tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    monkeypatch.delenv("CONTEXTUAL_LOSS_CACHE_DIR")
    user = tmp_path / "xdg" / "contextual-loss"
    user.mkdir(parents=True)
    user.chmod(0o775)  # e.g. made by another program under umask 002
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    library = _copy_into(built, tmp_path / "tmp" / f"contextual-loss-{os.geteuid()}")
    result = _build.build_and_load()
    assert result.path == library
    assert result.status == (
        f"in use: {library} (skipped {user}: cache directory {user} is writable by group or others (mode 0775))"
    )
    assert list(user.iterdir()) == []
