"""Read throughput of a latent cache through LatentTrainData: batches/s and examples/s.

  python benchmarks/latent_cache_read.py --cache=caches/imagenet_b64_train --batch=256
  python benchmarks/latent_cache_read.py --examples=20000   # synthetic bf16 cache (L=64, D=32)

Without --cache, a synthetic cache of random latents is written to a temporary directory first.
"""

import pathlib
import tempfile
import time

import numpy as np
from absl import app, flags

from softvq_jax.data import latents

_CACHE = flags.DEFINE_string("cache", None, "Existing cache directory (default: synthetic).")
_EXAMPLES = flags.DEFINE_integer("examples", 20_000, "Synthetic cache size.")
_BATCH = flags.DEFINE_integer("batch", 256, "Global batch (one process).")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after 5 warm-up steps).")
_WORKERS = flags.DEFINE_integer("workers", 4, "Prefetch threads.")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    path = _CACHE.value
    if path is None:
      rng = np.random.default_rng(0)
      n = _EXAMPLES.value
      z = rng.normal(size=(n, 2, 64, 32)).astype(np.float32)
      t = time.perf_counter()
      latents.write_cache(pathlib.Path(tmp) / "c", z, rng.integers(0, 1000, n), dtype="bfloat16")
      print(f"wrote synthetic cache: {n} examples in {time.perf_counter() - t:.1f}s")
      path = pathlib.Path(tmp) / "c"
    source = latents.LatentSource(path)
    d = latents.LatentTrainData(
      source, global_batch=_BATCH.value, seed=0, num_workers=_WORKERS.value, prefetch=4
    )
    it = d.iterator(0)
    for _ in range(5):
      next(it)
    t = time.perf_counter()
    for _ in range(_STEPS.value):
      next(it)
    dt = time.perf_counter() - t
    it.close()
    t = time.perf_counter()
    for s in range(10):
      d.batch(1000 + s)
    single = (time.perf_counter() - t) / 10
  print(
    f"{_STEPS.value / dt:.1f} batches/s, {_STEPS.value * _BATCH.value / dt:.0f} examples/s "
    f"(batch {_BATCH.value}, {_WORKERS.value} workers); one batch unprefetched: "
    f"{single * 1e3:.1f} ms"
  )


if __name__ == "__main__":
  app.run(main)
