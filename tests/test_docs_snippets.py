"""Every ```python block of README.md and docs/*.md runs as written.

Each Markdown file's blocks run in order in one namespace (a block may use what an earlier block of
the same file defined), in a temporary working directory, offline (no socket connects; the torch
hub cache is an empty temporary folder), with matplotlib's Agg backend and seeded generators. A
failing block is reported with its file and line; tracebacks point into the Markdown file.

Markers, as HTML comments on the line(s) right before a block's opening fence:

- ``<!-- needs-weights -->``: the block needs the downloaded VGG19 weights. Run offline, it must
  raise the documented ``WeightsNotFoundError`` with its advice. A file holding such a block also
  runs a second time "with weights": stand-in random weights in the torch hub cache (and as
  ``vgg19.pth`` in the working directory), where every block of the file must run.
- ``<!-- needs-cuda -->``: the block runs only where CUDA is available (skipped elsewhere).

``KNOWN_BROKEN`` lists the blocks that fail today, each ``xfail(strict=True)``: once a block is
fixed its test fails until the entry is removed, and an entry that matches no block fails too.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from contextual_loss.features.weights import WeightsNotFoundError

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKERS = ("needs-weights", "needs-cuda")
OFFLINE, WITH_WEIGHTS = "offline", "with-weights"

#: (file, a line of the block, mode) -> why it fails today. The README and each doc's owner fix them;
#: then the entry goes. Keyed by content, not line numbers, so that edits elsewhere keep them valid.
KNOWN_BROKEN: dict[tuple[str, str, str], str] = {}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<names>[\w\s-]+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    markers: frozenset[str]

    @property
    def file(self) -> str:
        return self.path.relative_to(REPO).as_posix()

    @property
    def name(self) -> str:
        return f"{self.file}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with the markers written right before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        fence, end = match["fence"], index + 1
        while end < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        if match["info"] == "python":
            code = textwrap.dedent("\n".join(lines[index + 1 : end]))
            blocks.append(Block(path, index + 1, code, _markers_before(lines, index, path)))
        index = end + 1
    return blocks


def _markers_before(lines: list[str], fence: int, path: Path) -> frozenset[str]:
    names: set[str] = set()
    line = fence - 1
    while line >= 0 and (marker := _MARKER.match(lines[line])):
        unknown = set(marker["names"].split()) - set(MARKERS)
        if unknown:
            raise ValueError(f"{path.name}:{line + 1}: unknown docs-test marker(s) {sorted(unknown)}; known: {MARKERS}")
        names.update(marker["names"].split())
        line -= 1
    return frozenset(names)


@dataclass(frozen=True)
class Outcome:
    error: BaseException | None
    report: str  # the traceback, or why the block did not run

    @property
    def skipped(self) -> bool:
        return self.error is None and bool(self.report)


def _refuse_network(*args: object, **kwargs: object) -> None:
    raise OSError(101, "Network is unreachable (the docs test runs offline)")


def _refuse_lookup(*args: object, **kwargs: object) -> None:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (the docs test runs offline)")


@functools.cache
def _stand_in_weights() -> Path:
    """Random weights for the whole of torchvision's VGG19 ``features`` (any layer a doc may name)."""
    from torchvision.models.vgg import cfgs, make_layers

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    torch.random.set_rng_state(generator_state)
    folder = tempfile.mkdtemp(prefix="docs-weights-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@contextlib.contextmanager
def _sandbox(with_weights: bool) -> Iterator[None]:
    """A temporary working directory and torch hub cache, no network, Agg plots, seeded generators."""
    root = Path(tempfile.mkdtemp(prefix="docs-snippets-"))
    (root / "work").mkdir()
    saved_env = {key: os.environ.get(key) for key in ("TORCH_HOME", "MPLBACKEND")}
    saved_cwd, saved_rng = Path.cwd(), torch.random.get_rng_state()
    saved_socket = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)
    try:
        os.environ["TORCH_HOME"], os.environ["MPLBACKEND"] = str(root / "torch_home"), "Agg"
        if with_weights:
            from contextual_loss.features import vgg19_cache_path

            vgg19_cache_path().parent.mkdir(parents=True)
            shutil.copy(_stand_in_weights(), vgg19_cache_path())
            shutil.copy(_stand_in_weights(), root / "work" / "vgg19.pth")
        socket.socket.connect = socket.socket.connect_ex = _refuse_network  # type: ignore[method-assign]
        socket.getaddrinfo = _refuse_lookup  # type: ignore[assignment]
        os.chdir(root / "work")
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = saved_socket  # type: ignore[method-assign]
        os.chdir(saved_cwd)
        torch.random.set_rng_state(saved_rng)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        shutil.rmtree(root, ignore_errors=True)


@functools.cache
def run_file(path: Path, with_weights: bool) -> dict[int, Outcome]:
    """Run every ```python block of ``path`` in order in one namespace; the outcome by fence line."""
    outcomes: dict[int, Outcome] = {}
    namespace: dict[str, object] = {"__name__": "__main__"}
    with _sandbox(with_weights):
        for block in extract_blocks(path):
            if "needs-cuda" in block.markers and not torch.cuda.is_available():
                outcomes[block.line] = Outcome(None, "needs CUDA, which this machine lacks")
                continue
            # Leading newlines put the code at its own lines, so tracebacks name the Markdown lines.
            code = compile("\n" * block.line + block.code, str(path), "exec")
            try:
                exec(code, namespace)
            except Exception as error:
                outcomes[block.line] = Outcome(error, "".join(traceback.format_exception(error)))
            else:
                outcomes[block.line] = Outcome(None, "")
    return outcomes


def _known_broken(block: Block, mode: str) -> str | None:
    reasons = [
        reason
        for (file, content, broken_mode), reason in KNOWN_BROKEN.items()
        if file == block.file and broken_mode == mode and content in block.code
    ]
    return reasons[0] if reasons else None


def _cases() -> Iterator[object]:
    for path in DOC_FILES:
        blocks = extract_blocks(path)
        modes = [OFFLINE] + ([WITH_WEIGHTS] if any("needs-weights" in b.markers for b in blocks) else [])
        for mode in modes:
            for block in blocks:
                reason = _known_broken(block, mode)
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                suffix = "" if mode == OFFLINE else f"-{mode}"
                yield pytest.param(block, mode, id=f"{block.name}{suffix}", marks=marks)


@pytest.mark.parametrize(("block", "mode"), list(_cases()))
def test_block_runs_as_written(block: Block, mode: str) -> None:
    outcome = run_file(block.path, mode == WITH_WEIGHTS)[block.line]
    if outcome.skipped:
        pytest.skip(outcome.report)
    if mode == OFFLINE and "needs-weights" in block.markers:
        assert isinstance(outcome.error, WeightsNotFoundError), (
            f"{block.name} is marked needs-weights: offline it must raise WeightsNotFoundError, "
            f"got {outcome.report or 'no error'}"
        )
        message = str(outcome.error)
        assert "contextual-loss download-weights" in message and "weights=PATH" in message, message
    else:
        assert outcome.error is None, f"{block.name} ({mode}) failed:\n{outcome.report}"


def test_every_known_broken_entry_names_one_existing_block() -> None:
    blocks = {path: extract_blocks(path) for path in DOC_FILES}
    for (file, content, mode), reason in KNOWN_BROKEN.items():
        matching = [b for b in blocks.get(REPO / file, []) if content in b.code]
        assert len(matching) == 1, (
            f"KNOWN_BROKEN entry {(file, content, mode)} ({reason}) matches {len(matching)} blocks"
        )
        if mode == WITH_WEIGHTS:
            assert any("needs-weights" in b.markers for b in blocks[REPO / file]), f"{file} never runs {mode}"


def test_extraction_markers_and_lines(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# t\n\n```python\na = 1\n```\n\n```bash\nls\n```\n"
        "<!-- needs-weights -->\n<!-- needs-cuda -->\n```python\nb = a + 1\n```\n"
        "- item\n\n  ```python\n  c = 2\n  ```\n~~~python\nd = '```'\n~~~\n"
    )
    blocks = extract_blocks(doc)
    assert [(b.line, b.code, set(b.markers)) for b in blocks] == [
        (3, "a = 1", set()),
        (12, "b = a + 1", {"needs-weights", "needs-cuda"}),
        (17, "c = 2", set()),
        (20, "d = '```'", set()),
    ]
    doc.write_text("<!-- needs-gpus -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="unknown docs-test marker"):
        extract_blocks(doc)


def test_failures_point_at_the_markdown_line_and_the_sandbox_is_offline(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```python\nimport os\nopen('written-by-a-doc-block.txt', 'w').close()\n"
        "assert os.environ['MPLBACKEND'] == 'Agg'\n```\n\ntext\n\n```python\nx = 1\nundefined_name\n```\n"
        "```python\nimport urllib.request\nurllib.request.urlopen('https://example.org', timeout=5)\n```\n"
        "```python\nfrom contextual_loss import ContextualLoss\nContextualLoss(layers='relu1_1')\n```\n"
    )
    environment = dict(os.environ)
    outcomes = run_file(doc, False)
    assert outcomes[1].error is None and not Path("written-by-a-doc-block.txt").exists()
    assert dict(os.environ) == environment
    assert isinstance(outcomes[9].error, NameError) and f'File "{doc}", line 11' in outcomes[9].report
    assert isinstance(outcomes[13].error, OSError)  # urllib's URLError: the name lookup was refused
    assert isinstance(outcomes[17].error, WeightsNotFoundError)
    assert "contextual-loss download-weights" in str(outcomes[17].error)
