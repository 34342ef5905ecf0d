"""Discriminators: spectral norm vs numpy SVD / torch semantics, BatchNorm (global batch under
sharding), DINO heads and PatchGAN vs independent numpy forwards, registry and apply helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from softvq_jax.models.discriminators import (
  DISCRIMINATORS,
  DinoDiscriminator,
  PatchGANDiscriminator,
  build_discriminator,
  init_discriminator,
  make_disc_apply,
)
from softvq_jax.models.discriminators.batch_norm import BatchNorm
from softvq_jax.models.discriminators.dino_heads import DinoHead, DinoHeads
from softvq_jax.models.discriminators.spectral_norm import (
  SpectralConv,
  kernel_to_matrix,
  power_iteration,
  spectral_sigma,
)
from softvq_jax.weights.io import conv_kernel, conv_weight

RTOL, ATOL = 1e-4, 1e-5


def key(seed):
  """RBG keys: the code is PRNG-agnostic and threefry's normal() takes ~15 s to compile here."""
  return jax.random.key(seed, impl="rbg")


# ----------------------------------------------------------------------------- numpy references
def np_normalize(x, eps=1e-12):
  return x / max(np.linalg.norm(x), eps)


def np_sn(kernel, u, eps=1e-12):
  """torch spectral_norm (train mode, 1 iteration) on a flax kernel -> (weight / sigma, u, v)."""
  w_t = conv_weight(np.asarray(kernel, np.float64))
  w = w_t.reshape(w_t.shape[0], -1)
  v = np_normalize(w.T @ u, eps)
  u = np_normalize(w @ v, eps)
  sigma = u @ w @ v
  return w_t / sigma, u, v


def np_conv1d(x, w_t, b, pad, circular):
  """x (B, T, I); w_t torch (O, I, K); cross-correlation, stride 1."""
  k = w_t.shape[-1]
  xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="wrap" if circular else "constant")
  t_out = xp.shape[1] - k + 1
  out = sum(np.einsum("bti,oi->bto", xp[:, j : j + t_out], w_t[:, :, j]) for j in range(k))
  return out + (0 if b is None else b)


def np_conv2d(x, w_t, b, stride, pad):
  """x (B, H, W, I); w_t torch (O, I, KH, KW); zero padding."""
  kh, kw = w_t.shape[2:]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (xp.shape[1] - kh) // stride + 1
  wo = (xp.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w_t.shape[0]))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride]
      out += np.einsum("bhwi,oi->bhwo", patch, w_t[:, :, i, j])
  return out + (0 if b is None else b)


def np_bn_train(x, scale, bias, eps, ra_mean, ra_var, momentum=0.9):
  axes = tuple(range(x.ndim - 1))
  m, var = x.mean(axes), x.var(axes)
  n = np.prod(x.shape[:-1])
  new_mean = momentum * ra_mean + (1 - momentum) * m
  new_var = momentum * ra_var + (1 - momentum) * var * n / (n - 1)
  return (x - m) / np.sqrt(var + eps) * scale + bias, new_mean, new_var


def lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def to_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------- spectral norm
def test_kernel_to_matrix_is_torch_layout():
  w_t = np.random.RandomState(0).randn(5, 3, 4, 2).astype(np.float32)  # torch (O, I, KH, KW)
  np.testing.assert_array_equal(
    np.asarray(kernel_to_matrix(jnp.asarray(conv_kernel(w_t)))), w_t.reshape(5, -1)
  )
  w1 = np.random.RandomState(1).randn(6, 4, 9).astype(np.float32)  # Conv1d
  np.testing.assert_array_equal(
    np.asarray(kernel_to_matrix(jnp.asarray(conv_kernel(w1)))), w1.reshape(6, -1)
  )


def test_power_iteration_converges_to_top_singular_value():
  w = np.random.RandomState(0).randn(7, 12).astype(np.float32)
  u = jnp.asarray(np_normalize(np.random.RandomState(1).randn(7)).astype(np.float32))
  u_new, v_new = power_iteration(jnp.asarray(w), u, n_iter=200)
  s_max = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]
  np.testing.assert_allclose(float(spectral_sigma(jnp.asarray(w), u_new, v_new)), s_max, rtol=1e-5)
  # One step equals the numpy torch-style iteration.
  u1, v1 = power_iteration(jnp.asarray(w), u, n_iter=1)
  v_ref = np_normalize(w.T @ np.asarray(u))
  np.testing.assert_allclose(np.asarray(v1), v_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(u1), np_normalize(w @ v_ref), rtol=1e-5, atol=1e-6)


def test_spectral_conv_state_and_svd():
  conv = SpectralConv(6, (3,), padding="CIRCULAR")
  x = jax.random.normal(key(0), (2, 10, 4))
  variables = jax.jit(conv.init)(key(1), x)
  u0, v0 = variables["spectral"]["u"], variables["spectral"]["v"]
  assert u0.shape == (6,) and v0.shape == (12,)
  np.testing.assert_allclose(float(jnp.linalg.norm(u0)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.linalg.norm(v0)), 1.0, rtol=1e-6)

  # update_stats=False: torch eval mode, stored u, v used and left unchanged (no mutable needed).
  y_eval = jax.jit(lambda v: conv.apply(v, x, update_stats=False))(variables)
  w_t = conv_weight(np.asarray(variables["params"]["kernel"], np.float64))
  sigma_eval = np.asarray(u0) @ w_t.reshape(6, -1) @ np.asarray(v0)
  ref = np_conv1d(
    np.asarray(x, np.float64), w_t / sigma_eval, np.asarray(variables["params"]["bias"]), 1, True
  )
  np.testing.assert_allclose(np.asarray(y_eval), ref, rtol=RTOL, atol=ATOL)

  # update_stats=True: one torch-style iteration per call; after many calls sigma = sigma_max.
  state = {"spectral": variables["spectral"]}
  step = jax.jit(
    lambda s: conv.apply({**variables, **s}, x, update_stats=True, mutable=["spectral"])
  )
  y1, new = step(state)
  w_sn, u1, v1 = np_sn(variables["params"]["kernel"], np.asarray(u0, np.float64))
  np.testing.assert_allclose(np.asarray(new["spectral"]["u"]), u1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new["spectral"]["v"]), v1, rtol=1e-5, atol=1e-6)
  ref1 = np_conv1d(
    np.asarray(x, np.float64), w_sn, np.asarray(variables["params"]["bias"]), 1, True
  )
  np.testing.assert_allclose(np.asarray(y1), ref1, rtol=RTOL, atol=ATOL)

  for _ in range(100):
    y, state = step(state)
  s_max = np.linalg.svd(w_t.reshape(6, -1), compute_uv=False)[0]
  ref_svd = np_conv1d(
    np.asarray(x, np.float64), w_t / s_max, np.asarray(variables["params"]["bias"]), 1, True
  )
  np.testing.assert_allclose(np.asarray(y), ref_svd, rtol=RTOL, atol=ATOL)


def test_spectral_conv_gradient_flows_through_sigma():
  conv = SpectralConv(3, (1,))
  x = jax.random.normal(key(0), (2, 5, 4))
  variables = jax.jit(conv.init)(key(1), x)

  def f(params):
    return jnp.sum(conv.apply({"params": params, "spectral": variables["spectral"]}, x) ** 2)

  g = jax.jit(jax.grad(f))(variables["params"])["kernel"]

  def f_np(kernel):
    w = conv_weight(kernel).reshape(3, -1)
    u, v = (
      np.asarray(variables["spectral"]["u"], np.float64),
      np.asarray(variables["spectral"]["v"], np.float64),
    )
    w_sn = conv_weight(kernel) / (u @ w @ v)
    return np.sum(
      np_conv1d(np.asarray(x, np.float64), w_sn, np.asarray(variables["params"]["bias"]), 0, False)
      ** 2
    )

  k0 = np.asarray(variables["params"]["kernel"], np.float64)
  num = np.zeros_like(k0)
  for idx in np.ndindex(k0.shape):
    d = np.zeros_like(k0)
    d[idx] = 1e-6
    num[idx] = (f_np(k0 + d) - f_np(k0 - d)) / 2e-6
  np.testing.assert_allclose(np.asarray(g), num, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- batch norm
def test_batch_norm_train_eval_and_running_stats():
  bn = BatchNorm(momentum=0.9, epsilon=1e-6)
  x = jax.random.normal(key(0), (4, 6, 5)) * 3 + 1
  variables = jax.jit(bn.init)(key(1), x)
  params = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-1, 1, 5)}
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  y, new = jax.jit(
    lambda v: bn.apply(v, x, train=True, update_stats=True, mutable=["batch_stats"])
  )(variables)
  ref, m, v = np_bn_train(
    np.asarray(x, np.float64),
    *to_np((params["scale"], params["bias"])),
    1e-6,
    np.zeros(5),
    np.ones(5),
  )
  np.testing.assert_allclose(np.asarray(y), ref, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(new["batch_stats"]["mean"]), m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new["batch_stats"]["var"]), v, rtol=1e-5, atol=1e-6)
  # No update without update_stats (and no mutable collection needed).
  y2 = jax.jit(lambda v: bn.apply(v, x, train=True, update_stats=False))(variables)
  np.testing.assert_allclose(np.asarray(y2), ref, rtol=RTOL, atol=ATOL)
  # Eval mode uses the running statistics.
  y3 = jax.jit(lambda v: bn.apply(v, x, train=False))({"params": params, **new})
  ref3 = (np.asarray(x) - m) / np.sqrt(v + 1e-6) * np.asarray(params["scale"]) + np.asarray(
    params["bias"]
  )
  np.testing.assert_allclose(np.asarray(y3), ref3, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- DINO heads
def np_dino_head(x, p, s, bs, eps=1e-6):
  """Independent numpy forward of one head in train mode (returns logits and the new state)."""
  new_s, new_bs = {}, {}

  def block(h, name, k):
    w_sn, u, v = np_sn(p[f"{name}_conv"]["kernel"], s[f"{name}_conv"]["u"])
    new_s[f"{name}_conv"] = {"u": u, "v": v}
    h = np_conv1d(h, w_sn, p[f"{name}_conv"]["bias"], k // 2, True)
    n = p[f"{name}_norm"]
    st = bs[f"{name}_norm"]
    h, m, var = np_bn_train(h, n["scale"], n["bias"], eps, st["mean"], st["var"])
    new_bs[f"{name}_norm"] = {"mean": m, "var": var}
    return lrelu(h)

  h = block(x, "block", 1)
  h = (block(h, "res", 9) + h) / np.sqrt(2)
  w_sn, u, v = np_sn(p["out_conv"]["kernel"], s["out_conv"]["u"])
  new_s["out_conv"] = {"u": u, "v": v}
  return np_conv1d(h, w_sn, p["out_conv"]["bias"], 0, False)[..., 0], new_s, new_bs


def _randomise_bn(params, key):
  """Non-trivial BN affine parameters so the test sees them."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  new = [
    lf + 0.1 * jax.random.normal(k, lf.shape) if lf.ndim == 1 else lf for lf, k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(treedef, new)


def test_dino_head_matches_numpy():
  head = DinoHead()
  x = jax.random.normal(key(0), (3, 12, 8))
  variables = jax.jit(head.init)(key(1), x)
  params = _randomise_bn(variables["params"], key(2))
  variables = {**variables, "params": params}
  y, new = jax.jit(
    lambda v: head.apply(v, x, train=True, update_stats=True, mutable=["batch_stats", "spectral"])
  )(variables)
  assert y.shape == (3, 12) and y.dtype == jnp.float32
  ref, ref_s, ref_bs = np_dino_head(
    np.asarray(x, np.float64), *to_np((params, variables["spectral"], variables["batch_stats"]))
  )
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-3, atol=1e-4)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5),
    new["spectral"],
    ref_s,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5),
    new["batch_stats"],
    ref_bs,
  )


def test_circular_padding_wraps():
  conv = SpectralConv(1, (9,), padding="CIRCULAR", spectral=False, use_bias=False)
  x = jnp.zeros((1, 12, 1)).at[0, 0, 0].set(1.0)  # impulse at t=0
  k = jnp.arange(9, dtype=jnp.float32).reshape(9, 1, 1)
  y = conv.apply({"params": {"kernel": k}}, x)[0, :, 0]
  # y[t] = sum_j x[(t + j - 4) mod 12] k[j] -> impulse picks k[4 - t mod 12].
  expect = np.array([k[(4 - t) % 12, 0, 0] if (4 - t) % 12 < 9 else 0.0 for t in range(12)])
  np.testing.assert_array_equal(np.asarray(y), expect)


def test_dino_heads_full_size_shapes():
  heads = DinoHeads()
  feats = [jax.ShapeDtypeStruct((2, 196, 384), jnp.float32)] * 5
  v = jax.eval_shape(lambda f: heads.init(key(0), f), feats)
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"]))
  assert n == 7_386_245  # the reference prints "7.39M" trainable parameters
  assert v["spectral"]["heads_0"]["res_conv"]["v"].shape == (384 * 9,)
  out = jax.eval_shape(lambda v, f: heads.apply(v, f), v, feats)
  assert out.shape == (2, 5 * 196) and out.dtype == jnp.float32


def test_dino_heads_global_batch_under_sharding():
  """BN over a batch sharded on 8 devices equals the unsharded (global) result."""
  assert len(jax.devices()) == 8
  heads = DinoHeads(num_heads=2)
  b, t, c = 16, 6, 8
  base = jax.random.normal(key(0), (b, t, c))
  offsets = jnp.arange(b, dtype=jnp.float32)[:, None, None]  # shard statistics differ strongly
  feats = [base + offsets, base * 2 - offsets]
  variables = jax.jit(heads.init)(key(1), feats)

  def run(v, f):
    return heads.apply(v, f, train=True, update_stats=True, mutable=["batch_stats", "spectral"])

  y_ref, s_ref = jax.jit(run)(variables, feats)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  shard = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())
  feats_sh = [jax.device_put(f, shard) for f in feats]
  variables_sh = jax.device_put(variables, repl)
  y_sh, s_sh = jax.jit(run, out_shardings=(shard, repl))(variables_sh, feats_sh)
  assert len(feats_sh[0].sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(y_sh), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
    s_sh,
    s_ref,
  )
  # Sanity: per-device (local) statistics would give a clearly different result.
  run_local = jax.jit(run)
  local = [run_local(variables, [f[i * 2 : (i + 1) * 2] for f in feats])[0] for i in range(8)]
  assert np.max(np.abs(np.concatenate(local) - np.asarray(y_ref))) > 1e-2


# ----------------------------------------------------------------------------- PatchGAN
def np_patchgan(x, p, bs, n_layers, eps=1e-5):
  h = lrelu(np_conv2d(x, conv_weight(p["conv_0"]["kernel"]), p["conv_0"]["bias"], 2, 1))
  new_bs = {}
  for n in range(1, n_layers + 1):
    h = np_conv2d(h, conv_weight(p[f"conv_{n}"]["kernel"]), None, 2 if n < n_layers else 1, 1)
    norm, st = p[f"norm_{n}"], bs[f"norm_{n}"]
    h, m, v = np_bn_train(h, norm["scale"], norm["bias"], eps, st["mean"], st["var"])
    new_bs[f"norm_{n}"] = {"mean": m, "var": v}
    h = lrelu(h)
  last = f"conv_{n_layers + 1}"
  return np_conv2d(h, conv_weight(p[last]["kernel"]), p[last]["bias"], 1, 1), new_bs


def test_patchgan_matches_numpy():
  d = PatchGANDiscriminator(ndf=4, n_layers=2)
  x = jax.random.uniform(key(0), (3, 16, 16, 3), minval=-1, maxval=1)
  params, state = jax.jit(lambda k: init_discriminator(d, k, x))(key(1))
  assert set(state) == {"batch_stats"}
  assert (
    "bias" not in params["conv_1"] and "bias" in params["conv_0"] and "bias" in params["conv_3"]
  )
  logits, new_state = jax.jit(make_disc_apply(d))(params, state, x, key(2))
  assert logits.shape == (3, 2, 2, 1)
  ref, ref_bs = np_patchgan(
    np.asarray(x, np.float64), to_np(params), to_np(state["batch_stats"]), 2
  )
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-3, atol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6),
    new_state["batch_stats"],
    ref_bs,
  )


def test_patchgan_full_size_and_init():
  d = PatchGANDiscriminator()
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  params, state = jax.eval_shape(lambda x: init_discriminator(d, key(0), x), x)
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) == 2_765_633  # pix2pix NLayer
  out = jax.eval_shape(lambda p, s, x: make_disc_apply(d)(p, s, x, key(0))[0], params, state, x)
  assert out.shape == (2, 30, 30, 1)
  # Init distributions (on a narrower instance).
  small = PatchGANDiscriminator(ndf=16)
  params, _ = jax.jit(lambda k: init_discriminator(small, k, jnp.zeros((1, 32, 32, 3))))(key(0))
  k = np.asarray(params["conv_3"]["kernel"])
  assert abs(k.std() - 0.02) < 1e-3 and abs(k.mean()) < 1e-3
  s = np.asarray(params["norm_3"]["scale"])
  assert abs(s.mean() - 1.0) < 0.01 and 0.01 < s.std() < 0.03
  assert np.all(np.asarray(params["norm_3"]["bias"]) == 0)
  assert np.all(np.abs(np.asarray(params["conv_0"]["bias"])) <= 1 / np.sqrt(48))
  with pytest.raises(ValueError, match="too small"):
    jax.eval_shape(lambda x: init_discriminator(d, key(0), x), jnp.zeros((1, 16, 16, 3)))


# ----------------------------------------------------------------------------- DINO disc + registry
def fake_trunk(trunk_params, x, key, train):
  """Stand-in for the DINO ViT trunk: maps (B, 4, 8) from frozen linear patch projections."""
  b = x.shape[0]
  patches = x.reshape(b, 2, x.shape[1] // 2, 2, x.shape[2] // 2, 3).mean((2, 4)).reshape(b, 4, 3)
  if train and key is not None:
    patches = patches + 0.0 * jax.random.normal(key, patches.shape)  # exercises the rng stream
  return [jnp.tanh(patches @ w) for w in trunk_params["w"]]


def test_dino_discriminator_composition():
  trunk_params = {"w": jax.random.normal(key(0), (2, 3, 8))}  # 2 maps keep the test fast
  d = build_discriminator("dino", trunk_fn=fake_trunk, num_heads=2)
  assert isinstance(d, DinoDiscriminator) and set(DISCRIMINATORS) == {"patchgan", "dino"}
  x = jax.random.uniform(key(1), (4, 8, 8, 3), minval=-1, maxval=1)
  params, state = jax.jit(lambda k, tp: init_discriminator(d, k, x, frozen=tp))(
    key(2), trunk_params
  )
  assert set(params) == {"heads"} and set(state) == {"batch_stats", "spectral"}
  # Built inside jit with the frozen params as a jit argument, as the train step does.
  run = jax.jit(lambda p, s, x, k, tp: make_disc_apply(d, frozen=tp)(p, s, x, k))
  logits, new_state = run(params, state, x, key(3), trunk_params)
  assert logits.shape == (4, 2 * 4)
  assert not np.allclose(
    np.asarray(new_state["spectral"]["heads"]["heads_0"]["res_conv"]["u"]),
    np.asarray(state["spectral"]["heads"]["heads_0"]["res_conv"]["u"]),
  )

  # Gradients reach the images but never the frozen trunk parameters.
  def f(x, tp):
    return jnp.sum(make_disc_apply(d, frozen=tp)(params, state, x, key(3))[0])

  gx, gtp = jax.jit(jax.grad(f, argnums=(0, 1)))(x, trunk_params)
  assert np.abs(np.asarray(gx)).sum() > 0
  assert np.all(np.asarray(gtp["w"]) == 0)
  # update_stats=False leaves the state untouched.
  _, same = jax.jit(make_disc_apply(d, frozen=trunk_params, update_stats=False))(
    params, state, x, key(3)
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), same, state
  )


def test_unknown_discriminator():
  with pytest.raises(ValueError, match="loss.disc.name"):
    build_discriminator("stylegan")
