"""Where the VGG19 weights come from: torchvision's ImageNet checkpoint, a local file, or none.

``weights="imagenet"`` means torchvision's ``VGG19_Weights.IMAGENET1K_V1``, read from the torch
hub cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) and
downloaded there when missing. Machines without internet get :class:`WeightsNotFoundError`,
which says where the file was looked for and how to get it: ``contextual-loss download-weights``
on a machine with internet, then copy the file over or pass ``weights=PATH``.

A path names a state dict in torchvision's format (what
``torch.save(torchvision.models.vgg19().state_dict(), path)`` writes); the ``classifier.*`` keys
are optional and ignored. ``None`` keeps torchvision's random initialisation.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torchvision.models import VGG19_Weights

__all__ = [
    "RELOADABLE_SOURCES",
    "VGG19_IMAGENET_URL",
    "WeightsArg",
    "WeightsNotFoundError",
    "WeightsSource",
    "download_vgg19_weights",
    "load_vgg19_state_dict",
    "vgg19_cache_path",
    "weights_source",
]

#: What ``weights=`` accepts: ``"imagenet"``, a torchvision enum member, a path, a state dict or ``None``.
WeightsArg = Union[str, os.PathLike[str], "VGG19_Weights", Mapping[str, Tensor], None]


#: torchvision's ``VGG19_Weights.IMAGENET1K_V1.url``, written here so that finding, downloading and
#: naming the file never imports torchvision (a test checks it against torchvision). The file name
#: ends in the first hex digits of the file's SHA-256, which the download checks.
VGG19_IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"


def _is_torchvision_weights(weights: object) -> bool:
    """Whether ``weights`` is a torchvision ``VGG19_Weights`` member (only possible once torchvision is imported)."""
    models = sys.modules.get("torchvision.models")
    return models is not None and isinstance(weights, models.VGG19_Weights)


#: Where an extractor's weights came from: torchvision's ImageNet checkpoint in the torch hub cache, a
#: file, an in-memory state dict or the random initialisation.
WeightsSource = Literal["imagenet", "file", "state_dict", "random"]

#: The sources a loss reads again by itself when it is constructed: checkpoints need not hold their
#: weights. A state dict passed in memory or random weights cannot be recovered that way.
RELOADABLE_SOURCES: tuple[WeightsSource, ...] = ("imagenet", "file")

_FEATURE_KEY = re.compile(r"features\.(\d+)\.(weight|bias)")


class WeightsNotFoundError(FileNotFoundError):
    """The VGG19 weights are neither on disk nor downloadable (e.g. a machine without internet)."""


def vgg19_cache_path() -> Path:
    """Where the torch hub cache keeps torchvision's ImageNet VGG19 checkpoint (honours ``TORCH_HOME``).

    Returns:
        ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth`` (by default under ``~/.cache/torch``),
        whether or not the file exists. Neither this function nor a download imports torchvision.

    Examples:
        >>> from contextual_loss.features import vgg19_cache_path
        >>> vgg19_cache_path().name
        'vgg19-dcbb9e9d.pth'

    """
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG19_IMAGENET_URL)


def _hash_prefix(url: str) -> str | None:
    # torchvision names its checkpoints "<name>-<first hex digits of the sha256>.pth".
    match = re.search(r"-([a-f0-9]+)\.", os.path.basename(url))
    return match.group(1) if match else None


def download_vgg19_weights(dest: str | os.PathLike[str] | None = None, *, progress: bool = False) -> Path:
    """Download torchvision's ImageNet VGG19 checkpoint (548 MB) and check its SHA-256 prefix.

    Args:
        dest: a folder to write the file into; ``None`` (default) means the torch hub cache, where
            ``weights="imagenet"`` finds it.
        progress: show a progress bar on stderr.

    Returns:
        The path of the checkpoint. An existing file is kept, not downloaded again.

    Raises:
        WeightsNotFoundError: the download failed (no network, HTTP error, ...) or the file failed
            its SHA-256 check.
        NotADirectoryError: ``dest`` or one of its parents is a file.

    Examples:
        >>> path = download_vgg19_weights()  # 548 MB from download.pytorch.org  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'vgg19-dcbb9e9d.pth'

    """
    folder = vgg19_cache_path().parent if dest is None else Path(dest)
    target = folder / os.path.basename(VGG19_IMAGENET_URL)
    if target.is_file():
        return target
    blocking = _blocking_file(folder)
    if blocking is not None:
        raise NotADirectoryError(f"cannot save the weights into {folder}: {blocking} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # Writes to a temporary file in ``folder`` and renames it, so no partial file is left behind.
        torch.hub.download_url_to_file(
            VGG19_IMAGENET_URL, str(target), hash_prefix=_hash_prefix(VGG19_IMAGENET_URL), progress=progress
        )
    except OSError as error:  # URLError, socket errors, SSL errors and HTTP errors are all OSErrors
        reason = f"downloading {VGG19_IMAGENET_URL} to {target} failed ({error})"
        raise WeightsNotFoundError(_missing_message(reason)) from error
    except RuntimeError as error:  # torch.hub's only RuntimeError here: the SHA-256 prefix does not match
        reason = f"the file downloaded from {VGG19_IMAGENET_URL} failed its SHA-256 check ({error}); nothing was kept"
        raise WeightsNotFoundError(_missing_message(reason)) from error
    return target


def _blocking_file(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists, if it is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _missing_message(reason: str) -> str:
    cache = vgg19_cache_path()
    return (
        f"the ImageNet weights of VGG19 are not in the torch hub cache at {cache} ({reason}). On a machine "
        "with internet, run `contextual-loss download-weights` (add `--out DIR` to choose the folder) and copy "
        f"the file to {cache} here (or set TORCH_HOME to a folder holding hub/checkpoints/{cache.name}), or pass "
        "weights=PATH to the file; weights=None gives random weights"
    )


def _imagenet_state_dict(download: bool) -> Mapping[str, Any]:
    path = vgg19_cache_path()
    if not path.is_file():
        if not download:
            raise WeightsNotFoundError(_missing_message("download=False"))
        path = download_vgg19_weights()
    return _read(path)


def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights must be 'imagenet', None or the path of a VGG19 state dict file, got {str(path)!r}, "
            "which does not exist"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have no common base class
        raise ValueError(f"could not read the VGG19 state dict {str(path)!r}: {error}") from error
    if not isinstance(state, Mapping):
        raise ValueError(
            f"the file {str(path)!r} holds a {type(state).__name__}, expected a state dict (a mapping of names to "
            "tensors) as written by torch.save(torchvision.models.vgg19().state_dict(), path)"
        )
    return state


def _check_format(state: Mapping[str, Any], source: str) -> None:
    """Accept torchvision's key names only, so that a VGG16, VGG19-BN or wrapped checkpoint fails loudly."""
    foreign = [key for key in state if not (_FEATURE_KEY.fullmatch(str(key)) or str(key).startswith("classifier."))]
    if foreign:
        shown = ", ".join(repr(key) for key in foreign[:5])
        raise ValueError(
            f"{source} is not a torchvision VGG19 state dict: unexpected keys {shown}"
            f"{' ...' if len(foreign) > 5 else ''}; expected 'features.<index>.weight' / 'features.<index>.bias' "
            "(and optionally 'classifier.*'), as written by torch.save(torchvision.models.vgg19().state_dict(), path)"
        )


def load_vgg19_state_dict(weights: WeightsArg, *, download: bool = True) -> dict[str, Tensor] | None:
    """Resolve ``weights=`` to the convolution weights of VGG19's ``features``, keyed ``"<index>.weight"``.

    Args:
        weights: ``"imagenet"`` or ``VGG19_Weights.IMAGENET1K_V1`` (torch hub cache), a path to a
            torchvision-format state dict, an in-memory state dict, or ``None`` (random weights).
        download: fetch the ImageNet checkpoint when it is not cached; with ``False`` a missing
            file raises at once.

    Returns:
        The ``features.*`` entries with the ``features.`` prefix removed (the key names of
        ``torchvision.models.vgg19().features``), or ``None`` for ``weights=None``.

    Raises:
        WeightsNotFoundError: the ImageNet checkpoint is missing and cannot be downloaded, or the
            path does not exist.
        ValueError: the file is unreadable or not a torchvision VGG19 state dict.
        TypeError: ``weights`` has an unsupported type.

    Examples:
        >>> load_vgg19_state_dict(None) is None  # random weights: nothing to load
        True

    """
    if weights is None:
        return None
    if _is_torchvision_weights(weights) or (isinstance(weights, str) and weights == "imagenet"):
        state, source = _imagenet_state_dict(download), f"the checkpoint at {vgg19_cache_path()}"
    elif isinstance(weights, (str, os.PathLike)):
        state, source = _read(Path(weights)), f"the file {os.fspath(weights)!r}"
    elif isinstance(weights, Mapping):
        state, source = weights, "the state dict passed as weights"
    else:
        raise TypeError(
            "weights must be 'imagenet', a path to a torchvision VGG19 state dict, a state dict or None, "
            f"got {type(weights).__name__} {weights!r}"
        )
    _check_format(state, source)
    return {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}


def weights_source(weights: WeightsArg) -> WeightsSource:
    """Where weights accepted by :func:`load_vgg19_state_dict` come from (see :data:`WeightsSource`).

    Args:
        weights: anything ``weights=`` accepts.

    Returns:
        ``"imagenet"``, ``"file"``, ``"state_dict"`` or ``"random"``.

    Examples:
        >>> weights_source("imagenet"), weights_source("vgg19.pth"), weights_source(None)
        ('imagenet', 'file', 'random')

    """
    if _is_torchvision_weights(weights) or (isinstance(weights, str) and weights == "imagenet"):
        return "imagenet"
    if isinstance(weights, (str, os.PathLike)):
        return "file"
    return "random" if weights is None else "state_dict"
