"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping

import numpy as np


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> pathlib.Path:
  """np.savez to a temporary file in the same folder, then rename (no torn state files)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def replace_dir(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Moves the finished folder `tmp` to `out`, replacing an existing `out` via a backup rename."""
  if out.exists():
    backup = out.with_name(f".{out.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    out.rename(backup)
    tmp.rename(out)
    shutil.rmtree(backup, ignore_errors=True)
  else:
    tmp.rename(out)
