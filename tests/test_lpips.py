"""LPIPS-VGG16: forward vs an independent numpy re-computation, gradients, warm-up, loaders."""

import contextlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.objectives.perceptual import lpips, lpips_loss, perceptual_weight_at
from softvq_jax.weights import io as wio
from softvq_jax.weights import lpips as L

# ---------------------------------------------------------------------------------------------
# Independent numpy LPIPS (float64) on the torch-layout state dict, following the reference's
# structure: torchvision `features` indices, slices ending at relu1_2 .. relu5_3.

_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_POOL_IDX = (4, 9, 16, 23)
_TAP_IDX = (3, 8, 15, 22, 29)


def _np_conv3x3(x, w, b):
  """Cross-correlation, padding 1 (im2col): x (N, H, W, I), w (O, I, 3, 3) -> (N, H, W, O)."""
  n, h, wd, c = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = [xp[:, dy : dy + h, dx : dx + wd, :] for dy in range(3) for dx in range(3)]
  cols = np.concatenate(cols, axis=-1).reshape(n * h * wd, 9 * c)  # (dy, dx, i) order
  wmat = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(9 * c, w.shape[0]))
  return (cols @ wmat + b).reshape(n, h, wd, w.shape[0])


def _np_vgg_taps(sd, x):
  taps = []
  for i in range(30):
    if i in _CONV_IDX:
      s = max(k for k, st in enumerate((0, 4, 9, 16, 23), 1) if i >= st)
      x = _np_conv3x3(x, sd[f"net.slice{s}.{i}.weight"], sd[f"net.slice{s}.{i}.bias"])
    elif i in _POOL_IDX:
      n, h, w, c = x.shape
      x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    else:
      x = np.maximum(x, 0.0)
    if i in _TAP_IDX:
      taps.append(x)
  return taps


def _one_blas_thread():
  """OpenBLAS threads are much slower than one thread on the shared, loaded CI cores."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def np_lpips(sd, x, y):
  with _one_blas_thread():
    return _np_lpips(sd, x, y)


def _np_lpips(sd, x, y):
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  shift, scale = sd["scaling_layer.shift"].reshape(3), sd["scaling_layer.scale"].reshape(3)
  fx = _np_vgg_taps(sd, (np.asarray(x, np.float64) - shift) / scale)
  fy = _np_vgg_taps(sd, (np.asarray(y, np.float64) - shift) / scale)
  total = 0.0
  for i, (a, b) in enumerate(zip(fx, fy)):
    a = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
    b = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
    w = sd[f"lin{i}.model.1.weight"][0, :, 0, 0]
    total = total + (((a - b) ** 2) @ w).mean(axis=(1, 2))
  return total


@pytest.fixture(scope="module")
def params():
  return L.random_lpips_params(jax.random.key(0))


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  return x, y


_lpips_jit = jax.jit(lpips)


def test_matches_numpy_and_identity_symmetry(params, images):
  x, y = images
  got = np.asarray(_lpips_jit(params, x, y))
  want = np_lpips(L.torch_state_dict(params, "lpips_full"), x, y)
  assert got.shape == (2,) and got.dtype == np.float32
  assert np.all(want > 1e-3)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(_lpips_jit(params, y, x)), got, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(_lpips_jit(params, x, x)), 0.0, atol=1e-10)
  # bf16 VGG convs (normalisation, differences and heads stay float32).
  half = jax.jit(lpips, static_argnums=3)(params, x, y, jnp.bfloat16)
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(half), want, rtol=2e-2)
  np.testing.assert_allclose(float(jax.jit(lpips_loss)(params, x, y)), want.mean(), rtol=1e-4)


def test_gradients_flow_to_images_not_params(params, images):
  x, y = images
  f = jax.jit(jax.grad(lambda p, a, b: jnp.sum(lpips(p, a, b)), argnums=(0, 1)))
  gp, gx = f(params, x, y)
  gx = np.asarray(gx)
  assert np.all(np.isfinite(gx)) and np.abs(gx).max() > 0
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(gp))
  # A dead tap (relu5_3 all exactly zero): the norm is 0 there; gradients must stay finite.
  dead = jax.tree.map(lambda a: a, params)
  dead["vgg"]["conv5_3"] = dict(dead["vgg"]["conv5_3"], bias=np.full((512,), -1e3, np.float32))
  _, gx_dead = f(dead, x, y)
  assert np.all(np.isfinite(np.asarray(gx_dead)))
  # Directional derivative vs a central difference of the numpy reference (float64).
  v = np.random.default_rng(1).standard_normal(x.shape)
  sd = L.torch_state_dict(params, "lpips_full")
  eps = 1e-6  # small enough not to cross ReLU kinks for this data
  fd = (np_lpips(sd, x + eps * v, y).sum() - np_lpips(sd, x - eps * v, y).sum()) / (2 * eps)
  np.testing.assert_allclose(np.sum(gx * v), fd, rtol=1e-3)


def test_bad_inputs_raise(params):
  small = np.zeros((1, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="at least 16x16"):
    lpips(params, small, small)
  with pytest.raises(ValueError, match="same shape"):
    lpips(params, np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 32, 3)))


def test_perceptual_weight_ramp():
  # Reference: weight * min(1, global_step / warmup), global_step = train_steps + 1 (1-based).
  got = [float(perceptual_weight_at(s, 2.0, 10_000)) for s in (0, 1, 2500, 9_999, 10_000, 50_000)]
  np.testing.assert_allclose(got, [0.0, 2e-4, 0.5, 2.0 * 0.9999, 2.0, 2.0], rtol=1e-6)
  assert float(perceptual_weight_at(1, 1.5, None)) == 1.5
  assert float(perceptual_weight_at(1, 1.5, 0)) == 1.5
  jitted = jax.jit(lambda s: perceptual_weight_at(s, 1.0, 4))(jnp.int32(3))
  assert float(jitted) == 0.75


# ---------------------------------------------------------------------------------------------
# Loaders: random weights in each published key/shape layout.


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("lpips")
  written = {
    layout: L.write_random_weights(d / f"{layout}.safetensors", layout, seed=i)
    for i, layout in enumerate(L.LAYOUTS)
  }
  return d, written


def test_loaders_round_trip(files):
  d, written = files
  lin = str(d / "lpips_lin.safetensors")
  for trunk in ("torchvision", "timm"):
    sd = wio.load_state_dict(d / f"{trunk}.safetensors")
    assert any(k.startswith(("classifier.", "head.")) for k in sd)  # extras that are ignored
    got = L.load_lpips_params(str(d / f"{trunk}.safetensors"), lin)
    _assert_same(got["vgg"], written[trunk]["vgg"])
    _assert_same(got["lin"], written["lpips_lin"]["lin"])
  full = L.load_lpips_params("", str(d / "lpips_full.safetensors"))  # one file holds both
  _assert_same(full, written["lpips_full"])
  # The full state dict also works as the trunk file; .npz works too.
  got = L.load_lpips_params(str(d / "lpips_full.safetensors"), lin)
  _assert_same(got["vgg"], written["lpips_full"]["vgg"])
  sd = wio.load_state_dict(d / "lpips_lin.safetensors")
  np.savez(d / "lin.npz", **{k.replace("model.1", "model.0"): v for k, v in sd.items()})
  _assert_same(L.load_lpips_params("", str(d / "lpips_full.safetensors"))["lin"], full["lin"])
  got = L.load_lpips_params(str(d / "torchvision.safetensors"), str(d / "lin.npz"))
  _assert_same(got["lin"], written["lpips_lin"]["lin"])
  shapes = L.lpips_param_shapes()
  assert jax.tree.map(np.shape, got) == jax.tree.map(lambda s: s.shape, shapes)


def test_loader_layout_errors(files):
  d, _ = files
  sd = dict(wio.load_state_dict(d / "torchvision.safetensors"))
  sd["features.10.weight"] = sd["features.10.weight"][:, :64]
  del sd["features.28.bias"]
  with pytest.raises(
    ValueError, match=r"features\.28\.bias.*features\.10\.weight \(256, 64, 3, 3\)"
  ):
    L.vgg_params_from_state_dict(sd, "tv")
  with pytest.raises(ValueError, match="holds no VGG16 trunk"):
    L.vgg_params_from_state_dict({"head.fc.bias": np.zeros(3)}, "x")
  lin = dict(wio.load_state_dict(d / "lpips_lin.safetensors"))
  lin["lin2.model.1.weight"] = lin["lin2.model.1.weight"].reshape(1, 256)
  del lin["lin4.model.1.weight"]
  with pytest.raises(
    ValueError, match=r"lin4\.model\.1\.weight.*lin2\.model\.1\.weight \(1, 256\)"
  ):
    L.lin_params_from_state_dict(lin, "vgg.pth")


def test_missing_files_name_config_keys(files, caplog):
  d, _ = files
  lin = str(d / "lpips_lin.safetensors")
  with pytest.raises(wio.WeightFileError, match=r"nope\.pth.*loss\.lpips_lin_path"):
    L.load_lpips_params(lin, str(d / "nope.pth"))
  with pytest.raises(wio.WeightFileError, match=r"vgg16\.safetensors.*loss\.lpips_vgg_path"):
    L.load_lpips_params(str(d / "vgg16.safetensors"), lin)
  with pytest.raises(wio.WeightFileError, match=r"loss\.lpips_vgg_path.*random_init"):
    L.load_lpips_params("", lin)  # heads only, no trunk anywhere
  with pytest.raises(wio.WeightFileError, match=r"loss\.lpips_lin_path"):
    L.load_lpips_params("", "")
  with caplog.at_level(logging.WARNING):
    rand = L.load_lpips_params("", "", random_init=True, key=jax.random.key(3))
  assert "RANDOM" in caplog.text
  shapes = L.lpips_param_shapes()
  assert jax.tree.map(np.shape, rand) == jax.tree.map(lambda s: s.shape, shapes)
