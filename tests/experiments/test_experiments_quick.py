"""Each experiment's --quick mode meets its pass criterion and writes its section and figure.

The scripts run in-process (one torch import for all), writing into one temporary folder so
that the sections of RESULTS.md must coexist.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _load(name: str) -> ModuleType:
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))  # the scripts import their sibling _common
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("experiments")


def _section(out: Path, name: str) -> str:
    text = (out / "RESULTS.md").read_text()
    match = re.search(rf"<!-- BEGIN {name} -->\n(.*?)<!-- END {name} -->", text, re.S)
    assert match, f"no {name} section in RESULTS.md"
    return match.group(1)


def _run(name: str, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    status = _load(name).main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    last = printed.strip().splitlines()[-1]
    assert last.startswith("PASS: "), last
    section = _section(out, name)
    assert section.rstrip().endswith(last)  # the section ends with the printed verdict
    assert "_quick settings;" in section
    with Image.open(out / "figures" / f"{name}.png") as figure:
        assert figure.format == "PNG"
    assert (out / "figures" / f"{name}.png").stat().st_size < 200_000  # small PNGs
    return section


def test_properties(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section = _run("properties", out, capsys)
    assert section.count("| pass |") == 4


def test_misalignment(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section = _run("misalignment", out, capsys)
    fractions = dict(
        re.findall(r"^\| (shift \d px|rotation 5°) \| [\d.]+ \| [\d.]+% \| [\d.]+ \| ([\d.]+)%", section, re.M)
    )
    assert max(float(fractions[f"shift {s} px"]) for s in (0, 1, 2, 4)) < 10.0


def test_kl_divergence(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section = _run("kl_divergence", out, capsys)
    rhos = [float(r) for r in re.findall(r"^\| [125] \| ([\d.]+) \|", section, re.M)]
    assert len(rhos) == 3 and min(rhos) >= 0.9


def test_unique_matching(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section = _run("unique_matching", out, capsys)
    cells = dict(re.findall(r"^\| (CX|CoBi paper w_s=0\.5) \| (.*)$", section, re.M))
    cx = [float(v) for v in re.findall(r"([\d.]+)% /", cells["CX"])]
    cobi = [float(v) for v in re.findall(r"([\d.]+)% /", cells["CoBi paper w_s=0.5"])]
    assert max(cx) < 60.0 and min(cobi) > 85.0


def test_sections_coexist_in_order(out: Path) -> None:
    text = (out / "RESULTS.md").read_text()
    names = re.findall(r"<!-- BEGIN (\w+) -->", text)
    assert names == ["properties", "misalignment", "kl_divergence", "unique_matching"]
