"""User paths: local or cloud (`gs://`, `s3://`), always through `etils.epath`.

`pathlib.Path("gs://b/runs").absolute()` silently becomes `<cwd>/gs:/b/runs`; `user_path` keeps
URIs as they are and makes local paths absolute, so every process of a job agrees on the place.
"""

from __future__ import annotations

import os

from etils import epath


def is_uri(path: str | os.PathLike) -> bool:
  """True for `scheme://...` paths (gs, s3, ...), which are never made absolute."""
  return "://" in os.fspath(path)


def user_path(path: str | os.PathLike) -> epath.Path:
  """An epath.Path for a user-given path: URIs unchanged, local paths absolute."""
  p = epath.Path(path)
  return p if is_uri(path) else p.absolute()


def expand_path(path: str | os.PathLike) -> epath.Path:
  """`user_path` with `~` expanded (local paths)."""
  return user_path(epath.Path(path).expanduser())
