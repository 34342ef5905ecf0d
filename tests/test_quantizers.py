"""Quantizers against independent numpy computations: soft VQ (both logit forms), its gradient
paths, the entropy regulariser (also under a sharded jit), hard VQ, KL and the identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.models import quantizers as Q
from softvq_jax.models.functional import l2_normalize

B, L, D, K, NC = 3, 8, 6, 16, 2


def _np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_softmax(a):
  a = a - a.max(-1, keepdims=True)
  e = np.exp(a)
  return e / e.sum(-1, keepdims=True)


def _np_entropy_loss(aff, temp, log_eps):
  a = aff.reshape(-1, aff.shape[-1]).astype(np.float64) / temp
  p = _np_softmax(a)
  logp = np.log(p)
  avg = p.mean(0)
  return -(p * logp).sum(-1).mean() + (avg * np.log(avg + log_eps)).sum()


def _init(module, z, train=False):
  """Variables without running the (slow to compile on CPU) random initialisers."""
  del z, train
  if isinstance(module, (Q.SoftVectorQuantizer, Q.VectorQuantizer)):
    cb = np.random.RandomState(7).randn(NC, K, D).astype(np.float32)
    return {"params": {"embedding": jnp.asarray(_np_normalize(cb).astype(np.float32))}}
  return {}


def _apply(module, variables, z, train=False, **kw):
  """module.apply under jit (eager op-by-op dispatch is slow on CPU)."""
  return jax.jit(lambda v, z: module.apply(v, z, train, **kw))(variables, z)


@pytest.fixture
def z():
  return jnp.asarray(np.random.RandomState(0).randn(B, L, D).astype(np.float32))


def _soft(**kw):
  args = dict(codebook_size=K, embed_dim=D, num_codebooks=NC, tau=0.07, l2_norm=True)
  args.update(kw)
  return Q.SoftVectorQuantizer(**args)


def _np_soft(z, codebook, tau, form="cosine"):
  """Independent reference: token l uses codebook l // (L / nc)."""
  zn, cn = _np_normalize(np.asarray(z, np.float64)), _np_normalize(np.asarray(codebook, np.float64))
  seg = L // NC
  logits = np.zeros((B, L, K))
  for t in range(L):
    c = cn[t // seg]
    if form == "cosine":
      logits[:, t] = zn[:, t] @ c.T
    else:
      logits[:, t] = -np.linalg.norm(zn[:, t, None, :] - c[None], axis=-1)
  probs = _np_softmax(logits / tau)
  zq = np.stack([probs[:, t] @ cn[t // seg] for t in range(L)], axis=1)
  return logits, probs, zq


@pytest.mark.parametrize("form", ["cosine", "distance"])
def test_softvq_matches_numpy(z, form):
  q = _soft(logit_form=form)
  v = _init(q, z)
  cb = v["params"]["embedding"]
  zq, info = _apply(q, v, z)
  logits, probs, zq_ref = _np_soft(z, cb, 0.07, form)
  # tolerances: logits 1e-5, probabilities and z_q 1e-5 / tau (SPEC §5)
  np.testing.assert_allclose(info["logits"], logits, atol=1e-5)
  np.testing.assert_allclose(info["probs"], probs, atol=1e-5 / 0.07)
  np.testing.assert_allclose(zq, zq_ref, atol=1e-5 / 0.07)
  np.testing.assert_array_equal(info["indices"], probs.argmax(-1))
  counts = np.zeros((NC, K), np.int64)
  for t in range(L):
    np.add.at(counts[t // (L // NC)], probs[:, t].argmax(-1), 1)
  np.testing.assert_array_equal(info["code_counts"], counts)
  m = info["metrics"]
  np.testing.assert_allclose(m["max_prob"], probs.max(-1).mean(), rtol=1e-4)
  np.testing.assert_allclose(m["codebook_usage_batch"], np.mean((counts > 0).sum(-1) / K), 1e-6)
  zn = _np_normalize(np.asarray(z, np.float64))
  cos = (zn * zq_ref).sum(-1) / np.linalg.norm(zq_ref, axis=-1)
  np.testing.assert_allclose(m["zq_z_cos"], cos.mean(), rtol=1e-4)
  assert float(info["quantizer_loss"]) == 0.0  # eval: no loss


def test_softvq_sequence_split_uses_the_right_codebook(z):
  """Zeroing codebook 1 changes only the tokens of the second half of the sequence."""
  q = _soft()
  v = _init(q, z)
  zq, _ = _apply(q, v, z)
  cb2 = v["params"]["embedding"].at[1].set(jnp.roll(v["params"]["embedding"][1], 1, axis=-1))
  zq2, _ = _apply(q, {"params": {"embedding": cb2}}, z)
  np.testing.assert_array_equal(zq[:, : L // 2], zq2[:, : L // 2])
  assert np.abs(np.asarray(zq[:, L // 2 :] - zq2[:, L // 2 :])).max() > 1e-3


def test_entropy_loss_matches_numpy():
  aff = np.random.RandomState(1).uniform(-1, 1, (2, 5, K)).astype(np.float32)
  for eps in (1e-6, 1e-5):
    np.testing.assert_allclose(
      Q.entropy_loss(jnp.asarray(aff), 0.01, eps),
      _np_entropy_loss(aff, 0.01, eps),
      rtol=1e-4,
      atol=1e-5,
    )


def test_softvq_train_entropy_loss(z):
  q = _soft(entropy_loss_ratio=0.01, entropy_temperature=0.01)
  v = _init(q, z)
  _, info = _apply(q, v, z, True)
  want = 0.01 * _np_entropy_loss(
    np.asarray(_np_soft(z, v["params"]["embedding"], 0.07)[0]), 0.01, 1e-6
  )
  np.testing.assert_allclose(info["entropy_loss"], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(info["quantizer_loss"], info["entropy_loss"])


def test_softvq_gradient_paths(z):
  """The codebook gets gradient only through z_q = p @ C^ (logits use stop_grad(C));
  the input (encoder side) gets gradient through both."""
  q = _soft(entropy_loss_ratio=0.01)
  v = _init(q, z)
  cb = v["params"]["embedding"]
  w = jnp.asarray(np.random.RandomState(3).randn(B, L, D).astype(np.float32))

  def loss(cb, z):
    zq, info = q.apply({"params": {"embedding": cb}}, z, True)
    return jnp.sum(w * zq) + 10.0 * info["entropy_loss"]

  g_cb, g_z = jax.jit(jax.grad(loss, argnums=(0, 1)))(cb, z)
  # Independent: probabilities as constants, gradient only via p @ normalize(C).
  _, probs, _ = _np_soft(z, cb, 0.07)
  p_const = jnp.asarray(probs, jnp.float32).reshape(B, NC, L // NC, K)

  def only_mixture(cb):
    zq = jnp.einsum("bnsk,nkd->bnsd", p_const, l2_normalize(cb), precision="highest")
    return jnp.sum(w * zq.reshape(B, L, D))

  np.testing.assert_allclose(g_cb, jax.jit(jax.grad(only_mixture))(cb), atol=1e-5)

  # Had the logits not stopped the gradient, the codebook gradient would differ noticeably:
  def leaky(cb):
    cn = l2_normalize(cb)
    zs = l2_normalize(z).reshape(B, NC, L // NC, D)
    p = jax.nn.softmax(jnp.einsum("bnsd,nkd->bnsk", zs, cn) / 0.07, -1)
    return jnp.sum(w * jnp.einsum("bnsk,nkd->bnsd", p, cn).reshape(B, L, D))

  assert np.abs(np.asarray(jax.jit(jax.grad(leaky))(cb) - g_cb)).max() > 1e-3
  assert np.abs(np.asarray(g_z)).max() > 1e-4  # the encoder side is trained


def test_entropy_marginal_is_global_under_sharded_jit(z):
  """With the batch sharded over 8 devices the marginal is still over the global batch."""
  devices = np.array(jax.devices()[:8])
  if len(devices) < 8:
    pytest.skip("needs 8 devices")
  q = _soft(entropy_loss_ratio=1.0)
  zz = jnp.asarray(np.random.RandomState(5).randn(8, L, D).astype(np.float32))
  v = _init(q, zz)
  mesh = jax.sharding.Mesh(devices, ("data",))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  f = jax.jit(lambda p, x: q.apply(p, x, True)[1]["entropy_loss"])
  sharded = f(v, jax.device_put(zz, sh))
  single = _apply(q, v, zz, True)[1]["entropy_loss"]
  per_device = np.mean([float(f(v, zz[i : i + 1])) for i in range(8)])
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
  assert abs(float(single) - per_device) > 1e-3  # the per-device marginal would differ


def test_vq_matches_numpy_and_straight_through(z):
  q = Q.VectorQuantizer(
    codebook_size=K,
    embed_dim=D,
    num_codebooks=NC,
    l2_norm=True,
    commit_beta=0.25,
    entropy_loss_ratio=0.1,
  )
  v = _init(q, z)
  cb = np.asarray(v["params"]["embedding"], np.float64)
  zq, info = _apply(q, v, z, True)
  zn = _np_normalize(np.asarray(z, np.float64))
  seg = L // NC
  idx = np.stack(
    [np.linalg.norm(zn[:, t, None] - cb[t // seg][None], axis=-1).argmin(-1) for t in range(L)], 1
  )
  np.testing.assert_array_equal(info["indices"], idx)
  hard = np.stack([cb[t // seg][idx[:, t]] for t in range(L)], 1)
  np.testing.assert_allclose(zq, hard, atol=1e-6)
  mse = np.mean((hard - zn) ** 2)
  d2 = np.stack([((zn[:, t, None] - cb[t // seg][None]) ** 2).sum(-1) for t in range(L)], 1)
  ent = 0.1 * _np_entropy_loss(-d2, 0.01, 1e-5)
  np.testing.assert_allclose(info["metrics"]["codebook_loss"], mse, rtol=1e-5)
  np.testing.assert_allclose(info["quantizer_loss"], mse * 1.25 + ent, rtol=1e-4, atol=1e-6)
  # straight-through: d sum(w * z_q) / d z_normalised = w
  w = jnp.asarray(np.random.RandomState(4).randn(B, L, D).astype(np.float32))
  g = jax.jit(jax.grad(lambda zz: jnp.sum(w * q.apply(v, zz, False)[0])))(z)
  g_ref = jax.jit(jax.grad(lambda zz: jnp.sum(w * l2_normalize(zz))))(z)
  np.testing.assert_allclose(g, g_ref, atol=1e-5)
  _, info_eval = _apply(q, v, z, False)
  assert float(info_eval["quantizer_loss"]) == 0.0


def test_kl_quantizer(z):
  q = Q.DiagonalGaussianQuantizer(embed_dim=D // 2, kl_weight=1e-3)
  h = z.at[..., D // 2 :].set(jnp.where(z[..., D // 2 :] > 0, 40.0, -40.0))  # hits both clamps
  v = _init(q, h)
  zq, info = _apply(q, v, h, False)
  mean, logvar = np.split(np.asarray(h, np.float64), 2, -1)
  logvar = np.clip(logvar, -30, 20)
  np.testing.assert_array_equal(zq, mean)
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2)).sum() / B
  np.testing.assert_allclose(info["quantizer_loss"], 1e-3 * kl, rtol=1e-5)
  f = jax.jit(lambda k: q.apply(v, h, True, rngs={"sample": k})[0])
  sample = lambda k: np.asarray(f(jax.random.PRNGKey(k)))
  zs1, zs2 = sample(1), sample(2)
  np.testing.assert_array_equal(zs1, sample(1))  # the "sample" rng alone decides the noise
  assert not np.allclose(zs1, zs2)
  low = logvar == -30  # std e^-15: the sample is the mean
  assert low.any() and (~low).any()
  np.testing.assert_allclose(zs1[low], mean[low], atol=1e-5)
  eps = (zs1[~low] - mean[~low]) / np.exp(0.5 * logvar[~low])
  assert np.all(np.abs(eps) < 6) and np.std(eps) > 0.2


def test_identity_quantizer(z):
  q = Q.IdentityQuantizer()
  zq, info = _apply(q, _init(q, z), z, True)
  np.testing.assert_array_equal(zq, z)
  assert float(info["quantizer_loss"]) == 0.0


@pytest.mark.parametrize("as_config_dict", [False, True])
def test_registry_and_from_config(as_config_dict):
  """QUANTIZERS is the one name -> class table; each class reads its own keys (dict or
  ConfigDict), missing keys keep the class defaults, and build_quantizer is a lookup."""
  import ml_collections

  from softvq_jax.models.factory import build_quantizer

  cfg = dict(
    codebook_size=K,
    num_codebooks=NC,
    tau=0.1,
    l2_norm=False,
    logit_form="distance",
    entropy_loss_ratio=0.02,
    entropy_temperature=0.05,
    commit_beta=0.5,
    kl_weight=1e-3,
  )
  wrap = ml_collections.ConfigDict if as_config_dict else dict
  expected = {
    "softvq": Q.SoftVectorQuantizer(
      codebook_size=K,
      embed_dim=D,
      num_codebooks=NC,
      tau=0.1,
      l2_norm=False,
      logit_form="distance",
      entropy_loss_ratio=0.02,
      entropy_temperature=0.05,
    ),
    "vq": Q.VectorQuantizer(
      codebook_size=K,
      embed_dim=D,
      num_codebooks=NC,
      l2_norm=False,
      commit_beta=0.5,
      entropy_loss_ratio=0.02,
      entropy_temperature=0.05,
    ),
    "kl": Q.DiagonalGaussianQuantizer(embed_dim=D, kl_weight=1e-3),
    "ae": Q.IdentityQuantizer(),
  }
  assert set(Q.QUANTIZERS) == set(expected)
  for name, cls in Q.QUANTIZERS.items():
    section = wrap({"name": name, **cfg})
    assert cls.from_config(section, D) == expected[name]
    assert build_quantizer(section, D) == expected[name]
  # Defaults: only the keys without a default are needed.
  minimal = Q.SoftVectorQuantizer.from_config(wrap({"codebook_size": K}), D)
  assert minimal == Q.SoftVectorQuantizer(codebook_size=K, embed_dim=D)
  assert build_quantizer(wrap({"codebook_size": K}), D) == minimal  # name defaults to softvq
