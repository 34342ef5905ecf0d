"""Input pipelines: one contract (see pipeline.py) for the bundled photos, folders and ImageNet.

Generators read latents: `latents` (a cache made by `python -m softvq_jax.data.cache_latents`,
data.path = the cache dir) or `latents_online` (encoding on the fly: data.tokenizer = tokenizer
dir, data.image_source = photos|folder|imagenet with that dataset's data.* keys); see latents.py.
"""

from __future__ import annotations

from softvq_jax.data import pipeline
from softvq_jax.data.pipeline import EvalData, TrainData

DATASETS = ("photos", "folder", "imagenet", "latents", "latents_online")
IMAGE_DATASETS = ("photos", "folder", "imagenet")


def _sources(data_cfg, process_count=1):
  name = data_cfg.name
  if name == "photos":
    from softvq_jax.data.sources.photos import PhotoSource

    return PhotoSource("train"), PhotoSource("eval")
  if name == "folder":
    from softvq_jax.data.sources.folder import folder_sources

    return folder_sources(
      data_cfg.path, data_cfg.get("eval_path", ""), data_cfg.get("eval_fraction", 0.1)
    )
  if name == "imagenet":
    from softvq_jax.data.sources.imagenet import imagenet_sources

    return imagenet_sources(data_cfg, process_count)
  if name in ("latents", "latents_online"):
    raise ValueError(f"data.name={name!r} holds latents, not images")
  raise ValueError(f"unknown data.name={name!r}; choose one of {DATASETS}")


def _online_parts(data_cfg):
  """latents_online: (image data config, tokenizer) from data.image_source and data.tokenizer."""
  from softvq_jax.weights import pretrained

  if not data_cfg.get("tokenizer", ""):
    raise ValueError("data.name='latents_online' needs --config.data.tokenizer=/path/to/tokenizer")
  image_cfg = data_cfg.copy_and_resolve_references()
  image_cfg.name = data_cfg.get("image_source", "photos")
  if image_cfg.name not in IMAGE_DATASETS:
    raise ValueError(f"data.image_source={image_cfg.name!r}; choose one of {IMAGE_DATASETS}")
  return image_cfg, pretrained.load_tokenizer(data_cfg.tokenizer)


def build_train_data(
  data_cfg, *, image_size=None, global_batch, seed, process_index=0, process_count=1
) -> TrainData:
  """Training batches for `data_cfg.name` (see pipeline.TrainData; latents: see latents.py)."""
  if data_cfg.name in ("latents", "latents_online"):
    return _latent_train_data(data_cfg, global_batch, seed, process_index, process_count)
  train, _ = _sources(data_cfg, process_count)
  return TrainData(
    train,
    image_size=image_size,
    global_batch=global_batch,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    random_crop=data_cfg.get("random_crop", True),
    random_flip=data_cfg.get("random_flip", True),
    min_crop_frac=data_cfg.get("min_crop_frac", 0.8),
    num_workers=data_cfg.get("num_workers", 4),
    prefetch=data_cfg.get("prefetch", 2),
    uint8=data_cfg.get("uint8_transfer", False),
  )


def build_eval_data(
  data_cfg, *, image_size=None, batch_size, process_index=0, process_count=1
) -> EvalData:
  """Evaluation batches: ADM center crop (+ `eval_crops - 1` fixed crops for the photos).

  latents: the cache at data.eval_path if set, else the first data.eval_examples (default 1000)
  examples of the training cache (not held out); unflipped.
  """
  if data_cfg.name in ("latents", "latents_online"):
    return _latent_eval_data(data_cfg, batch_size, process_index, process_count)
  _, held_out = _sources(data_cfg, process_count)
  views = 1 if data_cfg.name != "photos" else data_cfg.get("eval_crops", 4)
  return EvalData(
    held_out,
    pipeline.eval_views(image_size, views),
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )


def _latent_train_data(data_cfg, global_batch, seed, process_index, process_count):
  from softvq_jax.data import latents

  kw = dict(
    global_batch=global_batch,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    random_flip=data_cfg.get("random_flip", True),
    num_workers=data_cfg.get("num_workers", 4),
    prefetch=data_cfg.get("prefetch", 2),
  )
  if data_cfg.name == "latents":
    return latents.LatentTrainData(latents.LatentSource(data_cfg.get("path", "")), **kw)
  image_cfg, tokenizer = _online_parts(data_cfg)
  return latents.OnlineLatentTrainData(_sources(image_cfg, process_count)[0], tokenizer, **kw)


def _latent_eval_data(data_cfg, batch_size, process_index, process_count):
  from softvq_jax.data import latents

  kw = dict(batch_size=batch_size, process_index=process_index, process_count=process_count)
  if data_cfg.name == "latents":
    if data_cfg.get("eval_path", ""):
      return latents.LatentEvalData(latents.LatentSource(data_cfg.eval_path), **kw)
    source = latents.LatentSource(data_cfg.get("path", ""))
    return latents.LatentEvalData(source, num=data_cfg.get("eval_examples", 1000), **kw)
  image_cfg, tokenizer = _online_parts(data_cfg)
  return latents.OnlineLatentEvalData(_sources(image_cfg, process_count)[1], tokenizer, **kw)
