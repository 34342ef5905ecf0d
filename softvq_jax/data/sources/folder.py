"""A user folder of images (recursive), with class labels from the first-level subfolders.

Files are listed once, sorted, so the order is deterministic. Without a separate eval folder a
fixed fraction is held out by a seeded permutation. Undecodable files raise `BadImage`, which the
pipeline skips and counts.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
from PIL import Image

from softvq_jax.data.pipeline import BadImage

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def list_images(root: str | pathlib.Path) -> tuple[list[pathlib.Path], list[int], list[str]]:
  """(files, labels, class names) under `root`; labels index the sorted first-level subfolders."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(
      f"image folder {str(root)!r} does not exist (data.path / data.eval_path)"
    )
  files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
  if not files:
    raise FileNotFoundError(
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
  """Random access to a list of image files."""

  def __init__(self, files: list[pathlib.Path], labels: list[int]):
    self.files, self.labels = list(files), list(labels)

  def __len__(self) -> int:
    return len(self.files)

  def load(self, index: int) -> tuple[Image.Image, int]:
    path = self.files[index]
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. truncated-file or EXIF warnings
        with Image.open(path) as im:
          im.load()
          image = im.copy()
    except Exception as e:  # PIL raises many types for broken files
      raise BadImage(f"{path}: {type(e).__name__}: {e}") from e
    return image, self.labels[index]


def folder_sources(path: str, eval_path: str = "", eval_fraction: float = 0.1):
  """(train, eval) FolderSources: eval from `eval_path`, else a seeded held-out fraction."""
  files, labels, _ = list_images(path)
  if eval_path:
    eval_files, eval_labels, _ = list_images(eval_path)
    return FolderSource(files, labels), FolderSource(eval_files, eval_labels)
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
    FolderSource([files[i] for i in train_idx], [labels[i] for i in train_idx]),
    FolderSource([files[i] for i in eval_idx], [labels[i] for i in eval_idx]),
  )
