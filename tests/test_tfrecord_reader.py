"""The tf.data reader (data/streams.py, data/sources/tfrecord.py) on the real `imagenet2012`
builder run offline over a fake manual_dir, prepared as tfrecord in several shard files.

Checks: the same global batches for 1 and 2 processes across epoch boundaries, exact resume,
bitwise identical batches for any worker count, each process opening only its streams' files
(the reader's own counters), the corrupt JPEG replaced by the next record of its stream and
counted, data.reader=auto picking by what is on disk, and evaluation split over processes.
"""

import collections
import sys

import ml_collections
import numpy as np
import pytest
from fake_imagenet import CORRUPT, make_fake_imagenet

from softvq_jax import data
from softvq_jax.data import pipeline, preprocess, streams, views
from softvq_jax.data.sources import imagenet, tfrecord
from softvq_jax.utils.errors import UserError

NUM_CLASSES, PER_CLASS, NUM_VAL = 3, 6, 7
NUM_TRAIN = NUM_CLASSES * PER_CLASS + 4  # + gray, cmyk, small, corrupt
SHARDS, STREAMS, GB, S = 6, 4, 8, 24
N = GB // STREAMS  # records per stream per step


@pytest.fixture(scope="module", autouse=True)
def short_lookahead():
  """Files of 3-4 records: a 64-record lookahead would read most of the split every step."""
  with pytest.MonkeyPatch.context() as m:
    m.setattr(streams, "LOOKAHEAD", 2)
    yield


def _prepare(root, file_format, **download):
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()
  manual = make_fake_imagenet(root, num_classes=NUM_CLASSES, per_class=PER_CLASS, num_val=NUM_VAL)
  builder = tfds.builder("imagenet2012", data_dir=str(root / "tfds"), file_format=file_format)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual), **download)
  )
  return str(root / "tfds")


@pytest.fixture(scope="session")
def tf_dir(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp("tfrecord"), "tfrecord", num_shards=SHARDS)


@pytest.fixture(scope="session")
def ar_dir(tmp_path_factory):
  """The same fake data as array_record (one shard): the reference for evaluation."""
  return _prepare(tmp_path_factory.mktemp("array_record"), "array_record")


def cfg(data_dir, **kw):
  base = dict(
    name="imagenet",
    data_dir=data_dir,
    reader="auto",
    tfrecord_streams=STREAMS,
    uint8_transfer=True,
    num_workers=2,
    prefetch=2,
  )
  return ml_collections.ConfigDict(dict(base, **kw))


def train(data_dir, p=0, count=1, **kw):
  return data.build_train_data(
    cfg(data_dir, **kw), image_size=S, global_batch=GB, seed=3, process_index=p, process_count=count
  )


def take(d, start, n):
  it = d.iterator(start)
  try:
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def assert_same(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


STEPS = 6


@pytest.fixture(scope="module")
def straight(tf_dir):
  d = train(tf_dir)
  return d, take(d, 0, STEPS)


def test_shards_and_streams_span_epochs(tf_dir, straight):
  d, batches = straight
  assert isinstance(d, streams.TfrecordTrainData) and d.num_examples == NUM_TRAIN
  assert len(d.split.shards) == SHARDS and sum(d.split.lengths) == NUM_TRAIN
  # Every stream's epoch 0 ends within the steps taken (and streams differ in length).
  for s in range(STREAMS):
    assert d.layout.locate(s, STEPS * N - 1)[0] >= 1
  b = batches[0]
  assert b["image"].shape == (GB, S, S, 3) and b["image"].dtype == np.uint8
  assert b["label"].dtype == np.int32 and set(b["label"].tolist()) <= set(range(NUM_CLASSES))
  f32 = take(train(tf_dir, uint8_transfer=False), 0, 1)[0]
  np.testing.assert_array_equal(f32["image"], preprocess.to_float(b["image"]))


def test_two_processes_form_the_same_global_batches(tf_dir, straight):
  _, whole = straight
  parts = [take(train(tf_dir, p, 2), 0, STEPS) for p in range(2)]
  joined = [
    {k: np.concatenate([parts[0][i][k], parts[1][i][k]]) for k in ("image", "label")}
    for i in range(STEPS)
  ]
  assert_same(joined, whole)


def test_exact_resume_and_any_worker_count(tf_dir, straight):
  _, whole = straight
  assert_same(take(train(tf_dir), 3, STEPS - 3), whole[3:])
  assert_same(take(train(tf_dir, num_workers=1), 0, 3), whole[:3])
  assert_same([train(tf_dir).batch(4)], whole[4:5])


def test_each_process_opens_only_its_streams_files(tf_dir):
  import concurrent.futures

  steps, lookahead = 3, 1
  opened = []
  for p in range(2):
    d = data.build_train_data(
      cfg(tf_dir), image_size=S, global_batch=GB, seed=3, process_index=p, process_count=2
    )
    d.split.files_opened.clear()  # check_decodable read the start of one of its own files
    d.split.records_read = 0
    d.lookahead = lookahead
    io = concurrent.futures.ThreadPoolExecutor(1)
    plan = d._planner(0, io)
    for step in range(steps):
      plan(step)  # the reads; decoding is not needed here
    io.shutdown(wait=True)
    end = steps * N + lookahead  # positions [0, end) of every stream were needed
    needed, allowed = collections.Counter(), collections.Counter()
    for s in d.local_streams:
      for shard, _, start in d.layout.segments(s, 0):
        path = d.split.shards[shard].path
        allowed[path] += 1  # the files needed and then one read ahead
        if start >= end:
          break
        needed[path] += 1
    got = collections.Counter(d.split.files_opened)
    assert needed <= got <= allowed, (p, got, needed)
    lengths = {shard.path: shard.take for shard in d.split.shards}
    want = sum(lengths[path] * count for path, count in got.items())
    assert d.read_counts()["records_read"] == want
    counts = d.read_counts()
    assert counts["files_opened"] == sum(got.values()) and counts["samples"] == steps * GB // 2
    assert (counts["slot_min"], counts["slot_max"]) == (p * GB // 2, (p + 1) * GB // 2 - 1)
    opened.append(got)
  # In epoch 0 the two processes' streams hold disjoint files.
  layout = streams.StreamLayout([1] * SHARDS, STREAMS, 3)
  first = [{int(f) for s in range(p * 2, p * 2 + 2) for f in layout.files(0, s)} for p in (0, 1)]
  assert not first[0] & first[1] and first[0] | first[1] == set(range(SHARDS))


def _corrupt_position(d):
  """(stream, position) of the corrupt JPEG in epoch 0, and the record after it."""
  split = d.split
  for s in range(STREAMS):
    q = 0
    for shard in d.layout.files(0, s):
      records = split.read(int(shard))
      for i in d.layout.order(0, int(shard)):
        try:
          split.decode(records[i], "x")
        except pipeline.BadImage as e:
          assert f"_{CORRUPT}.JPEG" in str(e)
          return s, q
        q += 1
  raise AssertionError("no corrupt record")


def test_corrupt_record_is_replaced_by_the_next_of_its_stream_and_counted(tf_dir):
  d = train(tf_dir, random_flip=False)
  s, q = _corrupt_position(d)
  step, i = divmod(q, N)
  batch = d.batch(step)
  assert d.num_skipped == 1 and d.num_bad == 1
  import concurrent.futures

  io = concurrent.futures.ThreadPoolExecutor(1)
  nxt, _ = tfrecord.Cursor(d.split, d.layout.segments(s, q), io).get(q + 1, 1)[0]
  io.shutdown()
  g = step * GB + s * N + i
  want, label = views.train_view(g, lambda short: d.split.decode(nxt, "next"), **d.view)
  np.testing.assert_array_equal(batch["image"][s * N + i], want)
  assert batch["label"][s * N + i] == label
  # The owner of stream s among 2 processes meets it too; the other does not.
  owner = s // (STREAMS // 2)
  for p in range(2):
    half = train(tf_dir, p, 2, random_flip=False)
    half.batch(step)
    assert half.num_skipped == (p == owner)


def test_reader_auto_picks_by_what_is_on_disk(tf_dir, ar_dir):
  assert imagenet.reader(cfg(tf_dir)) == "tfrecord"
  assert imagenet.reader(cfg(ar_dir)) == "array_record"
  assert imagenet.reader(cfg(ar_dir, reader="tfrecord")) == "tfrecord"
  assert isinstance(train(ar_dir), pipeline.TrainData)
  both = {"array_record", "tfrecord"}
  assert imagenet.choose_reader(both, "/data/tfds") == "array_record"
  assert imagenet.choose_reader(both, "gs://bucket/tfds") == "tfrecord"
  with pytest.raises(imagenet.DatasetNotReady, match="tfrecord.*copy it to local disk"):
    imagenet.choose_reader({"array_record"}, "gs://bucket/tfds")
  with pytest.raises(imagenet.DatasetNotReady, match="not tfrecord"):
    train(ar_dir, reader="tfrecord")
  with pytest.raises(UserError, match="data.tfrecord_streams=3 must divide"):
    train(tf_dir, tfrecord_streams=3)
  with pytest.raises(UserError, match="data.tfrecord_streams=8 exceeds the 6 shard files"):
    train(tf_dir, tfrecord_streams=8)
  with pytest.raises(UserError, match="random access"):  # latent caching, latents_online
    data.source(cfg(tf_dir), "train")


def _rows(batches):
  return [
    (int(b["label"][i]), b["image"][i].tobytes())
    for b in batches
    for i in np.flatnonzero(b["mask"])
  ]


def test_eval_blocks_per_process_cover_every_record_once(tf_dir, ar_dir):
  def build(data_dir, p=0, count=1):
    return data.build_eval_data(
      cfg(data_dir), image_size=S, batch_size=3, process_index=p, process_count=count
    )

  whole = build(tf_dir)
  assert isinstance(whole, streams.TfrecordEvalData) and whole.num_examples == NUM_VAL
  batches = list(whole.iterator())
  assert all(b["image"].shape == (3, S, S, 3) and b["image"].dtype == np.float32 for b in batches)
  assert sum(int(b["mask"].sum()) for b in batches) == NUM_VAL and not batches[-1]["mask"][-1]
  # The same records in the same (TFDS) order as the array_record reader's EvalData.
  reference = build(ar_dir)
  assert type(reference) is pipeline.EvalData
  assert _rows(batches) == _rows(reference.iterator())
  halves = []
  for p in range(2):
    e = build(tf_dir, p, 2)
    halves.append(_rows(e.iterator()))
    start, end = streams._block(NUM_VAL, p, 2, e.batch_size)
    assert len(halves[-1]) == end - start == len(pipeline.local_rows(NUM_VAL, e.batch_size, p, 2))
    ends = np.cumsum(e.source.lengths)
    own = {
      e.source.shards[k].path
      for k in range(SHARDS)
      if ends[k] > start and ends[k] - e.source.lengths[k] < end
    }
    assert set(e.source.files_opened) <= own and e.source.records_read < NUM_VAL
  assert halves[0] + halves[1] == _rows(batches)


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
