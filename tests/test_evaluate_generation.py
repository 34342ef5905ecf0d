"""Generation evaluation end to end with tiny models: the ADM `.npz` (uint8 NHWC `arr_0`, labels
`arr_1`), gFID/sFID/IS/precision/recall against independent numpy computations, resume, flags.

The core (`evaluate_sample_stream`, parts, resume) is tested with a sampler-free adapter (random
latents -> tiny tokenizer decode); the SiT path (`evaluate_generation`, the CLI) with a tiny SiT.

A stand-in feature network (`common.tiny_feature_fn`) replaces the Inception: scipy's sqrtm of
ADM's 2048 x 2048 covariances takes minutes on a small CPU (the Inception path is shared with the
tokenizer evaluation and tested there).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import TOKENIZER_SIZE as S
from tiny_models import save_tiny_sit, save_tiny_tokenizer, tiny_sit

from softvq_jax.evaluation import (
  adm_npz,
  common,
  features,
  generation,
  image_metrics,
  metrics,
)
from softvq_jax.sampling import generate as gen_lib
from softvq_jax.weights import pretrained

FEATURES = common.tiny_feature_fn(seed=3)
SETTINGS = dict(sampler="ode", steps=2, cfg_scale=1.5, cfg_interval=(0.0, 1.0))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return save_tiny_tokenizer(tmp_path_factory.mktemp("gen") / "tok")


@pytest.fixture(scope="module")
def decode_sampler(tok_dir):
  """A sampler-free adapter: sample i = decode(N(0, 1) latents from fold_in(key(7), i))."""
  tok = pretrained.load_tokenizer(tok_dir)
  decode = jax.jit(lambda z: image_metrics.to_uint8(tok.decode(z), jnp))

  def images(start, stop):
    keys = [jax.random.fold_in(jax.random.key(7), i) for i in range(start, stop)]
    z = np.stack([np.asarray(jax.random.normal(k, (8, 4))) for k in keys])
    return np.asarray(decode(z))

  def make_batches(start, stop, batch=3, fail_at=None):
    for s in range(start, stop, batch):
      if fail_at is not None and s >= fail_at:
        raise KeyboardInterrupt
      yield images(s, min(s + batch, stop))

  return images, make_batches


@pytest.fixture(scope="module")
def models(tok_dir, tmp_path_factory):
  tok = pretrained.load_tokenizer(tok_dir)
  model, params = tiny_sit()
  gen_dir = save_tiny_sit(tmp_path_factory.mktemp("sit") / "sit", tok_dir)
  return gen_lib.Generator(model, params, tok, 0.0, 1.0), gen_dir


def _fid(a, mu, sigma):
  from scipy import linalg

  m, s = a.mean(0), np.cov(a, rowvar=False)
  return float(np.sum((m - mu) ** 2) + np.trace(s + sigma - 2 * linalg.sqrtm(s @ sigma).real))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An ADM-layout reference batch: 12 uint8 images and their (stand-in) statistics."""
  images = np.random.default_rng(5).integers(0, 256, (12, S, S, 3), dtype=np.uint8)
  f = FEATURES(images)
  path = tmp_path_factory.mktemp("ref") / "VIRTUAL_tiny.npz"
  np.savez(
    path,
    arr_0=images,
    mu=f["pool"].mean(0),
    sigma=np.cov(f["pool"], rowvar=False),
    mu_s=f["spatial"].mean(0),
    sigma_s=np.cov(f["spatial"], rowvar=False),
  )
  return path, f


def test_sample_stream_end_to_end(tmp_path, decode_sampler, reference):
  images_of, make_batches = decode_sampler
  ref_path, ref_f = reference
  labels = np.arange(10) % 4
  summary = generation.evaluate_sample_stream(
    make_batches,
    labels,
    S,
    tmp_path,
    part_size=4,
    batch_size=4,
    ref_batch=str(ref_path),
    feature_fn=FEATURES,
    info={"sampler": "adapter"},
  )
  npz = tmp_path / f"samples_10x{S}x{S}x3.npz"
  assert summary["npz"] == str(npz) and not list((tmp_path / "parts").glob("part_*.npz"))
  with np.load(npz) as d:
    assert sorted(d.files) == ["arr_0", "arr_1"]
    images, npz_labels = d["arr_0"], d["arr_1"]
  assert images.dtype == np.uint8 and images.shape == (10, S, S, 3)  # NHWC
  np.testing.assert_array_equal(npz_labels, labels)
  np.testing.assert_array_equal(images, images_of(0, 10))
  f = FEATURES(images)
  with np.load(ref_path) as r:
    np.testing.assert_allclose(summary["fid"], _fid(f["pool"], r["mu"], r["sigma"]), rtol=1e-6)
    np.testing.assert_allclose(
      summary["sfid"], _fid(f["spatial"], r["mu_s"], r["sigma_s"]), rtol=1e-6
    )
  np.testing.assert_allclose(
    summary["inception_score"], metrics.inception_score(f["logits"], split_size=5000), rtol=1e-9
  )
  p, rc = metrics.precision_recall(ref_f["pool"], f["pool"])
  assert (summary["precision"], summary["recall"]) == (p, rc)
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written["sampler"] == "adapter" and written["comparable"] is False
  assert "10 images" in written["fid_warning"]  # far too few for a meaningful FID
  # Finished: the resume state is gone, the results stay (files with the umask's mode).
  left = {p.name for p in tmp_path.rglob("*")}
  assert not {n for n in left if n.startswith(("features_", "rows_", "reference_features"))}
  assert {"summary.json", npz.name} <= left
  umask = os.umask(0o022)
  os.umask(umask)
  for f in (npz, tmp_path / "summary.json"):
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
  # A rerun of a finished evaluation reads the complete .npz back (no sampling: no batches).
  again = generation.evaluate_sample_stream(
    lambda a, b: iter(()),
    labels,
    S,
    tmp_path,
    part_size=4,
    feature_fn=FEATURES,
    ref_batch=str(ref_path),
  )
  assert again["fid"] == pytest.approx(summary["fid"], rel=1e-9)  # summation order differs


def test_without_a_reference_batch_fid_is_skipped_with_the_reason(tmp_path, decode_sampler, capsys):
  _, make_batches = decode_sampler
  summary = generation.evaluate_sample_stream(
    make_batches, np.arange(4) % 2, S, tmp_path, part_size=4, feature_fn=FEATURES
  )
  assert "fid" not in summary and "inception_score" in summary
  assert summary["skipped"]["fid"] == "no ADM reference batch (--ref_batch)"
  assert "skipped: fid (no ADM reference batch (--ref_batch))" in capsys.readouterr().out
  assert type(summary["inception_score"]) is float  # plain floats, not np.float64


def test_generation_eval_end_to_end(tmp_path, models, reference):
  gen, _ = models
  ref_path, ref_f = reference
  settings = gen_lib.SamplerSettings(**SETTINGS)
  summary = generation.evaluate_generation(
    gen,
    tmp_path,
    settings=settings,
    num_samples=10,
    classes="0-3",
    batch_size=4,
    part_size=4,
    seed=7,
    ref_batch=str(ref_path),
    feature_fn=FEATURES,
  )
  npz = tmp_path / f"samples_10x{S}x{S}x3.npz"
  assert summary["npz"] == str(npz) and not list((tmp_path / "parts").glob("part_*.npz"))
  with np.load(npz) as d:
    assert sorted(d.files) == ["arr_0", "arr_1"]
    images, labels = d["arr_0"], d["arr_1"]
  assert images.dtype == np.uint8 and images.shape == (10, S, S, 3)  # NHWC
  np.testing.assert_array_equal(labels, np.arange(10) % 4)
  assert adm_npz.npz_array_info(npz) == ((10, S, S, 3), np.uint8)
  direct = gen_lib.generate_images(gen, labels, settings, batch_size=10, seed=7)
  np.testing.assert_array_equal(images, direct)  # same samples as a plain generate()

  f = FEATURES(images)
  with np.load(ref_path) as r:
    np.testing.assert_allclose(summary["fid"], _fid(f["pool"], r["mu"], r["sigma"]), rtol=1e-6)
    np.testing.assert_allclose(
      summary["sfid"], _fid(f["spatial"], r["mu_s"], r["sigma_s"]), rtol=1e-6
    )
  np.testing.assert_allclose(
    summary["inception_score"], metrics.inception_score(f["logits"], split_size=5000), rtol=1e-9
  )
  p, rc = metrics.precision_recall(ref_f["pool"], f["pool"])
  assert (summary["precision"], summary["recall"]) == (p, rc)
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written["sampler"] == "ode" and written["steps"] == 2 and written["cfg_scale"] == 1.5
  assert written["cfg_interval"] == [0.0, 1.0] and written["comparable"] is False


def test_interrupted_generation_resumes_with_the_same_samples(tmp_path, decode_sampler):
  images_of, make_batches = decode_sampler
  labels = np.arange(9) % 3
  calls = []

  def batches(start, fail_at=None):  # batches of 2 rows: parts of 3 straddle them
    calls.append(start)
    return make_batches(start, 9, batch=2, fail_at=fail_at)

  def acc(d):
    return features.FeatureAccumulator(("pool", "spatial"), ("logits", "pool"), d, capacity=9)

  parts = tmp_path / "parts"
  with pytest.raises(KeyboardInterrupt):
    generation.generate_and_extract(
      lambda s: batches(s, fail_at=6),
      labels,
      0,
      9,
      FEATURES,
      acc(parts / "r"),
      parts,
      part_size=3,
    )
  resumed = acc(parts / "r")
  files = generation.generate_and_extract(
    batches, labels, 0, 9, FEATURES, resumed, parts, part_size=3
  )
  assert calls == [0, 6]  # the resumed run starts at the third part (samples 0-5 were done)
  images = np.concatenate([np.load(p)["arr_0"] for p in files])
  np.testing.assert_array_equal(images, images_of(0, 9))
  straight = features.FeatureAccumulator(("pool", "spatial"), ("logits", "pool"))
  straight.update(FEATURES(images))
  np.testing.assert_allclose(resumed.covariance("pool"), straight.covariance("pool"), atol=1e-12)
  np.testing.assert_array_equal(resumed.rows("logits"), straight.rows("logits"))
  other = tmp_path / "other"  # interrupted after 6 samples; part_size 4 has no boundary at 6
  with pytest.raises(KeyboardInterrupt):
    generation.generate_and_extract(
      lambda s: batches(s, fail_at=6),
      labels,
      0,
      9,
      FEATURES,
      acc(other / "r"),
      other,
      part_size=3,
    )
  with pytest.raises(RuntimeError, match="part_size"):
    generation.generate_and_extract(
      batches, labels, 0, 9, FEATURES, acc(other / "r"), other, part_size=4
    )


def test_process_ranges_cover_the_samples():
  for num, pc in ((10, 3), (50_000, 8), (5, 8)):
    ranges = [generation.process_range(num, i, pc) for i in range(pc)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_command_line_generation_mode(tmp_path, models, reference, monkeypatch):

  from softvq_jax.cli import evaluate

  _, gen_dir = models
  monkeypatch.setattr(common, "inception_params", lambda path, random_init: (None, False))
  monkeypatch.setattr(common, "inception_feature_fn", lambda params: FEATURES)
  argv = [
    "evaluate",
    "--mode=generation",
    f"--model={gen_dir}",
    "--num_samples=6",
    "--batch_size=3",
    "--part_size=3",
    "--sampler=sde",
    "--steps=3",
    "--cfg_scale=2.0",
    "--cfg_interval=0,0.5",
    f"--ref_batch={reference[0]}",
    "--inception_random_init",
    f"--out={tmp_path}",
  ]
  evaluate.FLAGS.unparse_flags()
  try:
    evaluate.FLAGS(argv)
    evaluate.main([])
  finally:
    evaluate.FLAGS.unparse_flags()
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["sampler"] == "sde" and summary["cfg_interval"] == [0.0, 0.5]
  assert summary["num_samples"] == 6 and np.isfinite(summary["fid"])
  with np.load(tmp_path / f"samples_6x{S}x{S}x3.npz") as d:
    assert d["arr_0"].shape == (6, S, S, 3) and d["arr_0"].dtype == np.uint8
