"""Tokenizer evaluation (`python -m softvq_jax.evaluate`): metrics against independent numpy
computations on the bundled photos, identity round trip (rFID ~ 0), resume, flags and errors.

A small stand-in feature network replaces the Inception where the Fréchet distance is computed:
scipy's sqrtm of ADM's 2048 x 2048 covariances takes minutes on a small CPU. The Inception path
itself (random weights, real shapes) is exercised by `test_inception_feature_path`.
"""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image
from tiny_models import TOKENIZER_SIZE, save_tiny_tokenizer

from softvq_jax import data
from softvq_jax.evaluation import common, image_metrics, metrics, reconstruction, tokenizer_eval
from softvq_jax.weights import pretrained

S = TOKENIZER_SIZE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return save_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "model")


_RNG = np.random.default_rng(0)
_W = {k: _RNG.normal(size=(48, d)) for k, d in (("pool", 16), ("spatial", 12), ("logits", 10))}


def standin_features(images_u8: np.ndarray) -> dict[str, np.ndarray]:
  """uint8 (n, S, S, 3) -> small deterministic features (4x4 average pool, random projections)."""
  x = np.asarray(images_u8, np.float64) / 255.0
  n = len(x)
  x = x.reshape(n, 4, S // 4, 4, S // 4, 3).mean(axis=(2, 4)).reshape(n, 48)
  return {k: np.tanh(x @ w - 0.3).astype(np.float32) * 3 for k, w in _W.items()}


def photos_cfg():
  return ml_collections.ConfigDict({"name": "photos", "num_workers": 1, "prefetch": 1})


def _eval_images(num_images: int, crops: int = 4) -> np.ndarray:
  ev = data.build_eval_data(
    tokenizer_eval.eval_data_config(photos_cfg(), "validation", crops), image_size=S, batch_size=8
  )
  x = np.concatenate([b["image"][b["mask"]] for b in ev.iterator()])
  return x[:num_images]


def _fid(a: np.ndarray, b: np.ndarray) -> float:
  """Independent FID of two feature sets: numpy statistics, scipy sqrtm (ADM's formula)."""
  from scipy import linalg

  m1, m2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = linalg.sqrtm(s1 @ s2).real
  return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_tokenizer_eval_on_photos_matches_independent_numpy(tmp_path, model_dir):
  out = tmp_path / "eval"
  summary = tokenizer_eval.evaluate_tokenizer(
    model_dir,
    out,
    data_cfg=photos_cfg(),
    num_images=7,  # 2 photos x 4 crops, cut to 7: a partial, padded last batch
    crops=4,
    batch_size=3,
    feature_fn=standin_features,
    grid_images=4,
  )
  written = json.loads((out / "summary.json").read_text())
  for key in ("rfid", "rsfid", "inception_score", "psnr", "ssim", "codebook_usage"):
    assert isinstance(written[key], float) and np.isfinite(written[key]), key
  assert written["num_images"] == 7 and written["comparable"] is False
  assert written["image_size"] == S and written["split"] == "validation"

  # Independent recomputation from the same images.
  tok = pretrained.load_tokenizer(model_dir)
  x = _eval_images(7)
  z, info = tok.encode(x)
  rec = np.asarray(tok.decode(z))
  xu8, ru8 = image_metrics.to_uint8(x), image_metrics.to_uint8(rec)
  np.testing.assert_allclose(
    summary["psnr"], np.mean(image_metrics.psnr(xu8, ru8, 255.0)), rtol=1e-5
  )
  np.testing.assert_allclose(
    summary["ssim"], np.mean(image_metrics.ssim(xu8, ru8, 255.0)), rtol=1e-5
  )
  fr, ff = standin_features(xu8), standin_features(ru8)
  np.testing.assert_allclose(summary["rfid"], _fid(fr["pool"], ff["pool"]), rtol=1e-6)
  np.testing.assert_allclose(summary["rsfid"], _fid(fr["spatial"], ff["spatial"]), rtol=1e-6)
  np.testing.assert_allclose(
    summary["inception_score"], metrics.inception_score(ff["logits"], split_size=5000), rtol=1e-6
  )
  idx = np.asarray(info["indices"])  # (7, 8): tokens 0-3 use codebook 0, 4-7 codebook 1
  used = [len(np.unique(idx[:, :4])), len(np.unique(idx[:, 4:]))]
  np.testing.assert_allclose(summary["codebook_usage"], np.mean(used) / 16)
  assert 1.0 <= summary["codebook_perplexity"] <= max(used)

  grid = np.asarray(Image.open(out / "reconstructions.png"))
  assert grid.shape == (2 + 1 * (S + 2), 2 + 8 * (S + 2), 3)  # 4 pairs in one row


def test_identity_round_trip_gives_zero_rfid(tmp_path, model_dir):
  summary = tokenizer_eval.evaluate_tokenizer(
    model_dir,
    tmp_path,
    data_cfg=photos_cfg(),
    crops=4,
    batch_size=8,
    feature_fn=standin_features,
    round_trip=lambda params, x: (x, {}),
    resume=False,
  )
  assert summary["num_images"] == 8
  assert abs(summary["rfid"]) < 1e-6 and abs(summary["rsfid"]) < 1e-6
  assert summary["psnr"] == float("inf") and summary["ssim"] == pytest.approx(1.0)
  assert "codebook_usage" not in summary  # no indices from the identity
  assert json.loads((tmp_path / "summary.json").read_text())["psnr"] == "inf"  # strict JSON


def test_interrupted_evaluation_resumes_exactly(tmp_path, model_dir):
  tok = pretrained.load_tokenizer(model_dir)
  fn = reconstruction.make_reconstruct_fn(reconstruction.tokenizer_round_trip(tok), tok.params)
  x = _eval_images(8)
  batches = [{"image": x[i : i + 2], "mask": np.ones(2, bool)} for i in range(0, 8, 2)]

  def interrupted():
    yield from batches[:3]
    raise KeyboardInterrupt

  path = tmp_path / "state.npz"
  with pytest.raises(KeyboardInterrupt):
    reconstruction.run_reconstruction(
      fn,
      standin_features,
      interrupted(),
      reconstruction.ReconstructionState(True, 2, 16),
      state_path=path,
      save_every=2,
    )
  resumed = reconstruction.ReconstructionState(True, 2, 16)
  reconstruction.run_reconstruction(
    fn, standin_features, iter(batches), resumed, state_path=path, save_every=2
  )
  straight = reconstruction.run_reconstruction(
    fn, standin_features, iter(batches), reconstruction.ReconstructionState(True, 2, 16)
  )
  assert resumed.count == straight.count == 8 and resumed.batches == 4
  a, b = reconstruction.summarize(resumed), reconstruction.summarize(straight)
  assert a.keys() == b.keys() and "precision" in a
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-9, err_msg=k)


def test_inception_feature_path(model_dir):
  params, comparable = common.inception_params(None, random_init=True)
  assert not comparable
  tok = pretrained.load_tokenizer(model_dir)
  fn = reconstruction.make_reconstruct_fn(reconstruction.tokenizer_round_trip(tok), tok.params)
  state = reconstruction.ReconstructionState(False, 2, 16)
  x = _eval_images(3)
  reconstruction.run_reconstruction(
    fn, common.inception_feature_fn(params), [{"image": x, "mask": np.ones(3, bool)}], state
  )
  assert state.real.count == state.fake.count == 3
  assert state.fake.mean("pool").shape == (2048,) and state.fake.mean("spatial").shape == (2023,)
  assert state.fake.rows("logits").shape == (3, 1008)
  assert np.abs(state.real.mean("pool") - state.fake.mean("pool")).max() > 0


def test_missing_inception_weights_name_the_flag(tmp_path, model_dir):
  with pytest.raises(ValueError, match="--inception"):
    tokenizer_eval.evaluate_tokenizer(model_dir, tmp_path, data_cfg=photos_cfg())
  with pytest.raises(FileNotFoundError, match="inception_path"):
    tokenizer_eval.evaluate_tokenizer(
      model_dir, tmp_path, data_cfg=photos_cfg(), inception_path=str(tmp_path / "none.pth")
    )


def test_command_line(tmp_path, model_dir, monkeypatch, capsys):

  from softvq_jax.cli import evaluate

  monkeypatch.setattr(common, "inception_params", lambda path, random_init: (None, False))
  monkeypatch.setattr(common, "inception_feature_fn", lambda params: standin_features)
  argv = [
    "evaluate",
    f"--model={model_dir}",
    "--data=photos",
    "--crops=2",
    "--num_images=3",
    "--batch_size=2",
    "--inception_random_init",
    "--save_npz",
    f"--out={tmp_path}",
  ]
  evaluate.FLAGS.unparse_flags()
  evaluate.FLAGS(argv)
  try:
    evaluate.main([])
  finally:
    evaluate.FLAGS.unparse_flags()
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["num_images"] == 3 and summary["crops"] == 2
  with np.load(tmp_path / "reconstructions.npz") as f:
    assert f["arr_0"].shape == (3, S, S, 3) and f["arr_0"].dtype == np.uint8
  out = capsys.readouterr().out
  assert '"rfid"' in out
  # 3 images: warned (singular covariance), skipped metrics named, resume state removed.
  assert "warning: FID from 3 images" in out and "3 images" in summary["fid_warning"]
  assert "fid_vs_reference (no reference statistics (--ref_stats))" in out
  assert set(summary["skipped"]) == {"fid_vs_reference", "lpips", "precision/recall"}
  assert not (tmp_path / "eval_state.npz").exists()


def test_lpips_branch_matches_lpips(model_dir):
  from softvq_jax.objectives import perceptual
  from softvq_jax.weights import lpips as loader

  lp_params = loader.load_lpips_params(None, None, random_init=True)
  tok = pretrained.load_tokenizer(model_dir)
  fn = reconstruction.make_reconstruct_fn(
    reconstruction.tokenizer_round_trip(tok),
    tok.params,
    lpips_fn=perceptual.lpips,
    lpips_params=lp_params,
  )
  x = _eval_images(2)
  out = fn(x)
  to_f = lambda u: u.astype(np.float32) / 127.5 - 1
  ref = perceptual.lpips(lp_params, to_f(out["original"]), to_f(out["reconstruction"]))
  np.testing.assert_allclose(out["lpips"], np.asarray(ref).reshape(-1), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="--lpips_lin"):
    tokenizer_eval.lpips_components("vgg.safetensors", None)
  with pytest.raises(FileNotFoundError, match="lpips_lin_path"):
    tokenizer_eval.lpips_components(None, "missing_lin.pth")


def test_tokenizer_eval_on_fake_imagenet_validation(tmp_path, model_dir):
  import fake_imagenet as fake

  data_dir = fake.prepare_fake_imagenet(
    tmp_path / "imagenet", num_classes=2, per_class=2, num_val=5, bad_images=False
  )
  cfg = ml_collections.ConfigDict(
    dict(name="imagenet", data_dir=str(data_dir), manual_dir="", num_workers=1, prefetch=1)
  )
  summary = tokenizer_eval.evaluate_tokenizer(
    model_dir,
    tmp_path / "out",
    data_cfg=cfg,
    split="validation",
    batch_size=2,
    feature_fn=standin_features,
  )
  assert summary["num_images"] == 5 and summary["split"] == "validation"
  # The same 5 validation images, ADM center crop, through the tokenizer independently.
  ev = data.build_eval_data(
    tokenizer_eval.eval_data_config(cfg, "validation", 1), image_size=S, batch_size=8
  )
  x = np.concatenate([b["image"][b["mask"]] for b in ev.iterator()])
  tok = pretrained.load_tokenizer(model_dir)
  xu8 = image_metrics.to_uint8(x)
  ru8 = image_metrics.to_uint8(tok.decode(tok.encode(x)[0]))
  np.testing.assert_allclose(
    summary["psnr"], np.mean(image_metrics.psnr(xu8, ru8, 255.0)), rtol=1e-5
  )
  fr, ff = standin_features(xu8), standin_features(ru8)
  np.testing.assert_allclose(summary["rfid"], _fid(fr["pool"], ff["pool"]), rtol=1e-6)
