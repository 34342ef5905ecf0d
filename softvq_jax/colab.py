"""Notebook helpers (Colab or any Jupyter): load a tokenizer, reconstruct images, grids, rFID.

Everything returns numpy arrays or PIL images, so it runs headless; `launch/colab/
softvq_eval.ipynb` is a few calls into this module. A tokenizer can be a released Hugging Face
`SoftVQVAE/*` folder (config.json + model.safetensors, converted in memory), an exported model dir
(`python -m softvq_jax.convert tokenizer` / `python -m softvq_jax.export`) or a training workdir.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from softvq_jax.data import preprocess
from softvq_jax.utils import images as image_utils
from softvq_jax.weights import pretrained
from softvq_jax.weights.io import expand_path


def load_tokenizer(path: str | os.PathLike, *, ema: bool = True) -> pretrained.PretrainedTokenizer:
  """A tokenizer from a released HF folder, an exported model dir, or a training workdir (local
  or gs://)."""
  path = expand_path(path)
  released = path / "model.safetensors"
  if released.is_file() and (path / "config.json").is_file() and not (path / "params").exists():
    from softvq_jax.weights.tokenizer import load_reference_tokenizer

    model, params, config = load_reference_tokenizer(path / "config.json", released)
    return pretrained.PretrainedTokenizer(model, params, config)
  return pretrained.load_tokenizer(path, ema=ema)


def _to_pil(item: Any) -> Image.Image:
  if isinstance(item, Image.Image):
    return item
  if isinstance(item, (bytes, bytearray)):
    return Image.open(io.BytesIO(item))
  if isinstance(item, (str, os.PathLike)):  # local or gs://
    return Image.open(io.BytesIO(expand_path(item).read_bytes()))
  return Image.fromarray(image_utils.to_uint8(np.asarray(item), rounding="round"))


def prepare_images(items: Iterable[Any], image_size: int) -> np.ndarray:
  """Paths, bytes, PIL images or arrays -> float32 (N, S, S, 3) in [-1, 1] (ADM center crop)."""
  crops = [preprocess.center_crop_arr(_to_pil(it), image_size) for it in items]
  if not crops:
    raise ValueError("no images given")
  return preprocess.to_float(np.stack(crops))


def bundled_photos(split: str = "eval") -> list[Image.Image]:
  """The photos that ship with scikit-image/scikit-learn (offline): 'train' (9) or 'eval' (2)."""
  from softvq_jax.data.sources.photos import PhotoSource

  src = PhotoSource(split)
  return [src.load(i)[0] for i in range(len(src))]


def upload_images() -> list[Image.Image]:
  """Colab's file picker -> PIL images (outside Colab: raises, use prepare_images(paths))."""
  try:
    from google.colab import files  # type: ignore[import-not-found]
  except ImportError as e:
    raise RuntimeError("upload_images() needs Google Colab; pass file paths instead") from e
  return [Image.open(io.BytesIO(data)) for data in files.upload().values()]


def reconstruct(
  tokenizer: pretrained.PretrainedTokenizer, images: np.ndarray, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
  """float [-1, 1] images -> (originals, reconstructions) as uint8 (N, S, S, 3), ADM rounding."""
  recs = []
  for i in range(0, len(images), batch_size):
    z, _ = tokenizer.encode(images[i : i + batch_size])
    recs.append(np.asarray(tokenizer.decode(z)))
  rec = np.concatenate(recs)
  return image_utils.to_uint8(images), image_utils.to_uint8(rec)


def image_metrics_table(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, list]:
  """Per-image PSNR and SSIM (uint8, data range 255), as plain Python floats (they print as
  21.34, not np.float64(21.34))."""
  from softvq_jax.evaluation import image_metrics

  return {
    k: [float(v) for v in np.asarray(fn(originals, reconstructions, 255.0))]
    for k, fn in (("psnr", image_metrics.psnr), ("ssim", image_metrics.ssim))
  }


def grid(images: np.ndarray, ncols: int = 8) -> Image.Image:
  """(N, H, W, 3) uint8 or [-1, 1] floats -> one PIL image (a grid)."""
  return Image.fromarray(image_utils.make_grid(images, ncols=ncols))


def comparison(originals: np.ndarray, reconstructions: np.ndarray, ncols: int = 4) -> Image.Image:
  """Each original followed by its reconstruction, `ncols` pairs per row."""
  return Image.fromarray(image_utils.side_by_side(originals, reconstructions, ncols=ncols))


def rfid(
  tokenizer: pretrained.PretrainedTokenizer | str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  data: str = "photos",
  data_path: str = "",
  num_images: int = 0,
  crops: int = 4,
  inception_path: str | None = None,
  inception_random_init: bool = False,
  batch_size: int = 8,
  smoke_test: bool = False,
) -> dict[str, Any]:
  """rFID/PSNR/SSIM on a small set (the bundled photos or an image folder); see evaluate.py.

  `crops` > 1 adds fixed random crops per image (the photos are few); the published protocol is
  ImageNet val with crops=1 (`python -m softvq_jax.evaluate`). Without `inception_path` and
  `inception_random_init` it raises an error naming the missing weights.
  """
  import ml_collections

  from softvq_jax.evaluation import common, tokenizer_eval

  cfg = {"name": data, "num_workers": 2, "prefetch": 2}
  if data_path:
    cfg.update(path=data_path, eval_path=data_path)
  return tokenizer_eval.evaluate_tokenizer(  # plain Python floats (common.plain)
    tokenizer,
    out_dir,
    data_cfg=ml_collections.ConfigDict(cfg),
    num_images=num_images,
    crops=crops,
    batch_size=batch_size,
    inception_path=inception_path,
    inception_random_init=inception_random_init,
    feature_fn=common.tiny_feature_fn() if smoke_test else None,
    resume=False,
    log_every_s=5.0,
  )


def show(images: Sequence[Image.Image] | Image.Image) -> None:
  """Displays PIL images inline in a notebook (prints their sizes elsewhere)."""
  items = [images] if isinstance(images, Image.Image) else list(images)
  try:
    from IPython.display import display
  except ImportError:
    display = print
  for im in items:
    display(im)


# Four recognisable ImageNet classes (golden retriever, otter, giant panda, ice cream), used only
# when the generator has ImageNet's 1000 classes.
IMAGENET_EXAMPLE_CLASSES = (207, 360, 387, 974)


def default_classes(num_classes: int, count: int = 8) -> list[int]:
  """`count` labels from the model's own range: spread evenly over [0, num_classes), or, for a
  1000-class (ImageNet) model, a few recognisable classes repeated."""
  if num_classes == 1000:
    return [IMAGENET_EXAMPLE_CLASSES[i % 4] for i in range(count)]
  return [int(c) for c in np.linspace(0, num_classes - 1, count).round().astype(int)]


def sample(
  sit: Any,
  tokenizer: Any = None,
  class_labels: Sequence[int] | None = None,
  *,
  steps: int = 50,
  cfg_scale: float = 1.75,
  cfg_interval: tuple[float, float] = (0.0, 0.7),
  sampler: str | None = None,
  seed: int = 0,
  batch_size: int = 16,
) -> np.ndarray:
  """Class-conditional samples -> uint8 (N, S, S, 3): noise -> SiT sampler with CFG -> decode.

  sit: a generator model dir (converted release or trained here), a training workdir, or a loaded
  `generate.Generator`; tokenizer: its tokenizer (path or loaded; default: the recorded one).
  class_labels: None = `default_classes` of the model (its own label range).
  sampler: "sde" (the published one; 250 steps for the paper's numbers), "ode", or for a DiT
  "diffusion" (default: sde for SiT, diffusion for DiT).
  """
  from softvq_jax.sampling import generate as g

  gen = sit if isinstance(sit, g.Generator) else g.load_generator(sit, tokenizer)
  if class_labels is None:
    class_labels = default_classes(gen.model.num_classes)
  settings = g.SamplerSettings(
    sampler=sampler or ("diffusion" if gen.is_dit else "sde"),
    steps=steps,
    cfg_scale=cfg_scale,
    cfg_interval=tuple(cfg_interval),
  )
  labels = np.asarray(class_labels, np.int64)
  return g.generate_images(gen, labels, settings, batch_size=batch_size, seed=seed)
