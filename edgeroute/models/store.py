"""Where the built models live, and building them once, safely, when they are missing.

A model directory is either complete (all three ONNX files, each matching the sha256 on its
card) or absent: builds go to a temporary sibling directory that is renamed into place only when
finished, so a reader never sees half-written files. An exclusive ``fcntl.flock`` on a lock file
beside the directory keeps two processes from building at once; the second waits, then finds the
first one's result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeroute.models.build import MODEL_NAMES, STUDENT, STUDENT_INT8, TEACHER, build_models
from edgeroute.models.card import ModelIntegrityError, load_card

RECIPE_VERSION = "digits-r2"
"""Names the default cache directory; bump it whenever the build recipe changes its output."""
MODELS_ENV = "EDGEROUTE_MODELS"
_STAGING_SUFFIX = ".building"
_RETIRED_SUFFIX = ".retired"


@dataclass(frozen=True)
class ModelSet:
    """The ONNX files of one complete, checked build."""

    directory: Path
    teacher: Path
    student: Path
    student_int8: Path


def default_models_dir() -> Path:
    """``$EDGEROUTE_MODELS`` if set, else ``~/.cache/edgeroute/models/<RECIPE_VERSION>``."""
    configured = os.environ.get(MODELS_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "edgeroute" / "models" / RECIPE_VERSION


def model_path(name: str, directory: Path | None = None) -> Path:
    """The ONNX file of model ``name`` (``teacher``, ``student`` or ``student-int8``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model '{name}'; expected one of {', '.join(MODEL_NAMES)}")
    return (directory if directory is not None else default_models_dir()) / f"{name}.onnx"


def _model_set(directory: Path) -> ModelSet:
    return ModelSet(
        directory=directory,
        teacher=model_path(TEACHER, directory),
        student=model_path(STUDENT, directory),
        student_int8=model_path(STUDENT_INT8, directory),
    )


def is_complete(directory: Path) -> bool:
    """Every model file is present and matches the sha256 on its card."""
    for name in MODEL_NAMES:
        try:
            card = load_card(model_path(name, directory))
        except (OSError, ValueError, ModelIntegrityError):
            return False
        if card.name != name:
            return False
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _own_files() -> set[str]:
    return {f"{name}{suffix}" for name in MODEL_NAMES for suffix in (".onnx", ".card.json")}


def _remove_stale_staging(directory: Path) -> None:
    """Drop directories left by builds that died; only the lock holder calls this."""
    for suffix in (_STAGING_SUFFIX, _RETIRED_SUFFIX):
        for stale in directory.parent.glob(f".{directory.name}.*{suffix}"):
            shutil.rmtree(stale, ignore_errors=True)


def _install(staging: Path, directory: Path) -> None:
    """Move a finished build into place.

    A directory holding only model files is swapped whole, so readers see the old set or the new
    one. A directory that also holds other files (a user's ``$EDGEROUTE_MODELS``) keeps them: the
    model files are replaced one by one instead, ONNX files before their cards.
    """
    if not directory.exists() or {e.name for e in directory.iterdir()} <= _own_files():
        _swap(staging, directory)
        return
    for name in sorted(_own_files(), key=lambda n: n.endswith(".card.json")):
        os.replace(staging / name, directory / name)


def build_once(directory: Path, *, complete: Callable[[Path], bool],
               build: Callable[[Path], object], what: str, force: bool = False,
               install: Callable[[Path, Path], None] | None = None) -> None:
    """Make ``directory`` hold a checked build: nothing if ``complete`` says it does (unless
    ``force``); else, under a lock shared by every process, ``build`` into a staging
    directory beside it and ``install`` that (default: swap the directory whole), so that
    readers see the old build or the new one, never half of one."""
    if complete(directory) and not force:
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory.parent / f".{directory.name}.lock"):
        if complete(directory) and not force:
            return
        _remove_stale_staging(directory)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=_STAGING_SUFFIX,
                                        dir=directory.parent))
        try:
            staging.chmod(0o755)
            build(staging)
            (install or _swap)(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not complete(directory):
        raise ModelIntegrityError(f"{directory}: the {what} built there fail their checks")


def _swap(staging: Path, directory: Path) -> None:
    """Put a finished build in place of ``directory``, whole."""
    if directory.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=_RETIRED_SUFFIX,
                                        dir=directory.parent))
        os.replace(directory, retired / "old")
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
        return
    os.replace(staging, directory)


def ensure_models(
    directory: Path | None = None,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> ModelSet:
    """The checked models in ``directory`` (default :func:`default_models_dir`), built if needed.

    Builds only when a file or card is missing or a file fails its sha256
    check, or always with ``force``.
    """
    directory = Path(directory) if directory is not None else default_models_dir()
    build_once(directory, complete=is_complete, build=lambda d: build_models(d, progress=progress),
               install=_install, what="models", force=force)
    return _model_set(directory)
