"""Input pipelines: one contract (see pipeline.py) for the bundled photos, folders and ImageNet.

`SOURCES` is the registry from `data.name` to a source builder `(data_cfg, split, process_count)
-> source` ("train" | "eval"); `DATASETS` the known names. Generators read latents: `latents` (a
cache made by `python -m softvq_jax.data.cache_latents`, data.path = the cache dir; see latents/)
or `latents_online` (images of data.image_source = photos|folder|imagenet, with that dataset's
data.* keys, encoded on the fly by data.tokenizer). data/ holds no model code, so the online
encoder is built by the generator task (`softvq_jax.training.online_latents`); here its source
builder gives the images. ImageNet prepared as tfrecord (data.reader; local or gs://) is read
in order by streams.py for training and evaluation; uses that need random access refuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from softvq_jax.data import pipeline
from softvq_jax.data.pipeline import EvalData, TrainData
from softvq_jax.utils.errors import UserError

IMAGE_DATASETS = ("photos", "folder", "imagenet")
LATENT_DATASETS = ("latents", "latents_online")
SPLITS = ("train", "eval")
ONLINE_LATENTS_HELP = (
  "data.name='latents_online' encodes images with a tokenizer during training, and data/ holds "
  "no model code: the generator task builds it (softvq_jax.training.online_latents, through "
  "GeneratorTask.build_data). Train with python -m softvq_jax.main --config=configs/sit_s.py "
  "--config.data.name=latents_online --config.data.tokenizer=/path/to/tokenizer, or cache the "
  "latents once (python -m softvq_jax.data.cache_latents) and use data.name=latents"
)


def _photos(data_cfg, split, process_count):
  from softvq_jax.data.sources.photos import PhotoSource

  return PhotoSource(split)


def _folder(data_cfg, split, process_count):
  from softvq_jax.data.sources.folder import folder_sources

  pair = folder_sources(
    data_cfg.path, data_cfg.get("eval_path", ""), data_cfg.get("eval_fraction", 0.1)
  )
  return pair[SPLITS.index(split)]


def _imagenet(data_cfg, split, process_count):
  from softvq_jax.data.sources.imagenet import imagenet_sources

  if _streamed(data_cfg, process_count):
    raise UserError(
      "this needs random access to ImageNet (latent caching, latents_online), which tfrecord "
      f"files do not give (data.reader resolves to 'tfrecord' for data.data_dir="
      f"{data_cfg.get('data_dir', '')!r}). Prepare or convert the dataset as array_record on "
      "local disk (python -m softvq_jax.data.prepare_imagenet; see the README, Data) and set "
      "data.reader=array_record; training and evaluation read tfrecord as is."
    )
  return imagenet_sources(data_cfg, process_count)[SPLITS.index(split)]


def _streamed(data_cfg, process_count: int) -> bool:
  """Whether data_cfg is ImageNet read by the tf.data reader (streams.py)."""
  if data_cfg.name != "imagenet":
    return False
  from softvq_jax.data.sources import imagenet

  return imagenet.reader(data_cfg, process_count) == "tfrecord"


def _latents(data_cfg, split, process_count):
  """The cache at data.path; for "eval" the one at data.eval_path if set."""
  from softvq_jax.data import latents

  if split == "eval" and data_cfg.get("eval_path", ""):
    return latents.LatentSource(data_cfg.eval_path)
  return latents.LatentSource(data_cfg.get("path", ""))


def _latents_online(data_cfg, split, process_count):
  """The images of data.image_source (default photos) that the online encoder encodes."""
  image_cfg = data_cfg.copy_and_resolve_references()
  image_cfg.name = data_cfg.get("image_source", "photos")
  if image_cfg.name not in IMAGE_DATASETS:
    raise ValueError(f"data.image_source={image_cfg.name!r}; choose one of {IMAGE_DATASETS}")
  return source(image_cfg, split, process_count)


SourceBuilder = Callable[[Any, str, int], Any]
SOURCES: dict[str, SourceBuilder] = {
  "photos": _photos,
  "folder": _folder,
  "imagenet": _imagenet,
  "latents": _latents,
  "latents_online": _latents_online,
}
DATASETS = tuple(SOURCES)


def source(data_cfg, split: str = "train", process_count: int = 1):
  """The random-access source of `split` ("train" | "eval") of dataset `data_cfg.name`."""
  if data_cfg.name not in SOURCES:
    raise ValueError(f"unknown data.name={data_cfg.name!r}; choose one of {DATASETS}")
  if split not in SPLITS:
    raise ValueError(f"split {split!r}; use one of {SPLITS}")
  return SOURCES[data_cfg.name](data_cfg, split, process_count)


def batching(data_cfg, global_batch: int, seed: int, process_index: int, process_count: int):
  """The ShuffledBatches keyword arguments (and random_flip) every training dataset takes."""
  return dict(
    global_batch=global_batch,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    random_flip=data_cfg.get("random_flip", True),
    num_workers=data_cfg.get("num_workers", 0),  # 0: every core of this process
    prefetch=data_cfg.get("prefetch", 2),
  )


def build_train_data(
  data_cfg, *, image_size=None, global_batch, seed, process_index=0, process_count=1
) -> TrainData:
  """Training batches for `data_cfg.name` (see pipeline.TrainData; latents: see latents/).

  Image datasets are checked first (`TrainData.check_decodable`): if no example decodes, a
  UserError names data.path / data.data_dir before any model is built.
  """
  if data_cfg.name == "latents_online":
    raise ValueError(ONLINE_LATENTS_HELP)
  kw = batching(data_cfg, global_batch, seed, process_index, process_count)
  if _streamed(data_cfg, process_count):
    from softvq_jax.data import streams
    from softvq_jax.data.sources import tfrecord

    train_data = streams.TfrecordTrainData(
      tfrecord.splits(data_cfg, process_count)[0],
      image_size=image_size,
      streams=data_cfg.get("tfrecord_streams", 16),
      random_crop=data_cfg.get("random_crop", True),
      min_crop_frac=data_cfg.get("min_crop_frac", 0.8),
      uint8=data_cfg.get("uint8_transfer", False),
      jpeg_draft=data_cfg.get("jpeg_draft", False),
      exact_resize=data_cfg.get("exact_resize", False),
      **kw,
    )
    train_data.check_decodable()
    return train_data
  train = source(data_cfg, "train", process_count)
  if data_cfg.name == "latents":
    from softvq_jax.data import latents

    return latents.LatentTrainData(train, **kw)
  train_data = TrainData(
    train,
    image_size=image_size,
    random_crop=data_cfg.get("random_crop", True),
    min_crop_frac=data_cfg.get("min_crop_frac", 0.8),
    uint8=data_cfg.get("uint8_transfer", False),
    jpeg_draft=data_cfg.get("jpeg_draft", False),
    exact_resize=data_cfg.get("exact_resize", False),
    **kw,
  )
  train_data.check_decodable()  # a dataset where nothing decodes stops here, naming data.path
  return train_data


def build_eval_data(
  data_cfg, *, image_size=None, batch_size, process_index=0, process_count=1
) -> EvalData:
  """Evaluation batches: ADM center crop (+ `eval_crops - 1` fixed crops for the photos).

  latents: the cache at data.eval_path if set, else the first data.eval_examples (default 1000)
  examples of the training cache (not held out); unflipped.
  """
  if data_cfg.name == "latents_online":
    raise ValueError(ONLINE_LATENTS_HELP)
  streamed = _streamed(data_cfg, process_count)
  if streamed:
    from softvq_jax.data import streams
    from softvq_jax.data.sources import tfrecord

    held_out = tfrecord.splits(data_cfg, process_count)[1]
  else:
    held_out = source(data_cfg, "eval", process_count)
  kw = dict(
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
    num_workers=data_cfg.get("num_workers", 0),
    prefetch=data_cfg.get("prefetch", 2),
  )
  if data_cfg.name == "latents":
    from softvq_jax.data import latents

    num = None if data_cfg.get("eval_path", "") else data_cfg.get("eval_examples", 1000)
    return latents.LatentEvalData(held_out, num=num, **kw)
  views = 1 if data_cfg.name != "photos" else data_cfg.get("eval_crops", 4)
  if streamed:
    return streams.TfrecordEvalData(
      held_out, pipeline.eval_views(image_size, views), image_size=image_size, **kw
    )
  return EvalData(held_out, pipeline.eval_views(image_size, views), image_size=image_size, **kw)
