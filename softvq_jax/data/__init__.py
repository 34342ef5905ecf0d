"""Input pipelines: one contract (see pipeline.py) for the bundled photos, folders and ImageNet."""

from __future__ import annotations

from softvq_jax.data import pipeline
from softvq_jax.data.pipeline import EvalData, TrainData

DATASETS = ("photos", "folder", "imagenet")


def _sources(data_cfg, process_count=1):
  name = data_cfg.name
  if name == "photos":
    from softvq_jax.data.photos import PhotoSource

    return PhotoSource("train"), PhotoSource("eval")
  if name == "folder":
    from softvq_jax.data.folder import folder_sources

    return folder_sources(
      data_cfg.path, data_cfg.get("eval_path", ""), data_cfg.get("eval_fraction", 0.1)
    )
  if name == "imagenet":
    from softvq_jax.data.imagenet import imagenet_sources

    return imagenet_sources(data_cfg, process_count)
  raise ValueError(f"unknown data.name={name!r}; choose one of {DATASETS}")


def build_train_data(
  data_cfg, *, image_size, global_batch, seed, process_index=0, process_count=1
) -> TrainData:
  """Training batches for `data_cfg.name` (see pipeline.TrainData)."""
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
  data_cfg, *, image_size, batch_size, process_index=0, process_count=1
) -> EvalData:
  """Evaluation batches: ADM center crop (+ `eval_crops - 1` fixed crops for the photos)."""
  _, held_out = _sources(data_cfg, process_count)
  views = 1 if data_cfg.name != "photos" else data_cfg.get("eval_crops", 4)
  return EvalData(
    held_out,
    pipeline.eval_views(image_size, views),
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )
