"""The public tokenizer objective (objectives/tokenizer.py) on plain arrays and random frozen nets.

Every term against an independent numpy computation (reconstruction, LPIPS ramp, alignment,
hinge / non-saturating G and D losses, LeCam, disc_start, the adaptive weight of a linear
decoder), the total as the weighted sum, gradients to the reconstructions, and the injected keys.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.models.discriminators import (
  PatchGANDiscriminator,
  init_discriminator,
  make_disc_apply,
)
from softvq_jax.models.frozen.vgg import LPIPS
from softvq_jax.objectives import perceptual
from softvq_jax.objectives import tokenizer as T
from softvq_jax.objectives.adversarial import AdvLossConfig, init_lecam_ema

B, S, L, N, C = 2, 16, 2, 4, 8  # batch, image size, latent tokens, teacher tokens, teacher width
A_, B_ = 1.5, -0.2  # toy discriminator: per-pixel logits A_ * x[..., 0] + B_


def key(seed):
  return jax.random.key(seed)


def toy_apply(params, state, x, k):
  return params["a"] * x[..., 0] + params["b"], {"calls": state["calls"] + 1}


TOY = T.Discriminator(toy_apply, {"a": jnp.float32(A_), "b": jnp.float32(B_)}, {"calls": 0})


def np_logits(x):
  return A_ * np.asarray(x, np.float64)[..., 0] + B_


def softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (B, S, S, 3)).astype(np.float32)
  x_rec = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  z_proj = rng.standard_normal((B, L, C)).astype(np.float32)
  teacher = rng.standard_normal((B, N, C)).astype(np.float32)
  info = {"quantizer_loss": np.float32(0.037), "entropy_loss": np.float32(0.021)}
  return x, x_rec, z_proj, teacher, info


@pytest.fixture(scope="module")
def lpips_params():
  z = jnp.zeros((1, S, S, 3))
  params = jax.jit(LPIPS().init)(key(1), z, z)["params"]
  # Non-negative heads, as the published ones, so the distance is positive.
  return {"vgg": params["vgg"], "lin": jax.tree.map(jnp.abs, params["lin"])}


def np_align_repeat(z, t):
  z = np.repeat(np.asarray(z, np.float64), N // L, axis=1)
  t = np.asarray(t, np.float64)
  cos = (z * t).sum(-1) / (np.linalg.norm(z, axis=-1) * np.linalg.norm(t, axis=-1))
  return -cos.mean()


ALL = T.TokenizerObjective(
  rec_weight=0.7,
  perceptual_weight=0.5,
  perceptual_warmup=10,
  gan=AdvLossConfig(weight=0.2, start=5, diffaug=False),
  align_weight=0.3,
  align_mode="repeat",
)


@pytest.mark.parametrize("step", [3, 4, 5, 12])
def test_generator_loss_is_the_weighted_sum_of_the_terms(data, lpips_params, step):
  x, x_rec, z_proj, teacher, info = data
  loss, (m, aux) = T.generator_loss(
    ALL,
    x,
    x_rec,
    info,
    step,
    lpips_params=lpips_params,
    z_proj=z_proj,
    teacher=teacher,
    disc=TOY,
    adv_key=key(2),
  )
  rec = np.mean((x_rec.astype(np.float64) - x) ** 2)
  w_p = 0.5 * min(1.0, step / 10)
  align = np_align_repeat(z_proj, teacher)
  g_adv = -np_logits(x_rec).mean()
  w_g = 0.2 if step >= 5 else 0.0
  lp = float(perceptual.lpips_loss(lpips_params, x, x_rec))
  assert lp > 0
  np.testing.assert_allclose(m["rec_loss"], rec, rtol=1e-5)
  np.testing.assert_allclose(m["perceptual_loss"], lp, rtol=1e-6)
  np.testing.assert_allclose(m["perceptual_weight"], w_p, rtol=1e-6)
  np.testing.assert_allclose(m["align_loss"], align, rtol=1e-5)
  np.testing.assert_allclose(m["gan/gen_adv_loss"], g_adv, rtol=1e-5)
  np.testing.assert_allclose(m["gan/logits_fake_g"], np_logits(x_rec).mean(), rtol=1e-5)
  assert float(m["gan/g_weight"]) == pytest.approx(w_g)
  assert float(m["quantizer_loss"]) == pytest.approx(0.037)
  assert float(m["entropy_loss"]) == pytest.approx(0.021)  # logged, part of quantizer_loss
  # The entropy is not added a second time: quantizer_loss enters once, with weight 1.
  expected = 0.7 * rec + w_p * lp + 0.037 + 0.3 * align + w_g * g_adv
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
  weights = {k: float(v) for k, v in aux["weights"].items()}
  assert weights == pytest.approx(
    {
      "rec_loss": 0.7,
      "perceptual_loss": w_p,
      "quantizer_loss": 1.0,
      "align_loss": 0.3,
      "gan/gen_adv_loss": w_g,
    }
  )
  assert int(aux["disc_state"]["calls"]) == 1  # the D state after the G pass


def test_terms_that_are_off_are_absent_and_l1(data):
  x, x_rec, _, _, info = data
  obj = T.TokenizerObjective(rec_type="l1", rec_weight=2.0)
  loss, (m, aux) = T.generator_loss(obj, x, x_rec, {"quantizer_loss": np.float32(0.5)}, 1)
  l1 = np.mean(np.abs(x_rec.astype(np.float64) - x))
  np.testing.assert_allclose(m["rec_loss"], l1, rtol=1e-5)
  np.testing.assert_allclose(loss, 2.0 * l1 + 0.5, rtol=1e-5)
  assert set(m) == {"rec_loss", "quantizer_loss", "loss"} and aux["disc_state"] is None
  # Weight 0 switches a term off even when its inputs are given.
  obj = T.TokenizerObjective(perceptual_weight=0.0, gan=AdvLossConfig(weight=0.0))
  _, (m, _) = T.generator_loss(obj, x, x_rec, info, 1, disc=TOY, adv_key=key(0))
  assert "perceptual_loss" not in m and "gan/gen_adv_loss" not in m


def test_perceptual_ramp_and_constant_weight(data, lpips_params):
  x, x_rec, _, _, info = data
  lp = float(perceptual.lpips_loss(lpips_params, x, x_rec))
  for warmup, steps in ((4, (1, 2, 4, 9)), (0, (1, 100))):
    obj = T.TokenizerObjective(rec_weight=0.0, perceptual_weight=2.0, perceptual_warmup=warmup)
    for step in steps:
      w = 2.0 * (min(1.0, step / warmup) if warmup else 1.0)
      loss, (m, _) = T.generator_loss(obj, x, x_rec, info, step, lpips_params=lpips_params)
      np.testing.assert_allclose(m["perceptual_weight"], w, rtol=1e-6)
      np.testing.assert_allclose(loss, w * lp + 0.037, rtol=1e-5)


def test_non_saturating_generator_loss(data):
  x, x_rec, _, _, info = data
  obj = T.TokenizerObjective(
    gan=AdvLossConfig(weight=0.5, start=0, diffaug=False, g_loss="non-saturating")
  )
  _, (m, _) = T.generator_loss(obj, x, x_rec, info, 1, disc=TOY, adv_key=key(0))
  np.testing.assert_allclose(m["gan/gen_adv_loss"], softplus(-np_logits(x_rec)).mean(), rtol=1e-5)
  assert float(m["gan/g_weight"]) == pytest.approx(0.5)


def test_gradients_reach_the_reconstructions_and_the_projection(data, lpips_params):
  x, x_rec, z_proj, teacher, info = data
  obj = T.TokenizerObjective(rec_weight=0.7)
  g = jax.grad(lambda r: T.generator_loss(obj, x, r, info, 1)[0])(jnp.asarray(x_rec))
  np.testing.assert_allclose(g, 0.7 * 2 * (x_rec - x) / x.size, rtol=1e-4, atol=1e-9)
  # All terms on (LPIPS, alignment, a PatchGAN behind DiffAugment): finite, non-zero gradients.
  d = PatchGANDiscriminator(ndf=4, n_layers=1)
  d_params, d_state = init_discriminator(d, key(3), jnp.asarray(x))
  disc = T.Discriminator(make_disc_apply(d), d_params, d_state)
  obj = T.TokenizerObjective(
    perceptual_weight=1.0, gan=AdvLossConfig(start=0, diffaug_prob=1.0), align_weight=0.1
  )

  def f(r, z):
    kw = dict(lpips_params=lpips_params, teacher=teacher, disc=disc, adv_key=key(4))
    return T.generator_loss(obj, x, r, info, 1, z_proj=z, **kw)[0]

  g_rec, g_z = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x_rec), jnp.asarray(z_proj))
  for g in (g_rec, g_z):
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).sum()) > 0
  # The GAN and LPIPS terms contribute beyond the pixel loss.
  g_pix = 2 * (x_rec - x) / x.size
  assert np.abs(np.asarray(g_rec) - g_pix).max() > 1e-4


def test_keys_are_injected(data):
  """Same keys -> same loss; another DiffAugment or shuffle key -> another loss."""
  x, x_rec, z_proj, _, info = data
  d = PatchGANDiscriminator(ndf=4, n_layers=1)
  d_params, d_state = init_discriminator(d, key(3), jnp.asarray(x))
  disc = T.Discriminator(make_disc_apply(d), d_params, d_state)
  obj = T.TokenizerObjective(
    gan=AdvLossConfig(start=0, diffaug_prob=1.0), align_weight=1.0, align_mode="avg_1d_shuffle"
  )
  # 16 teacher tokens pooled to 2: two permutations pool alike with probability ~1e-4.
  teacher = np.random.default_rng(2).standard_normal((B, 16, C)).astype(np.float32)
  run = jax.jit(
    lambda ka, kal: T.generator_loss(
      obj, x, x_rec, info, 1, z_proj=z_proj, teacher=teacher, disc=disc, adv_key=ka, align_key=kal
    )[1][0]
  )
  a, b = run(key(5), key(6)), run(key(5), key(6))
  for k in ("gan/gen_adv_loss", "align_loss", "loss"):
    assert float(a[k]) == float(b[k]), k
  c = run(key(7), key(6))
  assert float(c["gan/gen_adv_loss"]) != float(a["gan/gen_adv_loss"])
  assert float(c["align_loss"]) == float(a["align_loss"])
  e = run(key(5), key(8))
  assert float(e["align_loss"]) != float(a["align_loss"])
  assert float(e["gan/gen_adv_loss"]) == float(a["gan/gen_adv_loss"])


def test_adaptive_weight_of_a_linear_decoder(data):
  """x_rec = h @ W: both gradients w.r.t. W in closed form (numpy)."""
  x, _, _, _, info = data
  rng = np.random.default_rng(1)
  h = rng.standard_normal((B, S, S, 5)).astype(np.float32)
  w0 = (0.1 * rng.standard_normal((5, 3))).astype(np.float32)
  params = {"decoder": {"out": {"kernel": w0, "bias": np.zeros(3, np.float32)}}}
  reconstruct = lambda p: h @ p["decoder"]["out"]["kernel"] + p["decoder"]["out"]["bias"]
  obj = T.TokenizerObjective(
    rec_weight=0.7, gan=AdvLossConfig(weight=0.2, start=0, diffaug=False), adaptive_weight=True
  )
  aw = T.adaptive_gan_weight(
    obj, reconstruct, params, ("decoder", "out", "kernel"), x, 3, disc=TOY, adv_key=key(0)
  )
  hd, xr = h.astype(np.float64), h.astype(np.float64) @ w0
  g_nll = 0.7 * 2 * np.einsum("bhwf,bhwc->fc", hd, xr - x) / x.size
  g_adv = np.zeros((5, 3))
  g_adv[:, 0] = -A_ * hd.sum((0, 1, 2)) / (B * S * S)  # d(-mean(A x0 + B))/dW[:, 0]
  expected = np.linalg.norm(g_nll) / (np.linalg.norm(g_adv) + 1e-4)
  np.testing.assert_allclose(aw, expected, rtol=1e-4)
  _, (m, _) = T.generator_loss(
    obj, x, reconstruct(params), info, 3, disc=TOY, adv_key=key(0), adaptive=aw
  )
  np.testing.assert_allclose(m["gan/g_weight"], 0.2 * expected, rtol=1e-4)
  with pytest.raises(ValueError, match="adaptive"):
    T.generator_loss(obj, x, reconstruct(params), info, 3, disc=TOY, adv_key=key(0))


def np_hinge_d(lr, lf):
  return 0.5 * (np.maximum(1 - lr, 0).mean() + np.maximum(1 + lf, 0).mean())


def test_discriminator_loss_hinge_lecam_and_start(data):
  x, x_rec, _, _, _ = data
  gan = AdvLossConfig(weight=0.5, start=5, diffaug=False, lecam_weight=0.01, cr_weight=0.0)
  obj = T.TokenizerObjective(gan=gan)
  ema0 = {"real": jnp.float32(0.2), "fake": jnp.float32(-0.3)}
  lr, lf = np_logits(x), np_logits(x_rec)
  er, ef = 0.999 * 0.2 + 0.001 * lr.mean(), 0.999 * -0.3 + 0.001 * lf.mean()
  lecam = (np.maximum(lr - ef, 0) ** 2).mean() + (np.maximum(er - lf, 0) ** 2).mean()
  hinge = np_hinge_d(lr, lf)
  for step, w_d in ((4, 0.0), (5, 0.5)):
    loss, (m, aux) = T.discriminator_loss(
      obj, TOY.params, TOY.state, toy_apply, x, x_rec, step, ema0, key(1)
    )
    np.testing.assert_allclose(m["gan/disc_loss"], hinge, rtol=1e-5)
    np.testing.assert_allclose(m["gan/lecam_loss"], lecam, rtol=1e-5)
    np.testing.assert_allclose(loss, w_d * (hinge + 0.01 * lecam), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(m["gan/d_total"], loss)
    assert float(m["gan/disc_weight"]) == w_d
    # The LeCam EMAs advance before disc_start too.
    np.testing.assert_allclose([aux["lecam"]["real"], aux["lecam"]["fake"]], [er, ef], rtol=1e-5)
    assert int(aux["disc_state"]["calls"]) == 2


def test_discriminator_loss_gradient_and_vanilla(data):
  x, x_rec, _, _, _ = data
  obj = T.TokenizerObjective(
    gan=AdvLossConfig(weight=0.5, start=0, diffaug=False, lecam_weight=None, cr_weight=0.0)
  )
  (loss, (m, _)), g = jax.value_and_grad(T.discriminator_loss, argnums=1, has_aux=True)(
    obj, TOY.params, TOY.state, toy_apply, x, x_rec, 1, init_lecam_ema(), key(1)
  )
  assert "gan/lecam_loss" not in m and "gan/cr_loss" not in m
  xr0, xf0 = np.asarray(x, np.float64)[..., 0], np.asarray(x_rec, np.float64)[..., 0]
  lr, lf = np_logits(x), np_logits(x_rec)
  np.testing.assert_allclose(loss, 0.5 * np_hinge_d(lr, lf), rtol=1e-5)
  # d/da of 0.5 * 0.5 * (mean relu(1 - a xr - b) + mean relu(1 + a xf + b))
  on_r, on_f = (1 - lr > 0).astype(np.float64), (1 + lf > 0).astype(np.float64)
  da = 0.25 * ((-on_r * xr0).mean() + (on_f * xf0).mean())
  db = 0.25 * (-on_r.mean() + on_f.mean())
  np.testing.assert_allclose([g["a"], g["b"]], [da, db], rtol=1e-4)
  # The images get no gradient from the D loss.
  gf = jax.grad(
    lambda f: T.discriminator_loss(
      obj, TOY.params, TOY.state, toy_apply, x, f, 1, init_lecam_ema(), key(1)
    )[0]
  )(jnp.asarray(x_rec))
  assert float(jnp.abs(gf).sum()) == 0.0
  vanilla = T.TokenizerObjective(
    gan=AdvLossConfig(
      weight=1.0, start=0, diffaug=False, lecam_weight=None, cr_weight=0.0, d_loss="vanilla"
    )
  )
  loss, _ = T.discriminator_loss(
    vanilla, TOY.params, TOY.state, toy_apply, x, x_rec, 1, init_lecam_ema(), key(1)
  )
  np.testing.assert_allclose(loss, 0.5 * (softplus(-lr).mean() + softplus(lf).mean()), rtol=1e-5)


def test_missing_inputs_and_bad_settings_are_named(data):
  x, x_rec, _, _, info = data
  with pytest.raises(ValueError, match="lpips_params"):
    T.generator_loss(T.TokenizerObjective(perceptual_weight=1.0), x, x_rec, info, 1)
  with pytest.raises(ValueError, match="teacher"):
    T.generator_loss(
      T.TokenizerObjective(align_weight=0.1), x, x_rec, info, 1, z_proj=np.zeros((B, L, C))
    )
  with pytest.raises(ValueError, match="disc"):
    T.generator_loss(T.TokenizerObjective(gan=AdvLossConfig()), x, x_rec, info, 1)
  with pytest.raises(ValueError, match="rec_type"):
    T.TokenizerObjective(rec_type="l3")
  with pytest.raises(ValueError, match="align.mode"):
    T.TokenizerObjective(align_mode="mean")
  with pytest.raises(ValueError, match="GAN"):
    T.discriminator_loss(
      T.TokenizerObjective(), {}, {}, toy_apply, x, x_rec, 1, init_lecam_ema(), key(0)
    )


def test_weighted_sum_order():
  terms = [("a", 2.0, jnp.float32(3.0)), ("b", 0.5, jnp.float32(-4.0))]
  assert float(T.weighted_sum(terms)) == 4.0
  with pytest.raises(ValueError):
    T.weighted_sum([])
