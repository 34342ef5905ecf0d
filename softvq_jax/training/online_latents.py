"""Tokenizer latents without a cache: the encode function and the online encoder.

`make_encode_fn` is the tokenizer's uint8 images -> z_q function (batch split over this
process's devices, `sharding.local_batch_fn`); the cache writer (`data.latents.encode_dataset`)
takes it as its `encode_fn` (`encode_with_tokenizer` fills in the tokenizer's metadata).
`OnlineLatentTrainData` is the fallback without a cache (`data.name = latents_online`): it
encodes the image batches inside the iterator with `LatentTrainData`'s example order and flip
selection, so it yields the latents a cache of the same source would (up to the cache dtype).
The images of a batch are decoded on all `num_workers` threads (`data.parallel`), and encoding
runs on a background thread `prefetch` batches ahead of the train step (`EncodeAhead`), so
decoding, encoding and training overlap; batches are still handed out in step order.
`build_train_data` / `build_eval_data` build it for the generator task.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from softvq_jax import data, sharding
from softvq_jax.data import latents, parallel, pipeline, preprocess
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
  source. Image loading runs per example on `num_workers` threads; encoding (over this
  process's devices) on one background thread, `prefetch` batches ahead of the consumer.
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

  @property
  def num_skipped(self) -> int:
    """Undecodable examples met (each stops the run: encoding on the fly cannot skip them)."""
    return self._loader.skips.num_skipped

  def tasks_per_batch(self) -> int:
    return self.local_batch

  def plan_images(self, step: int) -> parallel.Pending:
    """One task per example: its center crop (flipped per `selection`) and label."""
    indices, flip = self.selection(step)
    pending = self._loader.plan(indices)

    def finish(out, _):
      images, labels, ok = out
      if not ok.all():
        raise pipeline.BadImage(
          f"undecodable example(s) in step {step}; the latent cache skips them, encoding on "
          "the fly cannot (fix or remove the files)"
        )
      images[flip] = images[flip][:, :, ::-1]
      return {"image": images, "label": labels}

    return parallel.Pending(pending.value, pending.tasks, finish)

  def images(self, step: int) -> dict[str, np.ndarray]:
    """uint8 (B_local, S, S, 3) center crops, flipped per `selection`, and labels."""
    return parallel.run_serially(self.plan_images(step))

  def encode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if self._encode is None:
      self._encode = make_encode_fn(self.tokenizer, "float32", self._devices)
    return {"latent": np.asarray(self._encode(batch["image"]), np.float32), "label": batch["label"]}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.encode(self.images(step))

  def iterator(self, start_step: int = 0):
    depth = parallel.batch_depth(self.prefetch, self.num_workers, self.local_batch)
    images = parallel.ParallelBatches(
      self.plan_images, start_step, depth=depth, workers=self.num_workers
    )
    return EncodeAhead(images, self.encode, depth=self.prefetch)


class EncodeAhead:
  """`fn` over an iterator on one background thread, `depth` items ahead, in order.

  The online encoder's device work and host transfer overlap the train step instead of running
  on the consuming thread; one thread keeps the order (and the encoded values) deterministic.
  close() stops the thread and closes the source iterator.
  """

  def __init__(self, it, fn: Callable, depth: int = 2):
    self._it, self._fn, self._depth = it, fn, max(1, int(depth))
    self._pool = concurrent.futures.ThreadPoolExecutor(1, "softvq_encode")
    self._queue: collections.deque = collections.deque()
    self._closed = False

  def __iter__(self):
    return self

  def _one(self):
    return self._fn(next(self._it))

  def __next__(self):
    if self._closed:
      raise StopIteration
    while len(self._queue) < self._depth + 1:
      self._queue.append(self._pool.submit(self._one))
    try:
      return self._queue.popleft().result()
    except BaseException:
      self.close()
      raise

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    for f in self._queue:
      f.cancel()
    self._queue.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)
    self._it.close()

  def __del__(self):
    if not getattr(self, "_closed", True):
      self._closed = True
      self._pool.shutdown(wait=False, cancel_futures=True)


class OnlineLatentEvalData:
  """Eval batches of an image source encoded on the fly (center crop, no flip), padded, masked.

  Images decoded per example on `num_workers` threads, encoded on a background thread
  (`EncodeAhead`), batches in order. An undecodable image is masked out (`num_skipped`).
  """

  def __init__(
    self,
    source,
    tokenizer,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    devices: Sequence[jax.Device] | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
  ):
    self.source, self.tokenizer, self.batch_size = source, tokenizer, batch_size
    self.num_examples = len(source)
    self._loader = latents.CenterCrops(source, int(tokenizer.config["model"]["image_size"]))
    self._chunks = latents.padded_chunks(len(source), batch_size, process_index, process_count)
    self._devices = devices
    self._encode = None
    self.num_workers, self.prefetch = parallel.resolve_workers(num_workers), prefetch

  @property
  def num_skipped(self) -> int:
    """Distinct undecodable held-out images of this process (masked out of every pass)."""
    return self._loader.skips.num_bad

  def _plan(self, b: int) -> parallel.Pending:
    mask = self._chunks[b] >= 0
    pending = self._loader.plan(np.where(mask, self._chunks[b], 0))

    def finish(out, _):
      images, labels, ok = out
      return images, labels, mask & ok

    return parallel.Pending(pending.value, pending.tasks, finish)

  def _encoded(self, loaded) -> dict[str, np.ndarray]:
    images, labels, mask = loaded
    return {
      "latent": np.asarray(self._encode(images), np.float32),
      "label": np.where(mask, labels, 0).astype(np.int32),
      "mask": mask,
    }

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    if self._encode is None:  # built once: repeated evaluations reuse the compiled function
      self._encode = make_encode_fn(self.tokenizer, "float32", self._devices)
    depth = parallel.batch_depth(self.prefetch, self.num_workers, self.batch_size)
    images = parallel.ParallelBatches(
      self._plan, 0, depth=depth, workers=self.num_workers, stop=len(self._chunks)
    )
    it = EncodeAhead(images, self._encoded, depth=self.prefetch)
    try:
      for _ in range(len(self._chunks)):
        yield next(it)
    finally:
      it.close()


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
    num_workers=data_cfg.get("num_workers", 0),
    prefetch=data_cfg.get("prefetch", 2),
  )
