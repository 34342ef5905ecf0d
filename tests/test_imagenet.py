"""TFDS ImageNet pipeline on the real `imagenet2012` builder run offline over a fake manual_dir.

Checks labels against the builder's synset files, shapes and ranges, ADM crop statistics,
determinism, two simulated processes (disjoint reads, same global batch), exact resume, bad
images (grayscale, CMYK, smaller than the crop, corrupt), clear errors for unprepared or
tfrecord-only datasets, and an end-to-end `softvq_jax.main` run.
"""

import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from fake_imagenet import (
  CMYK,
  CORRUPT,
  GRAY,
  SMALL,
  SMALL_SIZE,
  imagenet_synsets,
  imagenet_validation_synsets,
  prepare_fake_imagenet,
)
from PIL import Image

from softvq_jax import data
from softvq_jax.cli import prepare_imagenet
from softvq_jax.data import preprocess
from softvq_jax.data.pipeline import BadImage, TrainData
from softvq_jax.data.sources import imagenet

ROOT = pathlib.Path(__file__).parents[1]
NUM_CLASSES, PER_CLASS, NUM_VAL = 3, 6, 7
NUM_TRAIN = NUM_CLASSES * PER_CLASS + 4  # + gray, cmyk, small, corrupt
S = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  return str(
    prepare_fake_imagenet(root, num_classes=NUM_CLASSES, per_class=PER_CLASS, num_val=NUM_VAL)
  )


def cfg(data_dir, **kw):
  base = dict(
    name="imagenet",
    data_dir=data_dir,
    manual_dir="",
    tfds_name="imagenet2012",
    train_split="train",
    eval_split="validation",
    file_format="",
    random_crop=True,
    random_flip=True,
    min_crop_frac=0.8,
    num_workers=2,
    prefetch=2,
  )
  base.update(kw)
  return ml_collections.ConfigDict(base)


def train_data(data_dir, **kw):
  args = dict(image_size=S, global_batch=8, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return data.build_train_data(cfg(data_dir), **args)


def take(d, start, n):
  it = d.iterator(start)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def test_labels_follow_the_builders_synset_files(data_dir):
  synsets = imagenet_synsets()
  train = imagenet.TfdsImageSource(split="train", data_dir=data_dir)
  assert len(train) == NUM_TRAIN and train.num_classes == 1000
  names = set()
  for i in range(len(train)):
    rec = train.record(i)
    names.add(rec["file_name"])
    assert synsets[rec["label"]] == rec["file_name"].split("_")[0]
  assert {n.split("_")[0] for n in names} == set(synsets[:NUM_CLASSES])
  val = imagenet.TfdsImageSource(split="validation", data_dir=data_dir)
  val_synsets = imagenet_validation_synsets()
  assert len(val) == NUM_VAL
  for i in range(len(val)):
    rec = val.record(i)
    number = int(re.fullmatch(r"ILSVRC2012_val_(\d{8})\.JPEG", rec["file_name"]).group(1))
    assert synsets[rec["label"]] == val_synsets[number - 1]


def test_train_batches_shapes_range_and_labels(data_dir):
  d = train_data(data_dir)
  assert d.num_examples == NUM_TRAIN
  for b in take(d, 0, 3):
    assert b["image"].shape == (8, S, S, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert -1.0 <= b["image"].min() < b["image"].max() <= 1.0
    assert set(b["label"].tolist()) <= set(range(NUM_CLASSES))


def test_uint8_transfer_matches_host_floats(data_dir):
  import jax

  host = take(train_data(data_dir), 2, 1)[0]
  d = data.build_train_data(
    cfg(data_dir, uint8_transfer=True), image_size=S, global_batch=8, seed=0
  )
  raw = take(d, 2, 1)[0]
  assert raw["image"].dtype == np.uint8 and raw["image"].shape == (8, S, S, 3)
  np.testing.assert_array_equal(raw["label"], host["label"])
  device = jax.jit(preprocess.float_images)(raw)
  assert device["image"].dtype == np.float32
  np.testing.assert_allclose(np.asarray(device["image"]), host["image"], rtol=0, atol=1.2e-7)
  assert preprocess.float_images(host) is host  # float batches pass through


def _by_name(source):
  return {source.record(i)["file_name"].split("_")[1].split(".")[0]: i for i in range(len(source))}


def test_bad_images_are_converted_or_skipped_and_counted(data_dir):
  source = imagenet.TfdsImageSource(split="train", data_dir=data_dir)
  index = _by_name(source)
  gray, _ = source.load(index[GRAY])
  cmyk, _ = source.load(index[CMYK])
  small, _ = source.load(index[SMALL])
  assert (gray.mode, cmyk.mode, small.size) == ("L", "CMYK", SMALL_SIZE)
  rgb = preprocess.center_crop_arr(gray, S).astype(int)
  assert rgb.shape == (S, S, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
  # The CMYK file is the grayscale file's source image: their luminance must agree.
  lum = np.asarray(Image.fromarray(preprocess.center_crop_arr(cmyk, S)).convert("L"), float)
  assert np.abs(lum - rgb[..., 0]).mean() < 6.0
  crop = preprocess.random_crop_arr(small, S, np.random.default_rng(0))
  assert crop.shape == (S, S, 3)
  with pytest.raises(BadImage, match=f"_{CORRUPT}.JPEG"):
    source.load(index[CORRUPT])

  # One full epoch (global batch = dataset size) meets the corrupt file exactly once; it is
  # replaced by the next example of the epoch's order (with the sample's own augmentation).
  d = TrainData(
    source, image_size=S, global_batch=NUM_TRAIN, seed=3, random_flip=False, exact_resize=True
  )
  batch = d.batch(0)
  assert d.num_skipped == 1
  order = d._order(0)
  pos = int(np.flatnonzero(order == index[CORRUPT])[0])
  replacement, label = source.load(int(order[(pos + 1) % NUM_TRAIN]))
  want = preprocess.random_crop_arr(replacement, S, np.random.default_rng([3, pos]))
  np.testing.assert_array_equal(batch["image"][pos], preprocess.to_float(want))
  assert batch["label"][pos] == label


class _Coordinates:
  """The ImageNet source with each image's pixels replaced by its (x, y) coordinates."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def load(self, index):
    image, label = self.source.load(index)
    w, h = image.size
    x = np.broadcast_to(np.arange(w) * (255 / (w - 1)), (h, w))
    y = np.broadcast_to((np.arange(h) * (255 / (h - 1)))[:, None], (h, w))
    arr = np.stack([x, y, np.full((h, w), 128.0)], -1).round().astype(np.uint8)
    return Image.fromarray(arr), (w, h)


def test_crop_statistics_follow_adm(data_dir):
  """Crops cover 80-100% of the short side (ADM), spread over that range; flips ~50%."""
  source = imagenet.TfdsImageSource(split="train", data_dir=data_dir)
  d = TrainData(_Coordinates(source), image_size=S, global_batch=NUM_TRAIN, seed=1)
  fracs, flips = [], []
  for step in range(10):  # 220 samples, the corrupt one replaced
    for g in range(step * NUM_TRAIN, (step + 1) * NUM_TRAIN):
      arr, (w, h) = d.sample(g)
      x = arr[4:-4, :, 0].astype(float).mean(0)  # R = x coordinate, rows away from the border
      slope = (x[-5] - x[4]) / (S - 9)  # per output pixel, interior columns
      flips.append(slope < 0)
      # Output pixel = (1 / scale) source pixels; the resized short side is min(w, h) * scale.
      source_px = abs(slope) / (255 / (w - 1))
      fracs.append(S * source_px / min(w, h))
  fracs, flips = np.array(fracs), np.array(flips)
  assert 0.78 <= fracs.min() and fracs.max() <= 1.02, (fracs.min(), fracs.max())
  assert fracs.min() < 0.84 and fracs.max() > 0.96  # the whole ADM range is used
  assert 0.35 < flips.mean() < 0.65, flips.mean()


def test_deterministic_for_a_seed(data_dir):
  a, b = take(train_data(data_dir), 0, 3), take(train_data(data_dir), 0, 3)
  c = take(train_data(data_dir, seed=1), 0, 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not all(np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_exact_resume(data_dir):
  """iterator(start_step=k) continues exactly as an uninterrupted run (across epochs)."""
  straight = take(train_data(data_dir), 0, 7)  # 56 samples: 2.5 epochs of 22
  resumed = take(train_data(data_dir), 4, 3)
  for x, y in zip(straight[4:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


class _Recording:
  def __init__(self, source):
    self.source, self.reads = source, []

  def __len__(self):
    return len(self.source)

  def load(self, index):
    try:
      out = self.source.load(index)
    except BadImage:
      self.reads.append((index, False))
      raise
    self.reads.append((index, True))
    return out


def test_two_processes_read_disjoint_halves_and_form_the_global_batch(data_dir):
  source = imagenet.TfdsImageSource(split="train", data_dir=data_dir)
  whole = TrainData(source, image_size=S, global_batch=NUM_TRAIN, seed=5)
  parts = []
  for p in range(2):
    rec = _Recording(source)
    d = TrainData(
      rec, image_size=S, global_batch=NUM_TRAIN, seed=5, process_index=p, process_count=2
    )
    parts.append((d.batch(0), rec))
  full = whole.batch(0)
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([b[key] for b, _ in parts]), full[key])
  # Each process reads only its own examples of the epoch; a read after a corrupt file is the
  # replacement of that sample (the next example of the order), not a first read.
  owned = []
  for _, rec in parts:
    first = [i for k, (i, _) in enumerate(rec.reads) if k == 0 or rec.reads[k - 1][1]]
    assert len(first) == NUM_TRAIN // 2
    owned.append(set(first))
  assert not owned[0] & owned[1]
  assert owned[0] | owned[1] == set(range(NUM_TRAIN))


def test_eval_center_crops_padded_and_split_over_processes(data_dir):
  c = cfg(data_dir)
  e = data.build_eval_data(c, image_size=S, batch_size=3)
  batches = list(e.iterator())
  assert e.num_examples == NUM_VAL and sum(int(b["mask"].sum()) for b in batches) == NUM_VAL
  assert all(b["image"].shape == (3, S, S, 3) for b in batches) and not batches[-1]["mask"][-1]
  val = imagenet.TfdsImageSource(split="validation", data_dir=data_dir)
  want = preprocess.to_float(preprocess.center_crop_arr(val.load(0)[0], S))
  np.testing.assert_array_equal(batches[0]["image"][0], want)

  def rows(batches):
    return {
      (b["label"][i], b["image"][i].tobytes()) for b in batches for i in np.flatnonzero(b["mask"])
    }

  halves = [
    rows(
      data.build_eval_data(
        c, image_size=S, batch_size=3, process_index=p, process_count=2
      ).iterator()
    )
    for p in range(2)
  ]
  assert not halves[0] & halves[1] and halves[0] | halves[1] == rows(batches)


def test_unprepared_and_tfrecord_datasets_fail_with_the_fix(tmp_path):
  with pytest.raises(imagenet.DatasetNotReady, match="softvq_jax.data.prepare_imagenet"):
    train_data(str(tmp_path / "empty"))
  tfrecord_dir = prepare_fake_imagenet(
    tmp_path, file_format="tfrecord", num_classes=1, per_class=2, num_val=1, bad_images=False
  )
  with pytest.raises(imagenet.DatasetNotReady, match="no random access") as err:
    train_data(str(tfrecord_dir))
  # The suggested command re-prepares it (from the tars) as array_record; then it loads.
  command = re.search(r"python -m (softvq_jax\S+) (.*)", str(err.value))
  assert f"--data_dir={tfrecord_dir} --overwrite" in command.group(2)
  args = command.group(2).replace("/path/to/tars", str(tmp_path / "manual")).split()
  assert command.group(1) == "softvq_jax.data.prepare_imagenet"
  prepare_imagenet.FLAGS(["prepare_imagenet", *args])  # in-process: saves a Python start-up
  try:
    prepare_imagenet.main([])
  finally:
    prepare_imagenet.FLAGS.unparse_flags()
  assert train_data(str(tfrecord_dir), global_batch=2).num_examples == 2
  with pytest.raises(imagenet.DatasetNotReady, match="needs random access"):
    data.build_train_data(
      cfg(str(tfrecord_dir), file_format="tfrecord"), image_size=S, global_batch=2, seed=0
    )


def test_manual_dir_prepares_on_a_single_process_run_only(data_dir, tmp_path):
  manual = str(pathlib.Path(data_dir).parent / "manual")
  c = cfg(str(tmp_path / "auto"), manual_dir=manual)
  with pytest.raises(imagenet.DatasetNotReady, match="multi-process run does not prepare"):
    data.build_train_data(c, image_size=S, global_batch=2, seed=0, process_count=2)
  d = data.build_train_data(c, image_size=S, global_batch=2, seed=0)
  assert d.num_examples == NUM_TRAIN and (tmp_path / "auto" / "imagenet2012").is_dir()


def test_main_trains_on_the_fake_imagenet(data_dir, tmp_path):
  workdir = tmp_path / "run"
  tiny = [
    "--config.model.image_size=32",
    "--config.model.encoder.depth=1",
    "--config.model.decoder.depth=1",
    "--config.model.encoder.width=32",
    "--config.model.decoder.width=32",
    "--config.model.encoder.heads=2",
    "--config.model.decoder.heads=2",
    "--config.model.num_latent_tokens=8",
    "--config.batch_size=8",
    "--config.eval.batch_size=4",
    "--config.optim.warmup_steps=1",
    "--config.ckpt.async_save=False",
    "--config.data.uint8_transfer=True",
  ]
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "softvq_jax.main",
      "--config=configs/tokenizer_b.py:quick",
      "--config.data.name=imagenet",
      f"--config.data.data_dir={data_dir}",
      "--config.total_steps=2",
      "--config.eval_every=2",
      "--config.image_every=2",
      "--config.log_every=1",
      *tiny,
      f"--workdir={workdir}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / "checkpoints").is_dir()
  summary = (workdir / "eval_summary.json").read_text()
  assert '"total_steps": 2' in summary and "final_eval" in summary
