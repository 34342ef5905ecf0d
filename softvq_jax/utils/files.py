"""Atomic file writes (a reader never sees a half-written file) with normal permissions.

Local paths: a temporary file in the same folder, then a rename; `mkstemp` creates 0600 files,
so the result gets the mode `open()` would give (0666 minus the umask). Cloud paths (`gs://`):
an object appears whole when its upload finishes, so it is written in place through epath.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO

import numpy as np
from etils import epath

from softvq_jax.utils.paths import is_uri


def _umask() -> int:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)  # elsewhere: read it by setting it (and restore it at once)
  os.umask(mask)
  return mask


def file_mode() -> int:
  """0o666 minus the umask: the mode `open()` gives a new file."""
  return 0o666 & ~_umask()


def dir_mode() -> int:
  """0o777 minus the umask: the mode `mkdir` gives a new folder (mkdtemp's are 0700)."""
  return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Opens `path` for writing so that it appears only complete (and not at all on an error)."""
  if is_uri(path):
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open(mode) as f:
      yield f
    return
  p = pathlib.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
    os.chmod(tmp, file_mode())
    os.replace(tmp, p)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]):
  """np.savez written atomically (no torn state files)."""
  with atomic_open(path) as f:
    np.savez(f, **arrays)
  return path if is_uri(path) else pathlib.Path(path)


def make_public(path: str | os.PathLike) -> None:
  """Gives a finished local file (or folder tree) the modes open()/mkdir would have given."""
  if is_uri(path):
    return
  p = pathlib.Path(path)
  for q in [p, *p.rglob("*")] if p.is_dir() else [p]:
    os.chmod(q, dir_mode() if q.is_dir() else file_mode())


def replace_dir(tmp: epath.Path, out: epath.Path, last: str = "") -> None:
  """Moves the finished folder `tmp` to `out`, replacing an existing `out`.

  Local: one rename (an existing `out` goes through a backup rename first). On URIs (no atomic
  folder rename): `out` is replaced file by file, the file named `last` moved last, so a reader
  that checks for it never sees a partial folder.
  """
  tmp, out = epath.Path(tmp), epath.Path(out)
  if is_uri(out):
    if out.exists():
      out.rmtree()
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == last):
      f.rename(out / f.name)
    tmp.rmtree(missing_ok=True)
  elif out.exists():
    backup = out.parent / f".{out.name}.old"
    backup.rmtree(missing_ok=True)
    out.rename(backup)
    tmp.rename(out)
    backup.rmtree(missing_ok=True)
  else:
    tmp.rename(out)
