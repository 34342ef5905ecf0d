"""A user folder of images (recursive), with class labels from the first-level subfolders.

Files are listed once, sorted, so the order is deterministic. Without a separate eval folder a
fixed fraction is held out by a seeded permutation. Undecodable files raise `BadImage`, which the
pipeline skips and counts.
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath
from PIL import Image

from softvq_jax.data.sources.decode import read_image
from softvq_jax.utils.errors import UserError
from softvq_jax.utils.paths import expand_path


class MissingImages(UserError, FileNotFoundError):
  """The configured image folder does not exist or holds no images."""


EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def list_images(root: str | os.PathLike) -> tuple[list[epath.Path], list[int], list[str]]:
  """(files, labels, class names) under `root` (local or gs://); labels index the sorted
  first-level subfolders."""
  root = expand_path(root)
  if not root.is_dir():
    raise MissingImages(f"image folder {str(root)!r} does not exist (data.path / data.eval_path)")
  files = sorted(
    d / name  # walk(), not rglob: recursive globs are not supported on gs://
    for d, _, names in root.walk()
    for name in names
    if epath.Path(name).suffix.lower() in EXTENSIONS
  )
  if not files:
    raise MissingImages(
      f"no images ({', '.join(EXTENSIONS)}) found under {str(root)!r} (data.path / data.eval_path)"
    )
  classes = sorted(
    {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
  )
  index = {c: i for i, c in enumerate(classes)}
  labels = [
    index.get(p.relative_to(root).parts[0], 0) if len(p.relative_to(root).parts) > 1 else 0
    for p in files
  ]
  return files, labels, classes


class FolderSource:
  """Random access to a list of image files; `location` names them in error messages."""

  def __init__(self, files: list[epath.Path], labels: list[int], location: str = ""):
    self.files, self.labels = list(files), list(labels)
    self.location = location or f"{len(self.files)} image files"

  def __len__(self) -> int:
    return len(self.files)

  def load(self, index: int, draft: int | None = None) -> tuple[Image.Image, int]:
    """(image, label) of file `index`; `draft`: see sources.decode (data.jpeg_draft)."""
    return read_image(self.files[index], draft), self.labels[index]


def folder_sources(path: str, eval_path: str = "", eval_fraction: float = 0.1):
  """(train, eval) FolderSources: eval from `eval_path`, else a seeded held-out fraction."""
  files, labels, _ = list_images(path)
  where, held_where = f"data.path={str(path)!r}", f"data.path={str(path)!r} (held out)"
  if eval_path:
    eval_files, eval_labels, _ = list_images(eval_path)
    held_out = FolderSource(eval_files, eval_labels, f"data.eval_path={str(eval_path)!r}")
    return FolderSource(files, labels, where), held_out
  if len(files) < 2:
    raise ValueError(
      f"{path!r} has {len(files)} image; need >= 2 to hold one out (or set eval_path)"
    )
  n_eval = min(len(files) - 1, max(1, int(round(eval_fraction * len(files)))))
  perm = np.random.default_rng(0).permutation(len(files))
  held = set(perm[:n_eval].tolist())
  pick = lambda keep: [i for i in range(len(files)) if (i in held) == keep]
  train_idx, eval_idx = pick(False), pick(True)
  return (
    FolderSource([files[i] for i in train_idx], [labels[i] for i in train_idx], where),
    FolderSource([files[i] for i in eval_idx], [labels[i] for i in eval_idx], held_where),
  )
