"""Input-pipeline throughput per host: images/s of `TrainData` batches (decode, ADM crop, flip).

  python benchmarks/input_pipeline.py                                # fake ImageNet + photos
  python benchmarks/input_pipeline.py --data_dir=/data/tfds --sizes=256,512 --workers=32

Without --data_dir a fake `imagenet2012` is prepared with the real TFDS builder in a temporary
directory: JPEGs cut from the bundled photos at ImageNet-like sizes (short side 375-468 px), so
decode cost is realistic; the output says so. Each host runs this independently: the figure is
what one process delivers for its local batch (the step consumes global_batch / hosts of them).
"""

import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # softvq_jax from the checkout; fake_imagenet

_DATA_DIR = flags.DEFINE_string("data_dir", "", "Prepared TFDS data_dir ('' = fake ImageNet).")
_SIZES = flags.DEFINE_list("sizes", ["256", "512"], "Crop sizes.")
_BATCH = flags.DEFINE_integer("batch", 64, "Local (per-host) batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed batches (after 2 warm-up batches).")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 4, "Decode threads per host.")
_PREFETCH = flags.DEFINE_integer("prefetch", 4, "Batches prepared ahead.")
_UINT8 = flags.DEFINE_bool("uint8", False, "uint8 batches (data.uint8_transfer), no float step.")
_FAKE_IMAGES = flags.DEFINE_integer("fake_images", 256, "Training images in the fake ImageNet.")


def _fake_imagenet(tmp: str) -> str:
  from fake_imagenet import prepare_fake_imagenet

  per_class = max(1, _FAKE_IMAGES.value // 8)
  return str(
    prepare_fake_imagenet(
      tmp, num_classes=8, per_class=per_class, num_val=8, size=375, bad_images=False, photos=True
    )
  )


def _throughput(d) -> float:
  it = d.iterator(0)
  for _ in range(2):
    next(it)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    next(it)
  dt = time.perf_counter() - t0
  it.close()
  return _STEPS.value * d.local_batch / dt


def main(argv):
  del argv
  import ml_collections

  from softvq_jax import data

  with tempfile.TemporaryDirectory() as tmp:
    data_dir, note = _DATA_DIR.value, "prepared ImageNet"
    if not data_dir:
      data_dir = _fake_imagenet(tmp)
      note = f"FAKE ImageNet ({_FAKE_IMAGES.value} JPEGs cut from the bundled photos, ~500x375)"
    common = dict(
      num_workers=_WORKERS.value,
      prefetch=_PREFETCH.value,
      random_crop=True,
      uint8_transfer=_UINT8.value,
    )
    configs = {
      "imagenet": ml_collections.ConfigDict(dict(name="imagenet", data_dir=data_dir, **common)),
      "photos": ml_collections.ConfigDict(dict(name="photos", **common)),
    }
    print(
      f"input pipeline, one host: {os.cpu_count()} CPUs, {_WORKERS.value} decode threads, "
      f"local batch {_BATCH.value}, {_STEPS.value} timed batches, "
      f"{'uint8' if _UINT8.value else 'float32'} batches"
    )
    for name, cfg in configs.items():
      for size in map(int, _SIZES.value):
        d = data.build_train_data(cfg, image_size=size, global_batch=_BATCH.value, seed=0)
        rate = _throughput(d)
        what = note if name == "imagenet" else "bundled photos (9 images, up to 1k px)"
        print(f"  {name:9s} {size:4d}px  {rate:8.1f} images/s per host   [{what}]")


if __name__ == "__main__":
  app.run(main)
