"""Tokenizer latents without a cache: the encode function and the online encoder.

`make_encode_fn` is the tokenizer's uint8 images -> z_q function (batch split over this
process's devices, `sharding.local_batch_fn`); the cache writer (`data.latents.encode_dataset`)
takes it as its `encode_fn` (`encode_with_tokenizer` fills in the tokenizer's metadata).
`OnlineLatentTrainData` is the fallback without a cache (`data.name = latents_online`): it
encodes the image batches inside the iterator with `LatentTrainData`'s example order and flip
selection, so it yields the latents a cache of the same source would (up to the cache dtype).
`build_train_data` / `build_eval_data` build it for the generator task.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from softvq_jax import data, sharding
from softvq_jax.data import latents, pipeline, preprocess
from softvq_jax.weights import pretrained


def make_encode_fn(tokenizer, dtype: str = "float32", devices: Sequence[jax.Device] | None = None):
  """uint8 images (n, S, S, 3) -> z_q (n, L, D) in `dtype`, batch split over local devices.

  tokenizer: a `weights.pretrained.PretrainedTokenizer`; the cast to `dtype` runs on device.
  """
  model = tokenizer.model
  np_dt = latents.np_dtype(dtype)

  def apply(params, images):
    x = preprocess.float_images({"image": images})["image"]  # uint8 -> [-1, 1]
    z, _ = model.apply({"params": params}, x, method=model.encode)
    return z.astype(np_dt)

  return sharding.local_batch_fn(apply, tokenizer.params, sharding.local_mesh(devices))


def encode_with_tokenizer(
  tokenizer,
  source,
  out: str | os.PathLike,
  *,
  tokenizer_path: str = "",
  dtype: str = "bfloat16",
  devices: Sequence[jax.Device] | None = None,
  **kw,
) -> dict | None:
  """`data.latents.encode_dataset` of `source` with the tokenizer's encoder and metadata.

  kw: the writer's options (dataset, split, batch_size, examples_per_shard, max_examples,
  process_index, process_count, overwrite, num_workers).
  """
  m = tokenizer.config["model"]
  return latents.encode_dataset(
    make_encode_fn(tokenizer, dtype, devices),
    source,
    out,
    image_size=int(m["image_size"]),
    num_tokens=int(m["num_latent_tokens"]),
    dim=int(m["codebook_embed_dim"]),
    tokenizer=str(tokenizer_path),
    tokenizer_config={k: tokenizer.config[k] for k in ("model", "quantizer")},
    dtype=dtype,
    **kw,
  )


class OnlineLatentTrainData(latents.LatentTrainData):
  """The TrainData contract by encoding image batches inside the iterator.

  Same example order and flip per sample (`LatentTrainData.selection`) as a cache of the same
  source. Image loading runs on the prefetch threads, encoding (over this process's devices) in
  the consuming thread.
  """

  def __init__(
    self,
    source,
    tokenizer,
    *,
    devices: Sequence[jax.Device] | None = None,
    **batching,
  ):
    """`batching`: as LatentTrainData (global_batch, seed, random_flip, ...)."""
    super().__init__(source, **batching)
    self.tokenizer = tokenizer
    self.image_size = int(tokenizer.config["model"]["image_size"])
    self._loader = latents.CenterCrops(source, self.image_size)
    self._devices = devices
    self._encode = None

  def images(self, step: int) -> dict[str, np.ndarray]:
    """uint8 (B_local, S, S, 3) center crops, flipped per `selection`, and labels."""
    indices, flip = self.selection(step)
    images, labels, ok = self._loader(indices)
    if not ok.all():
      raise pipeline.BadImage(
        f"undecodable example(s) in step {step}; the latent cache skips them, encoding on the "
        "fly cannot (fix or remove the files)"
      )
    images[flip] = images[flip][:, :, ::-1]
    return {"image": images, "label": labels}

  def encode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if self._encode is None:
      self._encode = make_encode_fn(self.tokenizer, "float32", self._devices)
    return {"latent": np.asarray(self._encode(batch["image"]), np.float32), "label": batch["label"]}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.encode(self.images(step))

  def iterator(self, start_step: int = 0):
    it = pipeline.PrefetchIterator(self.images, start_step, self.prefetch, self.num_workers)
    return _MapIterator(it, self.encode)


class _MapIterator:
  """fn over an iterator, with close() passed through."""

  def __init__(self, it, fn):
    self._it, self._fn = it, fn

  def __iter__(self):
    return self

  def __next__(self):
    return self._fn(next(self._it))

  def close(self) -> None:
    self._it.close()


class OnlineLatentEvalData:
  """Eval batches of an image source encoded on the fly (center crop, no flip), padded, masked."""

  def __init__(
    self,
    source,
    tokenizer,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    devices: Sequence[jax.Device] | None = None,
  ):
    self.source, self.tokenizer, self.batch_size = source, tokenizer, batch_size
    self.num_examples = len(source)
    self._loader = latents.CenterCrops(source, int(tokenizer.config["model"]["image_size"]))
    self._chunks = latents.padded_chunks(len(source), batch_size, process_index, process_count)
    self._devices = devices
    self._encode = None

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    if self._encode is None:  # built once: repeated evaluations reuse the compiled function
      self._encode = make_encode_fn(self.tokenizer, "float32", self._devices)
    encode = self._encode
    for chunk in self._chunks:
      mask = chunk >= 0
      images, labels, ok = self._loader(np.where(mask, chunk, 0))
      mask &= ok
      yield {
        "latent": np.asarray(encode(images), np.float32),
        "label": np.where(mask, labels, 0).astype(np.int32),
        "mask": mask,
      }


def load_tokenizer(data_cfg):
  """The tokenizer at data.tokenizer (required for latents_online)."""
  if not data_cfg.get("tokenizer", ""):
    raise ValueError("data.name='latents_online' needs --config.data.tokenizer=/path/to/tokenizer")
  return pretrained.load_tokenizer(data_cfg.tokenizer)


def build_train_data(
  data_cfg, *, global_batch, seed, process_index=0, process_count=1, tokenizer=None
) -> OnlineLatentTrainData:
  """`latents_online` training batches: data.image_source's images encoded by data.tokenizer."""
  tokenizer = tokenizer or load_tokenizer(data_cfg)
  return OnlineLatentTrainData(
    data.source(data_cfg, "train", process_count),
    tokenizer,
    **data.batching(data_cfg, global_batch, seed, process_index, process_count),
  )


def build_eval_data(
  data_cfg, *, batch_size, process_index=0, process_count=1, tokenizer=None
) -> OnlineLatentEvalData:
  """`latents_online` eval batches: data.image_source's held-out images, center crop, encoded."""
  tokenizer = tokenizer or load_tokenizer(data_cfg)
  return OnlineLatentEvalData(
    data.source(data_cfg, "eval", process_count),
    tokenizer,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )
