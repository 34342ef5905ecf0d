"""Latent caching: cached z_q equal direct encodes, statistics, the TrainData contract, atomicity.

A tiny random tokenizer (32px, L=8, D=4) is saved as a model dir and encodes the bundled photos
(the cache writer, data/latents/, takes its encode function from training/online_latents.py,
as does the online encoder).
"""

import os
import pathlib
import subprocess
import sys

import ml_collections
import ml_dtypes
import numpy as np
import pytest
from tiny_models import TOKENIZER_SIZE, save_tiny_tokenizer

from softvq_jax import data
from softvq_jax.data import latents, preprocess
from softvq_jax.data.sources.photos import PhotoSource
from softvq_jax.training import online_latents
from softvq_jax.weights import pretrained

ROOT = pathlib.Path(__file__).parents[1]

S, L, D = TOKENIZER_SIZE, 8, 4  # tiny_models' tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return save_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "model")


@pytest.fixture(scope="module")
def tok(tok_dir):
  return pretrained.load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def cache_f32(tok, tok_dir, tmp_path_factory):
  """float32 cache of the 9 training photos in 3 shards."""
  out = tmp_path_factory.mktemp("cache") / "photos_f32"
  info = online_latents.encode_with_tokenizer(
    tok,
    PhotoSource("train"),
    out,
    tokenizer_path=str(tok_dir),
    dataset="photos",
    batch_size=4,
    dtype="float32",
    examples_per_shard=3,
  )
  assert info is not None
  return out


def _direct(tok, source):
  """Independent reference: Tokenizer.encode of the center crops and of their flips."""
  crops = np.stack([preprocess.center_crop_arr(source.load(i)[0], S) for i in range(len(source))])
  z = np.asarray(tok.encode(preprocess.to_float(crops))[0])
  z_flip = np.asarray(tok.encode(preprocess.to_float(crops[:, :, ::-1]))[0])
  return np.stack([z, z_flip], axis=1)  # (N, 2, L, D)


def _latent_cfg(path, **kw):
  return ml_collections.ConfigDict(dict(name="latents", path=str(path), num_workers=2, **kw))


def test_cache_equals_direct_encode_and_statistics(cache_f32, tok, tok_dir):
  info = latents.cache_info(cache_f32)
  assert info["num_examples"] == 9 and info["num_tokens"] == L and info["dim"] == D
  assert info["image_size"] == S and info["flip"] is True and info["dtype"] == "float32"
  assert info["tokenizer"] == str(tok_dir) and len(info["shards"]) == 3
  assert info["tokenizer_config"]["model"]["num_latent_tokens"] == L
  source = latents.LatentSource(cache_f32)
  both, labels = source.read_both(range(len(source)))
  assert both.shape == (9, 2, L, D) and both.dtype == np.float32
  np.testing.assert_array_equal(labels, np.arange(9))  # photo labels are the image index
  expected = _direct(tok, PhotoSource("train"))
  np.testing.assert_allclose(both, expected, atol=1e-5, rtol=1e-5)
  assert np.abs(both[:, 0] - both[:, 1]).max() > 1e-3  # the flip is a different image
  z64 = both.astype(np.float64)
  np.testing.assert_allclose(info["vq_mean"], z64.mean(), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(info["vq_std"], z64.std(), rtol=1e-9)
  # the shards are plain ArrayRecord files any ArrayRecordDataSource reads
  from array_record.python.array_record_data_source import ArrayRecordDataSource

  files = [str(cache_f32 / s["file"]) for s in info["shards"]]
  rec = ArrayRecordDataSource(files)[5]
  z, lab = latents.decode_records([rec], L, D, "float32")
  np.testing.assert_array_equal(z[0], both[5])
  assert lab[0] == 5


def test_train_iterator_contract_determinism_and_resume(cache_f32):
  cfg = _latent_cfg(cache_f32)
  d = data.build_train_data(cfg, image_size=S, global_batch=6, seed=3)
  assert isinstance(d, latents.LatentTrainData) and d.num_examples == 9
  it = d.iterator(0)
  straight = [next(it) for _ in range(6)]
  it.close()
  it = data.build_train_data(cfg, image_size=S, global_batch=6, seed=3).iterator(4)
  resumed = [next(it) for _ in range(2)]
  it.close()
  for a, b in zip(straight[4:], resumed):
    np.testing.assert_array_equal(a["latent"], b["latent"])
    np.testing.assert_array_equal(a["label"], b["label"])
  b0 = straight[0]
  assert b0["latent"].shape == (6, L, D) and b0["latent"].dtype == np.float32
  assert b0["label"].dtype == np.int32
  # epochs are permutations: 36 samples = 4 epochs of the 9 examples
  labels = np.concatenate([b["label"] for b in straight]).reshape(4, 9)
  for e in range(4):
    assert sorted(labels[e]) == list(range(9))
  # each sample is the cached crop or flip chosen by flip_bits(seed, g)
  both, _ = latents.LatentSource(cache_f32).read_both(range(9))
  g = np.arange(36)
  flips = latents.flip_bits(3, g)
  got = np.concatenate([b["latent"] for b in straight])
  np.testing.assert_array_equal(got, both[labels.reshape(-1), flips.astype(int)])
  assert 0 < flips.sum() < 36
  # another seed gives another order
  other = data.build_train_data(cfg, global_batch=6, seed=4).batch(0)
  assert not np.array_equal(other["label"], b0["label"])
  # random_flip=False always reads the center crop
  noflip = data.build_train_data(_latent_cfg(cache_f32, random_flip=False), global_batch=6, seed=3)
  np.testing.assert_array_equal(noflip.batch(0)["latent"], both[b0["label"], 0])


def test_flip_bits_are_fair_and_seeded():
  g = np.arange(100_000)
  a, b = latents.flip_bits(0, g), latents.flip_bits(1, g)
  assert abs(a.mean() - 0.5) < 0.01 and abs(b.mean() - 0.5) < 0.01
  assert abs((a == b).mean() - 0.5) < 0.01  # seeds are independent
  np.testing.assert_array_equal(a[17:30], latents.flip_bits(0, np.arange(17, 30)))


def test_two_processes_split_the_global_batch(cache_f32):
  cfg = _latent_cfg(cache_f32)
  whole = data.build_train_data(cfg, global_batch=6, seed=1).batch(5)
  parts = [
    data.build_train_data(cfg, global_batch=6, seed=1, process_index=p, process_count=2).batch(5)
    for p in range(2)
  ]
  for k in ("latent", "label"):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    assert len(parts[0][k]) == 3


def test_eval_data_is_padded_masked_and_covers_each_example_once(cache_f32):
  both, _ = latents.LatentSource(cache_f32).read_both(range(9))
  seen = []
  for p in range(2):
    e = data.build_eval_data(
      _latent_cfg(cache_f32, eval_examples=7), batch_size=3, process_index=p, process_count=2
    )
    assert e.num_examples == 7
    batches = list(e.iterator())
    assert len(batches) == 2  # ceil(ceil(7 / 2) / 3) on both processes
    for b in batches:
      assert b["latent"].shape == (3, L, D) and b["mask"].dtype == bool
      for z, y, m in zip(b["latent"], b["label"], b["mask"]):
        if m:
          np.testing.assert_array_equal(z, both[y, 0])
          seen.append(int(y))
  assert sorted(seen) == list(range(7))


def test_multiprocess_encode_resume_and_incomplete_errors(tok, tok_dir, cache_f32, tmp_path):
  out = tmp_path / "mp"
  kw = dict(tokenizer_path=str(tok_dir), dataset="photos", batch_size=4, dtype="float32")
  kw["examples_per_shard"] = 3
  # process 0 of 2 writes shard 0 (shards 0..2 split as [0], [1, 2]); the cache is not complete
  assert (
    online_latents.encode_with_tokenizer(
      tok, PhotoSource("train"), out, process_index=0, process_count=2, **kw
    )
    is None
  )
  partial = out.with_name("mp.incomplete")
  assert sorted(p.name for p in partial.glob("*.array_record-*")) == [
    "latents-train.array_record-00000-of-00003"
  ]
  with pytest.raises(latents.IncompleteCacheError, match="incomplete.*1/3 shards.*resume"):
    latents.cache_info(out)
  with pytest.raises(latents.IncompleteCacheError, match="cache_latents"):
    data.build_train_data(_latent_cfg(out), global_batch=2, seed=0)
  with pytest.raises(latents.IncompleteCacheError, match="does not exist"):
    latents.cache_info(tmp_path / "nothing")
  # a different setting does not silently mix into the partial cache
  with pytest.raises(latents.CacheConflictError, match="dtype"):
    online_latents.encode_with_tokenizer(
      tok, PhotoSource("train"), out, **dict(kw, dtype="bfloat16")
    )
  # process 1 (or a resumed single process) completes it without redoing shard 0
  shard0 = partial / "latents-train.array_record-00000-of-00003"
  os.utime(shard0, (1, 1))
  info = online_latents.encode_with_tokenizer(
    tok, PhotoSource("train"), out, process_index=1, process_count=2, **kw
  )
  assert info is not None and not partial.exists()
  assert (out / shard0.name).stat().st_mtime == 1  # reused, not re-encoded
  ref = latents.cache_info(cache_f32)
  assert info["num_examples"] == 9 and info["vq_mean"] == pytest.approx(ref["vq_mean"], rel=1e-6)
  np.testing.assert_array_equal(
    latents.LatentSource(out).read_both(range(9))[0],
    latents.LatentSource(cache_f32).read_both(range(9))[0],
  )
  # complete caches are not overwritten unless asked
  with pytest.raises(FileExistsError, match="--overwrite"):
    online_latents.encode_with_tokenizer(tok, PhotoSource("train"), out, **kw)
  kw["max_examples"] = 4
  info = online_latents.encode_with_tokenizer(tok, PhotoSource("train"), out, overwrite=True, **kw)
  assert info["num_examples"] == 4 and len(latents.LatentSource(out)) == 4
  # a deleted shard is detected
  (out / info["shards"][0]["file"]).unlink()
  with pytest.raises(latents.IncompleteCacheError, match="lacks 1 shard"):
    latents.cache_info(out)


def test_cli_end_to_end_bfloat16(tok_dir, cache_f32, tmp_path):
  out = tmp_path / "cli"
  cmd = [
    sys.executable,
    "-m",
    "softvq_jax.data.cache_latents",
    f"--tokenizer={tok_dir}",
    "--data=photos",
    "--split=train",
    f"--out={out}",
    "--batch=8",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  info = latents.cache_info(out)
  assert info["dtype"] == "bfloat16" and info["num_examples"] == 9
  assert f"vq_mean={info['vq_mean']:.6g} vq_std={info['vq_std']:.6g}" in r.stdout
  both, _ = latents.LatentSource(out).read_both(range(9))
  assert both.dtype == ml_dtypes.bfloat16
  ref, _ = latents.LatentSource(cache_f32).read_both(range(9))
  # one bfloat16 rounding (relative 2^-8) of the float32 latents, allowing device-noise ties
  np.testing.assert_allclose(both.astype(np.float32), ref, rtol=2**-8, atol=1e-5)
  z64 = both.astype(np.float64)
  np.testing.assert_allclose(info["vq_std"], z64.std(), rtol=1e-9)
  # a second run refuses to overwrite, with a one-line error
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and "pass --overwrite" in r.stderr


def _online_cfg(tok_dir, **kw):
  return ml_collections.ConfigDict(
    dict(name="latents_online", tokenizer=str(tok_dir), image_source="photos", num_workers=2, **kw)
  )


def test_online_fallback_matches_the_cache(cache_f32, tok_dir):
  cached = data.build_train_data(_latent_cfg(cache_f32), global_batch=4, seed=2)
  online_cfg = _online_cfg(tok_dir)
  online = online_latents.build_train_data(online_cfg, global_batch=4, seed=2)
  assert isinstance(online, online_latents.OnlineLatentTrainData) and online.num_examples == 9
  assert isinstance(online, latents.LatentTrainData)  # its example order and flip selection
  it_c, it_o = cached.iterator(1), online.iterator(1)
  for _ in range(3):  # 12 samples: crosses an epoch, both flip variants
    a, b = next(it_c), next(it_o)
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(b["latent"], a["latent"], atol=1e-5, rtol=1e-5)
  it_c.close()
  it_o.close()
  flips = np.concatenate([online.selection(s)[1] for s in range(1, 4)])
  assert 0 < flips.sum() < len(flips)
  # without random flips: the center crops, in the same order
  noflip = online_latents.build_train_data(
    _online_cfg(tok_dir, random_flip=False), global_batch=4, seed=2
  )
  ref = data.build_train_data(_latent_cfg(cache_f32, random_flip=False), global_batch=4, seed=2)
  a, b = ref.batch(2), noflip.batch(2)
  np.testing.assert_array_equal(a["label"], b["label"])
  np.testing.assert_allclose(b["latent"], a["latent"], atol=1e-5, rtol=1e-5)
  ev = online_latents.build_eval_data(online_cfg, batch_size=4)
  batches = list(ev.iterator())
  assert ev.num_examples == 2 and len(batches) == 1 and batches[0]["mask"].sum() == 2
  # data/ cannot build it (no model code there) and says who does
  for build in (
    lambda: data.build_train_data(online_cfg, global_batch=4, seed=2),
    lambda: data.build_eval_data(online_cfg, batch_size=4),
  ):
    with pytest.raises(ValueError, match="generator task.*online_latents"):
      build()


def test_online_eval_matches_a_cache_of_the_eval_split(tok, tok_dir, tmp_path):
  out = tmp_path / "eval_cache"
  info = online_latents.encode_with_tokenizer(
    tok, PhotoSource("eval"), out, tokenizer_path=str(tok_dir), split="eval", dtype="float32"
  )
  assert info["num_examples"] == 2 and info["split"] == "eval"
  cfg = _latent_cfg(tmp_path / "unused", eval_path=str(out))
  for p in range(2):
    kw = dict(batch_size=3, process_index=p, process_count=2)
    cached = list(data.build_eval_data(cfg, **kw).iterator())
    online = list(online_latents.build_eval_data(_online_cfg(tok_dir), **kw).iterator())
    assert len(cached) == len(online) == 1
    for a, b in zip(cached, online):
      np.testing.assert_array_equal(a["mask"], b["mask"])
      np.testing.assert_array_equal(a["label"], b["label"])
      m = a["mask"]
      np.testing.assert_allclose(b["latent"][m], a["latent"][m], atol=1e-5, rtol=1e-5)


def test_writer_takes_any_encode_fn(tmp_path):
  """No tokenizer: the writer encodes with the function it is given (crop, then flip)."""
  calls = []

  def encode_fn(images):  # uint8 (n, S, S, 3) -> (n, L=S, D=3): mean over one image axis
    calls.append(images.shape)
    return images.astype(np.float32).mean(axis=2) / 255.0

  source = PhotoSource("train")
  info = latents.encode_dataset(
    encode_fn,
    source,
    tmp_path / "c",
    image_size=S,
    num_tokens=S,
    dim=3,
    batch_size=4,
    dtype="float32",
    examples_per_shard=5,
    num_workers=2,
  )
  assert calls and all(c == (8, S, S, 3) for c in calls)  # fixed shape: 2 x batch_size
  assert info["num_examples"] == 9 and len(info["shards"]) == 2 and info["tokenizer"] == ""
  crops = np.stack([preprocess.center_crop_arr(source.load(i)[0], S) for i in range(9)])
  expected = np.stack([encode_fn(crops), encode_fn(crops[:, :, ::-1])], axis=1)
  both, labels = latents.LatentSource(tmp_path / "c").read_both(range(9))
  np.testing.assert_array_equal(both, expected)
  np.testing.assert_array_equal(labels, np.arange(9))


def test_registration_and_clear_errors(tmp_path):
  assert {"latents", "latents_online"} <= set(data.DATASETS)
  with pytest.raises(latents.IncompleteCacheError, match="data.path"):
    data.build_train_data(_latent_cfg(""), global_batch=2, seed=0)
  (tmp_path / "junk").mkdir()
  with pytest.raises(latents.IncompleteCacheError, match="not a complete latent cache"):
    data.build_eval_data(_latent_cfg(tmp_path / "junk"), batch_size=2)
  with pytest.raises(ValueError, match="data.tokenizer"):
    data.build_train_data(
      ml_collections.ConfigDict(dict(name="latents_online")), global_batch=2, seed=0
    )
  with pytest.raises(ValueError, match="needs --config.data.tokenizer"):
    online_latents.build_train_data(
      ml_collections.ConfigDict(dict(name="latents_online")), global_batch=2, seed=0
    )
  with pytest.raises(ValueError, match="data.image_source"):
    data.source(ml_collections.ConfigDict(dict(name="latents_online", image_source="latents")))
  with pytest.raises(ValueError, match="unknown data.name"):
    data.source(ml_collections.ConfigDict(dict(name="nope")))
  assert (
    set(data.SOURCES)
    == set(data.DATASETS)
    == set(data.IMAGE_DATASETS)
    | {
      "latents",
      "latents_online",
    }
  )


def test_records_roundtrip_bfloat16():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 2, L, D)).astype(ml_dtypes.bfloat16)
  recs = latents.encode_records(z, np.array([7, -1, 1000]))
  assert all(len(r) == 4 + 2 * L * D * 2 for r in recs)
  back, labels = latents.decode_records(recs, L, D, "bfloat16")
  np.testing.assert_array_equal(back, z)
  np.testing.assert_array_equal(labels, [7, -1, 1000])
  with pytest.raises(ValueError, match="expected"):
    latents.decode_records(recs, L, D, "float32")


def test_write_cache_from_arrays(tmp_path):
  rng = np.random.default_rng(1)
  z = rng.normal(size=(5, 2, L, D)).astype(np.float32)
  info = latents.write_cache(tmp_path / "c", z, np.arange(5) * 10, examples_per_shard=2)
  assert info["num_examples"] == 5 and len(info["shards"]) == 3 and info["num_tokens"] == L
  np.testing.assert_allclose(info["vq_mean"], z.astype(np.float64).mean(), rtol=1e-9)
  np.testing.assert_allclose(info["vq_std"], z.astype(np.float64).std(), rtol=1e-9)
  got, labels = latents.LatentSource(tmp_path / "c").read([4, 0], flips=np.array([True, False]))
  np.testing.assert_array_equal(got, np.stack([z[4, 1], z[0, 0]]))
  np.testing.assert_array_equal(labels, [40, 0])
  with pytest.raises(FileExistsError):
    latents.write_cache(tmp_path / "c", z, np.arange(5))
