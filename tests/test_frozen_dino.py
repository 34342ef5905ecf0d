"""Frozen DINO ViT-S/16 trunk: loader on random weights in the official key layout, forward vs an
independent numpy ViT (from the PyTorch-layout state dict), input processing vs numpy, and the
DinoDiscriminator running on it."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.models.discriminators import build_discriminator, init_discriminator
from softvq_jax.models.frozen import dino
from softvq_jax.weights import dino as dino_weights
from softvq_jax.weights import io

E, DEPTH, HEADS = 384, 12, 6
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def official_state_dict(seed=0, extra=True):
  """Random weights with the exact keys/shapes of dino_deitsmall16_pretrain.pth (+ timm extras)."""
  rs = np.random.RandomState(seed)
  r = lambda *s, std=0.05: (std * rs.randn(*s)).astype(np.float32)
  sd = {
    "cls_token": r(1, 1, E, std=0.5),
    "pos_embed": r(1, 197, E, std=0.5),
    "patch_embed.proj.weight": r(E, 3, 16, 16, std=0.02),
    "patch_embed.proj.bias": r(E),
    "norm.weight": 1 + r(E),
    "norm.bias": r(E),
  }
  for i in range(DEPTH):
    b = f"blocks.{i}."
    for ln in ("norm1", "norm2"):
      sd[b + ln + ".weight"], sd[b + ln + ".bias"] = 1 + r(E, std=0.1), r(E, std=0.1)
    for name, (o, i_) in {
      "attn.qkv": (3 * E, E),
      "attn.proj": (E, E),
      "mlp.fc1": (4 * E, E),
      "mlp.fc2": (E, 4 * E),
    }.items():
      sd[b + name + ".weight"], sd[b + name + ".bias"] = r(o, i_), r(o, std=0.1)
  if extra:
    sd["head.weight"], sd["head.bias"] = r(10, E), r(10)
  return sd


# ----------------------------------------------------------------------------- numpy reference
def np_ln(x, w, b, eps=1e-6):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * w + b


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_dino_forward(sd, x_nhwc):
  """Reference FrozenDINOSmallNoDrop.forward on already normalised 224px inputs (float64)."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  b = x_nhwc.shape[0]
  x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)  # NCHW
  patches = x.reshape(b, 3, 14, 16, 14, 16).transpose(0, 2, 4, 1, 3, 5).reshape(b, 196, -1)
  w = sd["patch_embed.proj.weight"].reshape(E, -1)
  t = patches @ w.T + sd["patch_embed.proj.bias"]
  t = np.concatenate([np.repeat(sd["cls_token"], b, 0), t], 1) + sd["pos_embed"]
  acts = [t[:, 1:] + t[:, :1]]
  hd = E // HEADS
  for i in range(DEPTH):
    p = lambda n, i=i: sd[f"blocks.{i}.{n}"]
    h = np_ln(t, p("norm1.weight"), p("norm1.bias"))
    qkv = (h @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(b, 197, 3, HEADS, hd)
    q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
    a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, 197, E)
    t = t + o @ p("attn.proj.weight").T + p("attn.proj.bias")
    h = np_ln(t, p("norm2.weight"), p("norm2.bias"))
    h = np_gelu_tanh(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
    t = t + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    if i in (2, 5, 8, 11):
      acts.append(t[:, 1:] + t[:, :1])
  return acts


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  sd = official_state_dict()
  path = tmp_path_factory.mktemp("dino") / "dino_deitsmall16_pretrain.safetensors"
  io.save_safetensors(sd, path)
  return sd, dino_weights.load_dino_params(path)


def test_loader_maps_official_layout(loaded):
  sd, p = loaded
  np.testing.assert_array_equal(p["cls_token"], sd["cls_token"])
  np.testing.assert_array_equal(p["pos_embed"], sd["pos_embed"])
  np.testing.assert_array_equal(
    p["patch_embed"]["proj"]["kernel"], sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
  )
  b = p["blocks_7"]
  np.testing.assert_array_equal(b["attn"]["qkv"]["kernel"], sd["blocks.7.attn.qkv.weight"].T)
  np.testing.assert_array_equal(b["mlp"]["fc1"]["bias"], sd["blocks.7.mlp.fc1.bias"])
  np.testing.assert_array_equal(b["norm2"]["scale"], sd["blocks.7.norm2.weight"])
  qkv_b = sd["blocks.7.attn.qkv.bias"]
  np.testing.assert_array_equal(b["attn"]["qkv"]["bias"][:E], qkv_b[:E])
  np.testing.assert_array_equal(b["attn"]["qkv"]["bias"][E : 2 * E], 0)  # k-bias zeroed
  np.testing.assert_array_equal(b["attn"]["qkv"]["bias"][2 * E :], qkv_b[2 * E :])
  assert "norm" not in p and "head" not in p and "blocks_12" not in p
  want = jax.tree.map(lambda s: s.shape, dino.abstract_params())
  assert jax.tree.map(np.shape, p) == want
  assert np.any(qkv_b[E : 2 * E] != 0)  # the input state dict is not modified


def test_forward_matches_numpy(loaded):
  """trunk_fn at 224 (no resize) vs the numpy ViT using the ORIGINAL (non-zeroed) k-bias."""
  sd, p = loaded
  x = np.random.RandomState(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  feats = jax.jit(dino.trunk_fn(), static_argnums=3)(p, x, None, False)
  ref = np_dino_forward(sd, ((x + 1) / 2 - MEAN) / STD)
  assert len(feats) == 5
  for f, r in zip(feats, ref, strict=True):
    assert f.shape == (2, 196, 384) and f.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(f), r, rtol=2e-3, atol=2e-3 * np.abs(r).max())


def test_loader_errors(tmp_path):
  with pytest.raises(io.WeightFileError, match="loss.disc.dino_path"):
    dino_weights.load_dino_params(tmp_path / "missing.safetensors")
  sd = official_state_dict(extra=False)
  del sd["blocks.3.mlp.fc2.bias"]
  with pytest.raises(KeyError, match=r"missing \['blocks.3.mlp.fc2.bias'\]"):
    dino_weights.params_from_state_dict(sd)
  sd = official_state_dict(extra=False)
  sd["blocks.0.ls1.gamma"] = np.ones(E, np.float32)  # a DINOv2 file is not DINO v1
  with pytest.raises(KeyError, match="unexpected.*ls1.gamma"):
    dino_weights.params_from_state_dict(sd)
  sd = official_state_dict(extra=False)
  sd["pos_embed"] = np.zeros((1, 257, E), np.float32)
  with pytest.raises(ValueError, match=r"pos_embed has shape \(1, 257, 384\)"):
    dino_weights.params_from_state_dict(sd)


def test_random_init_warns_and_has_exact_shapes(caplog):
  with caplog.at_level(logging.WARNING):
    p = dino_weights.load_dino_params("", random_init=True, key=jax.random.key(3))
  assert "RANDOM" in caplog.text
  assert jax.tree.map(np.shape, p) == jax.tree.map(lambda s: s.shape, dino.abstract_params())


# ----------------------------------------------------------------------------- input processing
def np_area(img, n):
  """Adaptive average pooling of (H, W, C) to (n, n, C), loop form."""
  h, w = img.shape[:2]
  out = np.zeros((n, n, img.shape[2]))
  for i in range(n):
    for j in range(n):
      y0, y1 = (i * h) // n, -(-((i + 1) * h) // n)
      x0, x1 = (j * w) // n, -(-((j + 1) * w) // n)
      out[i, j] = img[y0:y1, x0:x1].mean((0, 1))
  return out


def np_bicubic(img, n, a=-0.75):
  """torch F.interpolate(mode='bicubic', align_corners=False) of (H, W, C) to (n, n, C)."""

  def k(d):
    d = abs(d)
    if d <= 1:
      return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
      return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0

  h, w = img.shape[:2]
  out = np.zeros((n, n, img.shape[2]))
  for i in range(n):
    sy = (i + 0.5) * h / n - 0.5
    for j in range(n):
      sx = (j + 0.5) * w / n - 0.5
      acc = 0.0
      for yy in range(int(np.floor(sy)) - 1, int(np.floor(sy)) + 3):
        for xx in range(int(np.floor(sx)) - 1, int(np.floor(sx)) + 3):
          px = img[min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]
          acc = acc + k(sy - yy) * k(sx - xx) * px
      out[i, j] = acc
  return out


def test_preprocess_resize_matches_numpy():
  rs = np.random.RandomState(2)
  norm = lambda x: ((x + 1) / 2 - MEAN) / STD
  # downsampling (256 -> 224, torch 'area'), checked on a 1-image batch
  x = rs.uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
  np.testing.assert_allclose(dino.preprocess(x, None)[0], np_area(norm(x[0]), 224), atol=1e-5)
  # upsampling (torch bicubic, border clamped); 16 -> 20 keeps the loop reference small
  x = rs.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(
    dino.preprocess(x, None, size=20)[0], np_bicubic(norm(x[0]), 20), atol=1e-5
  )
  # at 224 nothing is resized, with or without a key
  x = rs.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
  np.testing.assert_allclose(dino.preprocess(x, jax.random.key(0)), norm(x), atol=1e-6)


def test_preprocess_random_crop():
  x = np.random.RandomState(3).uniform(-1, 1, (2, 240, 240, 3)).astype(np.float32)
  xn = ((x + 1) / 2 - MEAN) / STD
  resized = np.asarray(dino.preprocess(x, None))
  fn = jax.jit(dino.preprocess)
  kinds = set()
  for s in range(12):
    out = np.asarray(fn(x, jax.random.key(s)))
    if np.allclose(out, resized, atol=1e-6):
      kinds.add("resize")
      continue
    # one crop position for the whole batch
    hits = [
      (i, j)
      for i in range(17)
      for j in range(17)
      if np.allclose(out, xn[:, i : i + 224, j : j + 224], atol=1e-5)
    ]
    assert len(hits) == 1, "neither the resize nor a crop of the normalised input"
    kinds.add("crop")
  assert kinds == {"resize", "crop"}


# ----------------------------------------------------------------------------- discriminator
def test_trunk_shapes_and_dino_discriminator():
  p = dino_weights.load_dino_params(None, random_init=True, key=jax.random.key(0))
  d = build_discriminator("dino", trunk_fn=dino.trunk_fn())
  x = jax.random.uniform(jax.random.key(1), (2, 256, 256, 3), minval=-1, maxval=1)
  trunk = dino.trunk_fn()
  feats = jax.eval_shape(lambda p, x, k: trunk(p, x, k, True), p, x, jax.random.key(0))
  assert [f.shape for f in feats] == [(2, 196, 384)] * 5
  x = x[:, :224, :224]  # the full-size run below skips the resize to stay fast
  init = jax.jit(lambda k, x, p: init_discriminator(d, k, x, p))
  params, state = init(jax.random.key(2), x, p)
  assert set(params) == {"heads"}  # the trunk is not a trainable parameter of D

  @jax.jit
  def run(x, params, state, p):
    variables = {"params": params, **state}
    f = lambda x: d.apply(variables, x, p, train=True, rngs={"augment": jax.random.key(4)})
    logits, vjp = jax.vjp(f, x)
    return logits, vjp(jnp.ones_like(logits))[0]

  logits, gx = run(x, params, state, p)
  assert logits.shape == (2, 5 * 196) and bool(jnp.all(jnp.isfinite(logits)))
  assert bool(jnp.all(jnp.isfinite(gx))) and float(jnp.abs(gx).max()) > 0
