"""The distributions: what the sdist and the wheel hold, built offline with the installed setuptools.

Policy (pyproject.toml, MANIFEST.in): the wheel holds the package only, with its C sources and
``py.typed``; the sdist holds the package and the whole test suite with everything the tests read,
so that the suite runs in an unpacked sdist as in a clone.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "contextual_loss"

#: Local state a working tree may hold; never part of a distribution, so not copied to the build.
LOCAL_STATE = (
    ".git",
    ".venv",
    ".worktrees",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "build",
    "dist",
    "*.egg-info",
    "runs",
    "outputs",
    "contextual-loss-demo",
    "*.py[cod]",
    "*.so",
    "*.pth",
)


@dataclass(frozen=True)
class Dists:
    source: Path  # the tree the distributions were built from
    source_files: set[str]  # its files before the build, relative paths
    sdist: list[str]  # member paths, without the leading "<name>-<version>/"
    sdist_root: Path  # the sdist unpacked
    wheel: list[str]
    metadata: str
    entry_points: str


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _setuptools_floor() -> str:
    # A regular expression rather than tomllib, which Python 3.10 lacks.
    requires = re.search(r"^requires = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M).group(1)
    return re.search(r'"setuptools>=([\d.]+)"', requires).group(1)


def _source_files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".so")
    }


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    import setuptools

    floor = _setuptools_floor()
    if _version(setuptools.__version__) < _version(floor):
        pytest.fail(
            f"building needs setuptools>={floor} (the build-system floor), this environment has "
            f"{setuptools.__version__}; pip install -e '.[dev]' installs it"
        )
    work = tmp_path_factory.mktemp("dist")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LOCAL_STATE))
    source_files = _source_files(source)
    out = work / "out"
    out.mkdir()
    # The PEP 517 hooks themselves, each in a fresh process as pip and build call them, but offline and
    # with the installed setuptools (one process for both leaves the wheel in a temporary folder).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for hook in ("build_sdist", "build_wheel"):
        call = f"import sys; from setuptools import build_meta; build_meta.{hook}(sys.argv[1])"
        done = subprocess.run(
            [sys.executable, "-c", call, out],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{hook} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (sdist_path,) = out.glob("*.tar.gz")
    (wheel_path,) = out.glob("*.whl")
    with tarfile.open(sdist_path) as archive:
        members = [m.name for m in archive.getmembers() if m.isfile()]
        archive.extractall(work / "unpacked", filter="data")
    top = members[0].split("/")[0]
    with zipfile.ZipFile(wheel_path) as wheel:
        names = wheel.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        metadata, entry_points = wheel.read(meta).decode(), wheel.read(entry_points).decode()
    return Dists(
        source=source,
        source_files=source_files,
        sdist=sorted(name.removeprefix(top + "/") for name in members),
        sdist_root=work / "unpacked" / top,
        wheel=sorted(names),
        metadata=metadata,
        entry_points=entry_points,
    )


@pytest.mark.slow
def test_the_wheel_holds_the_package_its_c_sources_and_py_typed(dists: Dists) -> None:
    expected = {
        name.removeprefix("src/")
        for name in dists.source_files
        if name.startswith("src/contextual_loss/")
        and (name.endswith(".py") or "/_native/" in name or name.endswith("/py.typed"))
    }
    c_sources = [name for name in expected if name.endswith((".c", ".h"))]
    assert c_sources, "the package has no C sources under a _native folder"
    assert "contextual_loss/py.typed" in expected
    missing = expected - set(dists.wheel)
    assert not missing, f"the wheel lacks {sorted(missing)}"
    tops = {name.split("/")[0] for name in dists.wheel}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"contextual_loss"}
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in dists.wheel)


@pytest.mark.slow
def test_the_metadata_declares_python_versions_typing_licence_and_command(dists: Dists) -> None:
    meta = dists.metadata
    assert "License-Expression: MIT" in meta
    assert "Classifier: Typing :: Typed" in meta
    floor = _version(re.search(r"^Requires-Python: >=(\S+)$", meta, re.M).group(1))
    classified = re.findall(r"^Classifier: Programming Language :: Python :: (3\.\d+)$", meta, re.M)
    versions = [_version(v) for v in classified]
    assert versions and min(versions) == floor, "the oldest version classifier must be requires-python's floor"
    assert versions == sorted(versions) and all(b[1] - a[1] == 1 for a, b in itertools.pairwise(versions))
    assert re.search(r"^contextual-loss = contextual_loss\.cli:main$", dists.entry_points, re.M)


@pytest.mark.slow
def test_the_sdist_holds_the_whole_test_suite_and_what_it_reads(dists: Dists) -> None:
    source = dists.source_files
    sdist = set(dists.sdist)
    needed = {
        name
        for name in source
        if (
            name.startswith(("src/", "tests/", "docs/", "experiments/", "benchmarks/"))
            or name in ("README.md", "LICENSE", "pyproject.toml", "MANIFEST.in", "CHANGELOG.md", "Makefile")
        )
        and not name.endswith(".gitignore")
    }
    assert not needed - sdist, f"the sdist lacks {sorted(needed - sdist)}"
    generated = {"PKG-INFO", "setup.cfg"}
    extra = {name for name in sdist - source - generated if ".egg-info/" not in name}
    assert not extra, f"the sdist holds files that are not in the source tree: {sorted(extra)}"
    assert not [name for name in sdist if name.startswith(".ci/") or name.endswith(".gitignore")]


@pytest.mark.slow
def test_the_unpacked_sdist_collects_every_test_file(dists: Dists) -> None:
    # The failure this guards against: an sdist with only some tests fails at collection with
    # "No module named 'tests.reference'". Collection imports every test module and its helpers.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(dists.sdist_root / "src")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=dists.sdist_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    collected = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    test_files = {
        path.relative_to(dists.sdist_root).as_posix() for path in (dists.sdist_root / "tests").rglob("test_*.py")
    }
    assert collected == test_files


def _relative_links(markdown: str) -> list[str]:
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)", markdown) + re.findall(r'<img[^>]+src="([^"]+)"', markdown)
    return [t for t in targets if not t.startswith(("http://", "https://", "#", "mailto:"))]


def test_the_readme_links_work_on_a_package_index_page() -> None:
    # The package index shows README.md as the project description, outside the repository.
    assert _relative_links((REPO / "README.md").read_text()) == []


def test_relative_link_detection() -> None:
    text = '[a](docs/x.md) ![b](fig.png) [c](https://e.org/x) [d](#usage) <img src="p.png">'
    assert _relative_links(text) == ["docs/x.md", "fig.png", "p.png"]
