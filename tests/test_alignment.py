"""DINOv2 teacher (loader on random weights in the exact timm layout, forward vs numpy) and the
REPA alignment projector + loss vs numpy for every mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from softvq_jax.models.frozen import dinov2
from softvq_jax.models.projector import AlignProjector
from softvq_jax.objectives import alignment
from softvq_jax.weights import dinov2 as dinov2_weights
from softvq_jax.weights import io, resample

E, DEPTH, HEADS = 128, 2, 2  # the "tiny" test variant (64-dim heads as every DINOv2)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def timm_state_dict(grid, patch=14, n_reg=0, seed=0, swiglu=False):
  """Random weights with the exact key/shape layout of timm's vit_*_patch14_dinov2(_reg4)."""
  rs = np.random.RandomState(seed)
  r = lambda *s, std=0.05: (std * rs.randn(*s)).astype(np.float32)
  sd = {
    "cls_token": r(1, 1, E, std=0.5),
    "pos_embed": r(1, (0 if n_reg else 1) + grid * grid, E, std=0.5),
    "patch_embed.proj.weight": r(E, 3, patch, patch),
    "patch_embed.proj.bias": r(E),
    "norm.weight": 1 + r(E),
    "norm.bias": r(E),
  }
  if n_reg:
    sd["reg_token"] = r(1, n_reg, E, std=0.5)
  for i in range(DEPTH):
    b = f"blocks.{i}."
    for ln in ("norm1", "norm2"):
      sd[b + ln + ".weight"], sd[b + ln + ".bias"] = 1 + r(E, std=0.1), r(E, std=0.1)
    for name, (o, i_) in {
      "attn.qkv": (3 * E, E),
      "attn.proj": (E, E),
      "mlp.fc1": (512 if swiglu else 4 * E, E),  # ViT-g: packed SwiGLU, hidden 256
      "mlp.fc2": (E, 256 if swiglu else 4 * E),
    }.items():
      sd[b + name + ".weight"], sd[b + name + ".bias"] = r(o, i_, std=0.1), r(o, std=0.1)
    sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = 1 + r(E), 1 + r(E)
  return sd


def np_ln(x, w, b, eps=1e-6):
  m = x.mean(-1, keepdims=True)
  return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


def np_dinov2(sd, x_nhwc, patch, n_reg=0):
  """timm forward_features(x)[:, prefix:] of a DINOv2 ViT (float64), x ImageNet-normalised."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  b, s = x_nhwc.shape[:2]
  g = s // patch
  x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
  pt = x.reshape(b, 3, g, patch, g, patch).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
  t = pt @ sd["patch_embed.proj.weight"].reshape(E, -1).T + sd["patch_embed.proj.bias"]
  cls = np.repeat(sd["cls_token"], b, 0)
  if n_reg:
    t = np.concatenate([cls, np.repeat(sd["reg_token"], b, 0), t + sd["pos_embed"]], 1)
  else:
    t = np.concatenate([cls, t], 1) + sd["pos_embed"]
  n, hd = t.shape[1], E // HEADS
  for i in range(DEPTH):
    p = lambda k, i=i: sd[f"blocks.{i}.{k}"]
    h = np_ln(t, p("norm1.weight"), p("norm1.bias"))
    qkv = (h @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(b, n, 3, HEADS, hd)
    q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
    a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, E)
    t = t + p("ls1.gamma") * (o @ p("attn.proj.weight").T + p("attn.proj.bias"))
    h = np_ln(t, p("norm2.weight"), p("norm2.bias"))
    h = h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
    if h.shape[-1] == 2 * p("mlp.fc2.weight").shape[1]:  # SwiGLUPacked: silu(x1) * x2
      x1, x2 = np.split(h, 2, axis=-1)
      h = x1 / (1 + np.exp(-x1)) * x2
    else:
      h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    t = t + p("ls2.gamma") * (h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias"))
  t = np_ln(t, sd["norm.weight"], sd["norm.bias"])
  return t[:, 1 + n_reg :]


@pytest.mark.parametrize("n_reg, variant", [(0, "tiny"), (4, "tiny"), (0, "tiny_g")])
def test_teacher_roundtrip_and_forward_matches_numpy(tmp_path, n_reg, variant):
  # already at patch 16 / 32px: no resampling
  sd = timm_state_dict(grid=2, patch=16, n_reg=n_reg, swiglu=variant == "tiny_g")
  path = tmp_path / "model.safetensors"
  io.save_safetensors({**sd, "mask_token": np.zeros((1, E), np.float32)}, path)
  p = dinov2_weights.load_teacher_params(path, variant=variant, image_size=32)
  np.testing.assert_array_equal(p["pos_embed"], sd["pos_embed"])
  np.testing.assert_array_equal(p["blocks_1"]["ls2"]["gamma"], sd["blocks.1.ls2.gamma"])
  np.testing.assert_array_equal(
    p["blocks_0"]["mlp"]["fc1"]["kernel"], sd["blocks.0.mlp.fc1.weight"].T
  )
  assert ("reg_token" in p) == bool(n_reg)
  x = np.random.RandomState(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  out = jax.jit(dinov2.teacher_features)(p, x)
  assert out.shape == (2, 4, E) and dinov2.teacher_dim(p) == E
  ref = np_dinov2(sd, ((x + 1) / 2 - MEAN) / STD, 16, n_reg)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-3, atol=1e-3)


def test_teacher_resamples_patch_and_grid_like_timm():
  sd = timm_state_dict(grid=4, patch=14)
  p = dinov2_weights.params_from_state_dict(sd, variant="tiny", image_size=48, patch_size=16)
  k = resample.resample_patch_kernel(io.conv_kernel(sd["patch_embed.proj.weight"]), (16, 16))
  np.testing.assert_allclose(p["patch_embed"]["proj"]["kernel"], k, rtol=1e-6)
  pos = resample.resample_pos_embed(sd["pos_embed"], (3, 3), num_prefix_tokens=1)
  np.testing.assert_allclose(p["pos_embed"], pos, rtol=1e-6)
  assert p["pos_embed"].shape == (1, 10, E)
  out = jax.eval_shape(dinov2.teacher_features, p, jnp.zeros((2, 48, 48, 3)))
  assert out.shape == (2, 9, E)


def test_teacher_full_size_shapes_and_errors(tmp_path):
  shapes = dinov2.abstract_params("L", 16)  # vit_large_patch14_dinov2 at 256px, patch 16
  assert shapes["pos_embed"].shape == (1, 257, 1024) and "blocks_23" in shapes
  out = jax.eval_shape(dinov2.teacher_features, shapes, jnp.zeros((2, 256, 256, 3)))
  assert out.shape == (2, 256, 1024)
  with pytest.raises(io.WeightFileError, match="loss.align.teacher_path"):
    dinov2_weights.load_teacher_params(tmp_path / "nope.safetensors")
  sd = timm_state_dict(grid=2, patch=16)
  with pytest.raises(ValueError, match="teacher_variant='B' needs width 768"):
    dinov2_weights.params_from_state_dict(sd, variant="B", image_size=32)
  del sd["blocks.1.ls1.gamma"]
  with pytest.raises(KeyError, match="blocks.1.ls1.gamma"):
    dinov2_weights.params_from_state_dict(sd, variant="tiny", image_size=32)
  p = dinov2_weights.load_teacher_params(None, variant="tiny", image_size=32, random_init=True)
  with pytest.raises(ValueError, match="loaded for 32px"):
    dinov2.teacher_features(p, jnp.zeros((1, 64, 64, 3)))


# ----------------------------------------------------------------------------- alignment
def np_cos_loss(z, t):
  zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
  tn = t / np.linalg.norm(t, axis=-1, keepdims=True)
  return -np.mean(np.sum(zn * tn, -1))


def test_projector_matches_numpy():
  proj = AlignProjector(hidden=16, out_dim=8)
  z = np.random.RandomState(0).randn(2, 4, 6).astype(np.float32)
  v = proj.init(jax.random.key(0), z)["params"]
  silu = lambda a: a / (1 + np.exp(-a))
  f = lambda h, n: h @ np.asarray(v[n]["kernel"]) + np.asarray(v[n]["bias"])
  ref = lambda h: f(silu(f(silu(f(h, "fc1")), "fc2")), "fc3")
  out = proj.apply({"params": v}, z)
  np.testing.assert_allclose(out, ref(z), rtol=1e-5, atol=1e-6)
  out_g = proj.apply({"params": v}, z, mode="global")  # the MEAN latent is projected
  np.testing.assert_allclose(out_g, ref(z.mean(1, keepdims=True)), rtol=1e-5, atol=1e-6)
  assert np.abs(v["fc1"]["kernel"]).max() <= 1 / np.sqrt(6)  # torch default init bound


def test_alignment_modes_match_numpy():
  rs = np.random.RandomState(1)
  b, nl, n, c = 2, 4, 16, 8
  z, t = rs.randn(b, nl, c).astype(np.float32), rs.randn(b, n, c).astype(np.float32)
  # repeat: latent l <-> teacher tokens l*4 ... l*4+3 (consecutive, raster order)
  idx = np.arange(n) // (n // nl)
  got = alignment.alignment_loss(z, t, "repeat")
  np.testing.assert_allclose(got, np_cos_loss(z[:, idx], t), rtol=1e-5)
  # global: projected mean latent vs mean teacher token
  zg = rs.randn(b, 1, c).astype(np.float32)
  got = alignment.alignment_loss(zg, t, "global")
  np.testing.assert_allclose(got, np_cos_loss(zg, t.mean(1, keepdims=True)), rtol=1e-5)
  # avg_1d: torch adaptive_avg_pool1d bins, also when N is not a multiple of L
  t10 = t[:, :10]
  pooled = np.stack(
    [t10[:, (i * 10) // nl : -(-((i + 1) * 10) // nl)].mean(1) for i in range(nl)], 1
  )
  got = alignment.alignment_loss(z, t10, "avg_1d")
  np.testing.assert_allclose(got, np_cos_loss(z, pooled), rtol=1e-5)
  # avg_1d_shuffle: one permutation of the teacher tokens, then pooling
  key = jax.random.key(5)
  perm = np.asarray(jax.random.permutation(key, n))
  pooled = t[:, perm].reshape(b, nl, n // nl, c).mean(2)
  got = alignment.alignment_loss(z, t, "avg_1d_shuffle", key=key)
  np.testing.assert_allclose(got, np_cos_loss(z, pooled), rtol=1e-5)
  # perfectly aligned -> -1
  np.testing.assert_allclose(alignment.alignment_loss(t[:, ::4], t[:, ::4], "avg_1d"), -1.0)


def test_alignment_errors_and_gradients():
  z, t = jnp.ones((2, 3, 8)), jnp.ones((2, 16, 8))
  with pytest.raises(ValueError, match="N=16 to be a multiple of the latent token count L=3"):
    alignment.alignment_loss(z, t, "repeat")
  with pytest.raises(ValueError, match="unknown alignment mode"):
    alignment.alignment_loss(z, t, "mean")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    alignment.alignment_loss(z, t, "avg_1d_shuffle")
  with pytest.raises(ValueError, match="expects the projected token MEAN"):
    alignment.alignment_loss(z, t, "global")
  rs = np.random.RandomState(2)
  z, t = jnp.asarray(rs.randn(2, 4, 8)), jnp.asarray(rs.randn(2, 16, 8))
  gz, gt = jax.grad(lambda z, t: alignment.alignment_loss(z, t), argnums=(0, 1))(z, t)
  assert float(jnp.abs(gz).max()) > 0 and float(jnp.abs(gt).max()) == 0  # teacher is a target
