"""Input-pipeline throughput per host: images/s of `TrainData` batches by worker count.

  python benchmarks/input_pipeline.py                          # fake data, 1, 2, 4, ... workers
  python benchmarks/input_pipeline.py --data_dir=/data/tfds --folder=/data/imagenet/train
  python benchmarks/input_pipeline.py --reference_python=/tmp/torchvenv/bin/python
  python benchmarks/input_pipeline.py --readers=tfrecord --tfrecord_dir=gs://BUCKET/tfds

For every reader (an image folder, TFDS ImageNet as array_record, the bundled photos) and crop
size it prints images/s for 1, 2, 4, ... decode threads up to this host's cores (median of
--repeats runs, interleaved so that a change in machine load hits every row alike), the speed-up
over 1 thread, the per-core efficiency (speed-up / threads), the CPU time per image (which does
not depend on how busy the machine is) and the cores the pipeline got (images/s x CPU time; on a
shared machine, what the other processes left). With PyTorch available (here, or in the
interpreter given by --reference_python) the reference's loader runs side by side on the same
folder: `ImageFolder` + `DataLoader(num_workers=2)` with the reference's transform (ADM random
crop via PIL, random flip, ToTensor, Normalize(0.5, 0.5)); the ratio to our pipeline at the same
worker count is printed (the median over the interleaved repeats, each pair measured one after
the other), for the default window resize and for data.exact_resize=True (the whole image
resized, bitwise the reference's crop). Without torch that row is skipped, saying so.

Without --data_dir / --folder, fake data is made in a temporary directory: JPEGs cut from the
bundled photos at ImageNet-like sizes (short side 375-468 px), so the decode cost is realistic;
the fake ImageNet goes through the real TFDS builder. Each host runs this independently: the
figure is what one process delivers for its local batch. The tf.data reader of tfrecord datasets
(data.reader=tfrecord, data/streams.py; `EXTRA_READERS`) is measured the same way, on
--tfrecord_dir or on the fake ImageNet prepared as tfrecord in --tfrecord_streams shard files.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # softvq_jax from the checkout; fake_imagenet

_DATA_DIR = flags.DEFINE_string("data_dir", "", "Prepared TFDS data_dir ('' = fake ImageNet).")
_FOLDER = flags.DEFINE_string("folder", "", "An image folder ('' = fake JPEG folder).")
_READERS = flags.DEFINE_list(
  "readers", ["folder", "imagenet", "tfrecord", "photos", "reference"], "Rows to measure."
)
_TFRECORD_DIR = flags.DEFINE_string(
  "tfrecord_dir", "", "TFDS data_dir prepared as tfrecord, local or gs:// ('' = fake ImageNet)."
)
_STREAMS = flags.DEFINE_integer("tfrecord_streams", 4, "data.tfrecord_streams (tfrecord row).")
_SIZES = flags.DEFINE_list("sizes", ["256"], "Crop sizes.")
_WORKERS = flags.DEFINE_list("workers", [], "Thread counts ('' = 1, 2, 4, ... up to the cores).")
_BATCH = flags.DEFINE_integer("batch", 64, "Local (per-host) batch size.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed batches per run (after 2 warm-up batches).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per row; the median is printed.")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "Batches prepared ahead.")
_UINT8 = flags.DEFINE_bool("uint8", True, "uint8 batches (data.uint8_transfer, the default).")
_DRAFT = flags.DEFINE_bool("jpeg_draft", False, "data.jpeg_draft (reduced-size JPEG decode).")
_EXACT = flags.DEFINE_bool(
  "exact_resize", False, "data.exact_resize (whole-image resize, bitwise the reference's crop)."
)
_FAKE_IMAGES = flags.DEFINE_integer("fake_images", 256, "Images in the fake folder / ImageNet.")
_REF_PYTHON = flags.DEFINE_string(
  "reference_python", "", "Interpreter with torch for the reference row ('' = this one)."
)
_REF_WORKERS = flags.DEFINE_integer("reference_workers", 2, "DataLoader workers (reference).")

# name -> builder(size, workers) -> an object with .iterator(start) and .local_batch, for readers
# measured beside the data.build_train_data configs; main() adds the tf.data reader ("tfrecord").
EXTRA_READERS: dict = {}

# The reference loader (torch), run in a subprocess so that this process needs no torch: the
# transform of the reference's training script (guided-diffusion's random_crop_arr as LlamaGen /
# continuous_tokenizer use it, returning a PIL image), ImageFolder's pil_loader, DataLoader.
REFERENCE_SCRIPT = r"""
import json, math, os, random, sys, time
import numpy as np
import torch
from PIL import Image
folder, size, batch, workers, steps, warmup = sys.argv[1], *map(int, sys.argv[2:7])

def random_crop_arr(pil_image, image_size, min_crop_frac=0.8, max_crop_frac=1.0):
  min_smaller = math.ceil(image_size / max_crop_frac)
  max_smaller = math.ceil(image_size / min_crop_frac)
  smaller = random.randrange(min_smaller, max_smaller + 1)
  while min(*pil_image.size) >= 2 * smaller:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = smaller / min(*pil_image.size)
  new_size = tuple(round(x * scale) for x in pil_image.size)
  pil_image = pil_image.resize(new_size, resample=Image.BICUBIC)
  arr = np.array(pil_image)
  y = random.randrange(arr.shape[0] - image_size + 1)
  x = random.randrange(arr.shape[1] - image_size + 1)
  return Image.fromarray(arr[y : y + image_size, x : x + image_size])

try:
  from torchvision import datasets, transforms
  transform = transforms.Compose([
    transforms.Lambda(lambda im: random_crop_arr(im, size)),
    transforms.RandomHorizontalFlip(),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True),
  ])
  dataset, impl = datasets.ImageFolder(folder, transform=transform), "torchvision"
except Exception as e:  # e.g. a torchvision wheel without its C ops: the same steps in torch
  impl = f"torch only (torchvision unusable: {type(e).__name__}); same steps"
  exts = (".jpg", ".jpeg", ".png")
  classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
  samples = [(os.path.join(folder, c, f), i) for i, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(folder, c))) if f.lower().endswith(exts)]

  class ImageFolder(torch.utils.data.Dataset):
    def __len__(self):
      return len(samples)
    def __getitem__(self, i):
      path, label = samples[i]
      with open(path, "rb") as f:  # torchvision's pil_loader
        im = Image.open(f).convert("RGB")
      im = random_crop_arr(im, size)
      if torch.rand(1) < 0.5:  # RandomHorizontalFlip
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
      t = torch.from_numpy(np.array(im, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
      t = t.to(torch.float32).div(255)  # ToTensor
      return t.sub_(0.5).div_(0.5), label  # Normalize(0.5, 0.5, inplace=True)
  dataset = ImageFolder()

# Shuffled like shuffle=True, but without an epoch end inside the timed window (small folders).
sampler = torch.utils.data.RandomSampler(dataset, num_samples=(steps + warmup + 1) * batch)
loader = torch.utils.data.DataLoader(
  dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
it = iter(loader)
for _ in range(warmup):
  next(it)
t0 = time.perf_counter()
for _ in range(steps):
  next(it)
dt = time.perf_counter() - t0
print(json.dumps({"rate": steps * batch / dt, "impl": impl, "torch": torch.__version__}))
"""


def _cores() -> int:
  """Cores this process may use (its affinity mask), as the pipeline counts them."""
  from softvq_jax.data import parallel

  return parallel.available_cores()


def _worker_counts() -> list[int]:
  """--workers, or 1, 2, 4, ... and the core count."""
  if _WORKERS.value:
    return [int(w) for w in _WORKERS.value]
  counts, w = [], 1
  while w < _cores():
    counts.append(w)
    w *= 2
  return counts + [_cores()]


def _fake_folder(root: pathlib.Path) -> str:
  """ImageNet-like JPEGs (photo crops, short side 375-468 px) in 8 class folders."""
  import numpy as np
  from fake_imagenet import _jpeg, _photo_image

  rng = np.random.default_rng(0)
  for i in range(_FAKE_IMAGES.value):
    d = root / f"n{i % 8:08d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"img_{i:05d}.JPEG").write_bytes(_jpeg(_photo_image(rng, 375, i % 8)))
  return str(root)


def _fake_imagenet(tmp: str) -> str:
  """A fake imagenet2012 (photo JPEGs) prepared by the real TFDS builder; its data_dir."""
  import tensorflow_datasets as tfds
  from fake_imagenet import prepare_fake_imagenet

  tfds.disable_progress_bar()
  per_class = max(1, _FAKE_IMAGES.value // 8)
  return str(
    prepare_fake_imagenet(
      tmp, num_classes=8, per_class=per_class, num_val=8, size=375, bad_images=False, photos=True
    )
  )


def _fake_tfrecord(tmp: str) -> str:
  """The fake imagenet2012 as tfrecord, one shard file per stream (the TFDS default format)."""
  import tensorflow_datasets as tfds
  from fake_imagenet import make_fake_imagenet

  tfds.disable_progress_bar()
  per_class = max(1, _FAKE_IMAGES.value // 8)
  root = pathlib.Path(tmp) / "tfrecord"
  manual = make_fake_imagenet(
    root, num_classes=8, per_class=per_class, num_val=8, size=375, bad_images=False, photos=True
  )
  builder = tfds.builder("imagenet2012", data_dir=str(root / "tfds"), file_format="tfrecord")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual), num_shards=_STREAMS.value)
  )
  return str(root / "tfds")


def _tfrecord_reader(data_dir: str, common: dict):
  """EXTRA_READERS entry: builder(size, workers) of the tf.data reader's training batches."""
  import ml_collections

  from softvq_jax import data

  def build(size, workers):
    c = dict(common, name="imagenet", data_dir=data_dir, reader="tfrecord")
    c.update(tfrecord_streams=_STREAMS.value, num_workers=workers, prefetch=_PREFETCH.value)
    return data.build_train_data(
      ml_collections.ConfigDict(c), image_size=size, global_batch=_BATCH.value, seed=0
    )

  return build


def _throughput(d) -> tuple[float, float]:
  """(images/s, CPU ms per image) over _STEPS batches after 2 warm-up batches."""
  it = d.iterator(0)
  for _ in range(2):
    next(it)
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(_STEPS.value):
    next(it)
  dt, dc = time.perf_counter() - t0, time.process_time() - c0
  it.close()
  n = _STEPS.value * d.local_batch
  return n / dt, 1e3 * dc / n


def _measure(rows: dict, name: str, cfg: dict, workers: int, size: int) -> None:
  """One run of the data config `cfg` at `workers` threads, appended to rows[(name, workers)]."""
  import ml_collections

  from softvq_jax import data

  c = ml_collections.ConfigDict(dict(cfg, num_workers=workers, prefetch=_PREFETCH.value))
  d = data.build_train_data(c, image_size=size, global_batch=_BATCH.value, seed=0)
  rows.setdefault((name, workers), []).append(_throughput(d))


def _reference_python() -> str | None:
  """The interpreter for the reference row if it can import torch, else None."""
  python = _REF_PYTHON.value or sys.executable
  ok = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
  return python if ok else None


def _reference(python: str, folder: str, size: int) -> dict:
  """One run of REFERENCE_SCRIPT: {"rate": images/s, "impl", "torch"}."""
  args = [folder, size, _BATCH.value, _REF_WORKERS.value, _STEPS.value, 2]
  proc = subprocess.run(
    [python, "-c", REFERENCE_SCRIPT, *map(str, args)], capture_output=True, text=True
  )
  if proc.returncode:
    raise RuntimeError(f"reference loader failed:\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
  """The machine's load average, printed with the figures (a shared machine skews them)."""
  return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv):
  del argv

  readers = set(_READERS.value)
  with tempfile.TemporaryDirectory() as tmp:
    notes, configs = {}, {}
    common = dict(
      random_crop=True,
      uint8_transfer=_UINT8.value,
      jpeg_draft=_DRAFT.value,
      exact_resize=_EXACT.value,
    )
    if readers & {"folder", "reference"}:
      folder = _FOLDER.value or _fake_folder(pathlib.Path(tmp) / "folder")
      notes["folder"] = folder if _FOLDER.value else f"FAKE folder ({_FAKE_IMAGES.value} JPEGs)"
      configs["folder"] = dict(name="folder", path=folder, eval_fraction=0.01, **common)
    if "imagenet" in readers:
      data_dir = _DATA_DIR.value or _fake_imagenet(tmp)
      notes["imagenet"] = "prepared ImageNet" if _DATA_DIR.value else "FAKE ImageNet"
      configs["imagenet"] = dict(name="imagenet", data_dir=data_dir, **common)
    if "tfrecord" in readers:
      tf_dir = _TFRECORD_DIR.value or _fake_tfrecord(tmp)
      kind = "tfrecord" if _TFRECORD_DIR.value else "FAKE ImageNet as tfrecord"
      notes["tfrecord"] = f"{kind}, tf.data, {_STREAMS.value} streams"
      EXTRA_READERS["tfrecord"] = _tfrecord_reader(tf_dir, common)
    if "photos" in readers:
      notes["photos"] = "bundled photos (9 images, up to 1.4k px)"
      configs["photos"] = dict(name="photos", **common)
    counts = _worker_counts()
    print(
      f"input pipeline, one host: {_cores()} cores available, local batch {_BATCH.value}, "
      f"{_STEPS.value} timed batches x {_REPEATS.value} runs (median), prefetch "
      f"{_PREFETCH.value}, {'uint8' if _UINT8.value else 'float32'} batches, jpeg_draft "
      f"{_DRAFT.value}, exact_resize {_EXACT.value}; {_load()}"
    )
    ref_python = _reference_python() if "reference" in readers else None
    if "reference" in readers and ref_python is None:
      print(
        "  reference (torch ImageFolder + DataLoader): SKIPPED, torch is not importable "
        "(pass --reference_python=/path/to/python-with-torch)"
      )
    for size in map(int, _SIZES.value):
      rows: dict = {}

      for _ in range(_REPEATS.value):  # interleaved: load changes hit every row alike
        for name, cfg in configs.items():
          for w in counts:
            _measure(rows, name, cfg, w, size)
        if ref_python and _UINT8.value:  # our float32 batches too, as the reference ships
          f32 = dict(configs["folder"], uint8_transfer=False)
          _measure(rows, "folder f32", f32, _REF_WORKERS.value, size)
        if ref_python and not _EXACT.value:  # and the whole-image resize, bitwise the reference's
          exact = dict(configs["folder"], exact_resize=True)
          _measure(rows, "folder exact", exact, _REF_WORKERS.value, size)
        for name, build in EXTRA_READERS.items():
          for w in counts:
            rows.setdefault((name, w), []).append(_throughput(build(size, w)))
        if ref_python:
          rows.setdefault(("reference", _REF_WORKERS.value), []).append(
            _reference(ref_python, configs["folder"]["path"], size)
          )
      print(f"\n{size} px:")
      for (name, w), runs in rows.items():
        if name == "reference":
          continue
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        first = rows.get((name, counts[0]))
        scaling = ""
        if first and name not in ("folder f32", "folder exact"):
          speedup = rate / statistics.median(r[0] for r in first)
          eff = speedup * min(counts[0], _cores()) / min(w, _cores())
          scaling = f"x{speedup:4.2f} vs {counts[0]} worker(s), per-core efficiency {eff:4.2f}, "
        print(
          f"  {name:10s} {w:3d} workers {rate:7.1f} images/s (runs {min(r[0] for r in runs):.0f}"
          f"-{max(r[0] for r in runs):.0f})  {scaling}{cpu:5.1f} CPU ms/image, "
          f"{rate * cpu / 1e3:4.2f} cores busy  "
          f"[{notes.get(name.split()[0], '')}]"
        )
      ref = rows.get(("reference", _REF_WORKERS.value))
      if ref:
        rate = statistics.median(r["rate"] for r in ref)
        print(
          f"  {'reference':10s} {_REF_WORKERS.value:3d} workers {rate:8.1f} images/s  (runs "
          f"{min(r['rate'] for r in ref):.0f}-{max(r['rate'] for r in ref):.0f})  torch "
          f"{ref[0]['torch']} ImageFolder + DataLoader, float32 [{ref[0]['impl']}]"
        )
        for name in ("folder", "folder f32", "folder exact"):
          ours = rows.get((name, _REF_WORKERS.value))
          if ours:
            dtype = "float32" if name.endswith("f32") or not _UINT8.value else "uint8"
            exact = name.endswith("exact") or _EXACT.value
            resize = "whole-image resize" if exact else "window resize"
            pairs = [a[0] / b["rate"] for a, b in zip(ours, ref)]  # the same repeat's runs
            print(
              f"  ratio: folder pipeline ({dtype} batches, {resize}) / reference at "
              f"{_REF_WORKERS.value} workers = {statistics.median(pairs):.2f} (median of "
              f"{len(pairs)} interleaved pairs, {min(pairs):.2f}-{max(pairs):.2f})"
            )
    print(f"\n{_load()}")


if __name__ == "__main__":
  app.run(main)
