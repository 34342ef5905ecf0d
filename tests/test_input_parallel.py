"""Per-example parallel input: worker-count invariance, exact resume, concurrency, skipped images
(one warning per file, counts, all-bad refusal naming data.path) and the JPEG draft decode."""

import io
import logging
import threading
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from softvq_jax import data
from softvq_jax.data import parallel, preprocess
from softvq_jax.data.pipeline import BadImage, EvalData, TrainData
from softvq_jax.data.sources.decode import decode_image
from softvq_jax.data.sources.folder import FolderSource
from softvq_jax.utils.errors import UserError

S = 32
BAD = ("broken_a.jpg", "broken_b.jpg")


def _folder(root, n=10, bad=BAD):
  """n small JPEGs/PNGs of varied sizes and modes in two classes, plus the `bad` files; and
  root/../held_out with one image (data.eval_path, so that nothing of `root` is held out)."""
  held_out = root.parent / "held_out"
  held_out.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (40, 40)).save(held_out / "one.png")
  rng = np.random.default_rng(0)
  for i in range(n):
    d = root / f"class_{i % 2}"
    d.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 255, (36 + 5 * i, 40 + 3 * i, 3), dtype=np.uint8)
    image = Image.fromarray(arr).convert(["RGB", "L", "RGB", "CMYK"][i % 4])
    image.save(d / f"img{i}.{'png' if i % 4 == 1 else 'jpg'}")
  for name in bad:
    (root / "class_0" / name).write_bytes(b"not an image")
  return root


def cfg(path, **kw):
  held_out = str(path.parent / "held_out")
  base = dict(name="folder", path=str(path), eval_path=held_out, num_workers=1, prefetch=1)
  return ml_collections.ConfigDict({**base, **kw})


def train(path, **kw):
  batch = dict(image_size=S, global_batch=kw.pop("global_batch", 6), seed=kw.pop("seed", 0))
  return data.build_train_data(cfg(path, **kw), **batch)


def take(d, start, n):
  it = d.iterator(start)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


@pytest.mark.parametrize("uint8", [False, True])
def test_batches_are_bitwise_identical_for_any_worker_count(tmp_path, uint8):
  root = _folder(tmp_path / "train")
  runs = {w: take(train(root, num_workers=w, uint8_transfer=uint8), 0, 4) for w in (1, 2, 4)}
  serial = train(root, uint8_transfer=uint8)
  for step in range(4):  # 24 samples over 12 examples: two epochs, bad files replaced
    want = serial.batch(step)
    assert want["image"].dtype == (np.uint8 if uint8 else np.float32)
    for w, batches in runs.items():
      for key in ("image", "label"):
        np.testing.assert_array_equal(batches[step][key], want[key], err_msg=f"{w} workers")
  if not uint8:  # the per-row float conversion equals the batch conversion of the uint8 rows
    u8 = train(root, uint8_transfer=True).batch(2)["image"]
    np.testing.assert_array_equal(preprocess.to_float(u8), serial.batch(2)["image"])


def test_resume_is_exact_with_many_workers(tmp_path):
  root = _folder(tmp_path / "train")
  straight = take(train(root, num_workers=4, prefetch=3), 0, 6)
  resumed = take(train(root, num_workers=3, prefetch=1), 4, 2)
  for x, y in zip(straight[4:], resumed, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(straight[0]["image"], straight[1]["image"])


class _Slow:
  """A source whose loads sleep (as decoding releases the GIL) and record their concurrency."""

  def __init__(self, n=16, delay=0.05):
    self.n, self.delay, self.active, self.peak = n, delay, 0, 0
    self.lock = threading.Lock()

  def __len__(self):
    return self.n

  def load(self, index):
    with self.lock:
      self.active += 1
      self.peak = max(self.peak, self.active)
    time.sleep(self.delay)
    with self.lock:
      self.active -= 1
    return Image.new("RGB", (40, 40), (index, 0, 0)), index


def test_workers_beyond_prefetch_decode_one_batch_together():
  source = _Slow()
  d = TrainData(source, image_size=S, global_batch=8, seed=0, num_workers=8, prefetch=1)
  it = d.iterator(0)
  next(it)
  it.close()
  assert source.peak >= 4, source.peak  # the old pipeline: one thread per batch, peak <= 2


def test_parallel_batches_keep_order_and_raise_in_order():
  rng = np.random.default_rng(0)
  delays = rng.uniform(0, 0.01, 40)

  def plan(step):
    if step == 7:
      return parallel.Pending(None, [lambda: 1 / 0])
    out = np.zeros(4, int)

    def task(j):
      time.sleep(delays[(step * 4 + j) % 40])
      out[j] = step * 4 + j

    return parallel.Pending(out, [lambda j=j: task(j) for j in range(4)])

  it = parallel.ParallelBatches(plan, 2, depth=3, workers=4)
  for step in range(2, 7):
    np.testing.assert_array_equal(next(it), np.arange(step * 4, step * 4 + 4))
  with pytest.raises(ZeroDivisionError):
    next(it)
  with pytest.raises(StopIteration):  # closed after the error
    next(it)
  assert parallel.resolve_workers(0) == parallel.available_cores() >= 1
  assert parallel.resolve_workers(3) == 3


def _expected_skips(d, steps):
  """Replacement count of the samples of `steps`, from the epoch orders and the bad indices."""
  bad = {i for i, f in enumerate(d.source.files) if f.name in BAD}
  n, total = d.num_examples, 0
  for g in range(steps * d.global_batch):
    order, pos = d._order(g // n), g % n
    while int(order[pos % n]) in bad:
      total, pos = total + 1, pos + 1
  return total


def test_bad_files_warn_once_per_run_and_are_counted(tmp_path, caplog):
  root = _folder(tmp_path / "train")
  with caplog.at_level(logging.WARNING):
    d = train(root, num_workers=3, global_batch=12)
    batches = take(d, 0, 5)  # 60 samples: five epochs of the 12 files
  warned = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
  for name in BAD:
    assert sum(name in m for m in warned) == 1, warned
  assert len(warned) == 2
  assert d.num_bad == 2
  expected = _expected_skips(d, 5)
  assert expected >= 5  # each bad file is met about once per epoch
  # Counted when decoded: the prefetched batches (up to `depth` ahead) may add to the count.
  assert expected <= d.num_skipped <= _expected_skips(d, 5 + 1 + 1)
  assert all(b["image"].shape == (12, S, S, 3) for b in batches)


def test_a_folder_of_only_bad_files_is_refused_naming_the_path(tmp_path):
  root = tmp_path / "all_bad"
  (root / "x").mkdir(parents=True)
  for name in ("a.jpg", "b.png", "c.jpeg"):
    (root / "x" / name).write_bytes(b"\x89PNG garbage")
  c = cfg(root, eval_path="")  # 1 of the 3 held out
  with pytest.raises(UserError, match="data.path") as err:
    data.build_train_data(c, image_size=S, global_batch=2, seed=0)
  assert str(root) in str(err.value) and "all 2 examples" in str(err.value)


def test_eval_is_parallel_ordered_and_counts_a_bad_image_once(tmp_path, caplog):
  root = _folder(tmp_path / "eval", n=7, bad=BAD[:1])
  files = sorted(p for p in root.rglob("*") if p.is_file())
  source = FolderSource(files, [0] * len(files), "data.eval_path='x'")
  views = data.pipeline.eval_views(S, 2)

  def passes(workers):
    e = EvalData(source, views, batch_size=4, num_workers=workers, prefetch=1)
    return e, [list(e.iterator()) for _ in range(2)]

  with caplog.at_level(logging.WARNING):
    e1, (a, a2) = passes(1)
    _, (b, _) = passes(3)
  assert len(a) == 4 and sum(int(x["mask"].sum()) for x in a) == 14  # 7 good images x 2 views
  for x, y, z in zip(a, a2, b, strict=True):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(x[key], y[key])
      np.testing.assert_array_equal(x[key], z[key])
  assert e1.num_skipped == 2  # the bad image's two views, the same after two passes
  warned = [r for r in caplog.records if BAD[0] in r.getMessage()]
  assert len(warned) == 2  # once per EvalData (= per run), not per view or pass


def _jpeg(arr, quality=95):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def test_an_8000x6000_jpeg_decodes_at_reduced_size_with_jpeg_draft():
  small = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
  blob = _jpeg(np.asarray(Image.fromarray(small).resize((8000, 6000), Image.NEAREST)), 75)
  assert decode_image(blob).size == (8000, 6000)
  drafted = decode_image(blob, draft=256)  # 6000 -> 3000 -> 1500 -> 750 >= 512: 1/8 by libjpeg
  assert drafted.size == (1000, 750)
  assert drafted.info[preprocess.DRAFT_INFO] == (8000, 6000, 8)
  assert preprocess.center_crop_arr(drafted, 256).shape == (256, 256, 3)
  png = io.BytesIO()
  Image.fromarray(small).resize((400, 300)).save(png, "PNG")
  assert decode_image(png.getvalue(), draft=64).size == (400, 300)  # only JPEGs are drafted


def test_jpeg_draft_keeps_the_geometry_and_bounds_the_pixel_difference(tmp_path):
  """Same crop positions as the full decode (a smooth ramp barely changes), and on photos the
  difference stays within the documented bound (preprocess.py: at 32 px, mean |diff| ~3.1 uint8
  levels over crops, worst crop 7.2)."""
  from softvq_jax.data.sources.photos import TRAIN_NAMES, _load

  h, w = 760, 1000
  ramp = np.stack(
    [
      np.broadcast_to(np.linspace(0, 255, w)[None, :], (h, w)),
      np.broadcast_to(np.linspace(0, 255, h)[:, None], (h, w)),
      np.full((h, w), 128.0),
    ],
    -1,
  )
  files = [tmp_path / "ramp.jpg"]
  files[0].write_bytes(_jpeg(ramp.round().astype(np.uint8)))
  for name in TRAIN_NAMES[4:8]:  # hubble (high frequency), immunohistochemistry, retina, ...
    files.append(tmp_path / f"{name}.jpg")
    files[-1].write_bytes(_jpeg(np.asarray(Image.fromarray(_load(name)).convert("RGB"))))
  source = FolderSource(files, list(range(len(files))))
  kw = dict(image_size=S, global_batch=15, seed=0, num_workers=2)
  full = TrainData(source, **kw).batch(0)
  draft = TrainData(source, jpeg_draft=True, **kw).batch(0)
  np.testing.assert_array_equal(full["label"], draft["label"])
  diff = np.abs(full["image"] - draft["image"]).mean(axis=(1, 2, 3)) * 127.5  # in uint8 steps
  ramp_rows = full["label"] == 0
  assert ramp_rows.any() and diff[ramp_rows].max() < 1.5, diff[ramp_rows]
  assert diff.max() <= 8.0 and diff[~ramp_rows].mean() <= 4.0, diff
  assert diff[~ramp_rows].mean() > 0.1  # the draft really ran (not bitwise the full decode)


def test_a_bad_image_in_a_source_without_draft_support_is_still_skipped():
  class Bad:
    def __len__(self):
      return 3

    def load(self, index):
      if index == 1:
        raise BadImage("bad #1")
      return Image.new("RGB", (40, 40), (80 * index, 0, 0)), index

  d = TrainData(Bad(), image_size=S, global_batch=3, seed=0, num_workers=2)
  assert d.check_decodable() in (0, 2)
  b = d.batch(0)
  assert 1 not in b["label"].tolist() and d.num_skipped == 1 and d.num_bad == 1


def test_latent_batches_are_identical_for_any_worker_count(tmp_path):
  from softvq_jax.data import latents

  rng = np.random.default_rng(0)
  z = rng.normal(size=(50, 2, 4, 3)).astype(np.float32)
  latents.write_cache(tmp_path / "c", z, rng.integers(0, 10, 50), dtype="bfloat16")
  source = latents.LatentSource(tmp_path / "c")

  def batches(workers, start=0, n=3):
    d = latents.LatentTrainData(source, global_batch=40, seed=1, num_workers=workers, prefetch=1)
    return d, take(d, start, n)

  d1, one = batches(1)
  _, four = batches(4)
  _, resumed = batches(3, start=2, n=1)
  for step, (x, y) in enumerate(zip(one, four, strict=True)):
    for key in ("latent", "label"):
      np.testing.assert_array_equal(x[key], y[key])
      np.testing.assert_array_equal(x[key], d1.batch(step)[key])
  np.testing.assert_array_equal(resumed[0]["latent"], one[2]["latent"])
  evals = [
    list(latents.LatentEvalData(source, batch_size=16, num_workers=w, prefetch=1).iterator())
    for w in (1, 3)
  ]
  assert len(evals[0]) == 4 and int(sum(b["mask"].sum() for b in evals[0])) == 50
  for x, y in zip(*evals, strict=True):
    np.testing.assert_array_equal(x["latent"], y["latent"])


def test_encode_ahead_keeps_order_overlaps_and_closes():
  from softvq_jax.training.online_latents import EncodeAhead

  class Source:
    closed = False

    def __init__(self):
      self.i = 0

    def __next__(self):
      self.i += 1
      return self.i

    def close(self):
      self.closed = True

  calls = []

  def encode(x):
    calls.append(threading.current_thread().name)
    time.sleep(0.002 * (x % 3))
    return x * 10

  src = Source()
  it = EncodeAhead(src, encode, depth=2)
  assert [next(it) for _ in range(6)] == [10, 20, 30, 40, 50, 60]
  assert all(name.startswith("softvq_encode") for name in calls)  # not the consuming thread
  time.sleep(0.05)
  assert src.i >= 8  # two batches encoded ahead of the consumer
  it.close()
  assert src.closed
  with pytest.raises(StopIteration):
    next(it)


def _adm_random_crop(pil_image, image_size, rng, min_crop_frac=0.8, max_crop_frac=1.0):
  """guided-diffusion's random_crop_arr as the reference has it, with its three random draws
  (short side, y, x) taken from `rng` in the same order instead of Python's `random`."""
  import math

  min_smaller = math.ceil(image_size / max_crop_frac)
  max_smaller = math.ceil(image_size / min_crop_frac)
  smaller = int(rng.integers(min_smaller, max_smaller + 1))
  while min(*pil_image.size) >= 2 * smaller:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = smaller / min(*pil_image.size)
  size = tuple(round(x * scale) for x in pil_image.size)
  arr = np.array(pil_image.resize(size, resample=Image.BICUBIC))
  y = int(rng.integers(0, arr.shape[0] - image_size + 1))
  x = int(rng.integers(0, arr.shape[1] - image_size + 1))
  return arr[y : y + image_size, x : x + image_size]


def test_the_split_crop_draws_equal_the_reference_adm_crop():
  """random_short_side + crop_at_short_side (the pipeline's order: the short side is known
  before decoding) give the reference ADM crop bitwise, halvings and upscaling included."""
  rng = np.random.default_rng(0)
  for _ in range(40):
    w, h = (int(v) for v in rng.integers(10, 700, 2))
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    s, seed = int(rng.integers(8, 160)), int(rng.integers(1 << 30))
    want = _adm_random_crop(image, s, np.random.default_rng(seed), 0.5)
    g = np.random.default_rng(seed)
    short = preprocess.random_short_side(s, g, 0.5)
    np.testing.assert_array_equal(preprocess.crop_at_short_side(image, s, short, g), want)
    np.testing.assert_array_equal(
      preprocess.random_crop_arr(image, s, np.random.default_rng(seed), 0.5), want
    )
