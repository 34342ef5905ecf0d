"""Reconstruct image files through a tokenizer (encode -> decode) and write PNGs.

  python -m softvq_jax.reconstruct --model=runs/quick/exported photo.jpg photo_rec.png
  python -m softvq_jax.reconstruct --model=exported/softvq_b64 photos/ recs/      # a folder
  python -m softvq_jax.reconstruct --model=runs/quick a.jpg b.png recs/ --compare  # files -> folder

`--model`: an exported tokenizer dir (`python -m softvq_jax.export` / `convert tokenizer`), a
training workdir (EMA params) or a released Hugging Face `SoftVQVAE/*` folder (converted in
memory). Every image gets the ADM center crop at the model's resolution (short side resized,
center square) and is written as PNG: IN OUT.png for one file; otherwise OUT is a folder and each
input becomes OUT/<name>.png (a folder's images keep their relative paths). `--compare` writes the
crop and its reconstruction side by side. From Python:

  from softvq_jax.reconstruct import reconstruct
  reconstruct("runs/quick/exported", "photo.jpg", "photo_rec.png")   # -> [Path("photo_rec.png")]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags
from etils import epath

from softvq_jax.cli import inputs
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
USAGE = "usage: python -m softvq_jax.reconstruct --model=DIR IN [IN ...] OUT"

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Tokenizer: exported dir, training workdir or released HF folder.",
  flag_values=FLAGS,
)
_BATCH = flags.DEFINE_integer(
  "batch_size", 8, "Images per encode/decode call.", lower_bound=1, flag_values=FLAGS
)
_COMPARE = flags.DEFINE_bool(
  "compare", False, "Write crop | reconstruction side by side.", flag_values=FLAGS
)
_RAW = flags.DEFINE_bool("raw", False, "Raw instead of EMA params (workdirs).", flag_values=FLAGS)
flags.mark_flags_as_required(["model"], flag_values=FLAGS)


def _is_image(p: epath.Path) -> bool:
  return p.suffix.lower() in IMAGE_SUFFIXES


def _images_under(root: epath.Path) -> list[epath.Path]:
  """The image files anywhere under `root` (epath has no recursive glob on gs://: a walk)."""
  return [
    epath.Path(d) / f for d, _, files in root.walk() for f in files if _is_image(epath.Path(f))
  ]


def plan(
  sources: Sequence[str | os.PathLike], out: str | os.PathLike
) -> list[tuple[epath.Path, epath.Path]]:
  """(input, output PNG) pairs; every missing input is named in one UserError.

  One image file and an OUT ending in .png: that file. Otherwise OUT is a folder: a file becomes
  OUT/<stem>.png, a folder's images (recursively) OUT/<relative path>.png. Paths are local
  (`~` expanded) or gs://, read and written through epath.
  """
  from softvq_jax.weights.io import expand_path

  srcs = [expand_path(s) for s in sources]
  out = expand_path(out)
  cli.require_inputs([("", s, "path") for s in srcs])
  if len(srcs) == 1 and srcs[0].is_file() and _is_image(out):
    if out.suffix.lower() != ".png":
      raise UserError(f"{out}: reconstructions are written as PNG; name the output {out.stem}.png")
    return [(srcs[0], out)]
  if out.is_file():
    raise UserError(f"{out} is a file: several inputs or a folder need an output folder")
  pairs = []
  for s in srcs:
    if s.is_dir():
      found = sorted(_images_under(s))
      if not found:
        raise UserError(f"{s}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
      pairs += [(p, (out / p.relative_to(s)).with_suffix(".png")) for p in found]
    else:
      pairs.append((s, out / f"{s.stem}.png"))
  names = [o for _, o in pairs]
  if len(set(names)) != len(names):
    raise UserError(
      "two inputs map to the same output name; reconstruct them into separate folders"
    )
  return pairs


def _load(path: epath.Path):
  from PIL import Image, UnidentifiedImageError

  try:
    with path.open("rb") as f, Image.open(f) as im:
      im.load()
      return im.copy()
  except (OSError, UnidentifiedImageError) as e:
    raise UserError(f"{path}: not a readable image ({e})") from None


def reconstruct(
  model,
  sources: str | os.PathLike | Sequence[str | os.PathLike],
  out: str | os.PathLike,
  *,
  batch_size: int = 8,
  compare: bool = False,
  ema: bool = True,
) -> list[epath.Path]:
  """Reconstructs image files / folders into PNGs; returns the written paths.

  model: a path (see the module docstring) or a loaded `PretrainedTokenizer`. The images are
  read, center-cropped and reconstructed `batch_size` at a time (`colab.prepare_images` /
  `colab.reconstruct`, the same code as the notebook).
  """
  from softvq_jax import colab
  from softvq_jax.utils import images as image_utils
  from softvq_jax.weights import pretrained

  sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
  loaded = isinstance(model, pretrained.PretrainedTokenizer)
  cli.require_inputs(
    [("--model", None if loaded else model, "dir")] + [("", s, "path") for s in sources]
  )
  pairs = plan(sources, out)
  tok = model
  if not loaded:
    inputs.require(model, "tokenizer", "--model", released_ok=True)
    tok = colab.load_tokenizer(model, ema=ema)
  size = int(tok.config["model"]["image_size"])
  written = []
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i : i + batch_size]
    x = colab.prepare_images([_load(src) for src, _ in chunk], size)
    originals, recs = colab.reconstruct(tok, x, batch_size=batch_size)
    for (_, dst), orig, rec in zip(chunk, originals, recs):
      image = image_utils.side_by_side(orig[None], rec[None], ncols=1) if compare else rec
      image_utils.save_png(dst, image)
      written.append(dst)
  return written


def main(argv: Sequence[str]) -> None:
  """argv: the program name, then IN [IN ...] OUT (flags already parsed by cli.run)."""
  args = list(argv[1:])
  if len(args) < 2:
    raise UserError(f"need at least one input and an output; {USAGE}")
  written = reconstruct(
    _MODEL.value,
    args[:-1],
    args[-1],
    batch_size=_BATCH.value,
    compare=_COMPARE.value,
    ema=not _RAW.value,
  )
  where = written[0] if len(written) == 1 else args[-1]
  print(f"reconstructed {len(written)} image{'s' * (len(written) != 1)} into {where}")


def run(argv=None) -> None:
  """`python -m softvq_jax.reconstruct` on `argv` (default sys.argv[1:], no program name):
  exits 0, or 2 with one line on a user error (utils/cli.py). Tests call it in-process."""
  cli.run(main, FLAGS, None if argv is None else ["reconstruct", *argv], positionals=True)


if __name__ == "__main__":
  run()
