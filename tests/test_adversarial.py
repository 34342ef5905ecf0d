"""GAN losses on fixed logits against numpy formulas; LeCam/EMA, CR, adaptive weight, disc_start;
the discriminator-step and generator helpers against a hand computation with a toy discriminator,
and one jitted step with a real (tiny) PatchGAN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.config.defaults import ConfigDict
from softvq_jax.models.discriminators import (
  PatchGANDiscriminator,
  init_discriminator,
  make_disc_apply,
)
from softvq_jax.objectives import adversarial as adv
from softvq_jax.objectives.diffaug import diff_augment

REAL = np.array([[-2.0, -0.5, 0.0], [0.3, 1.0, 2.5]], np.float32)
FAKE = np.array([[-1.5, -1.0, 0.2], [0.9, -0.1, 3.0]], np.float32)


def key(seed):
  return jax.random.key(seed, impl="rbg")


def softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_d_losses():
  relu = lambda x: np.maximum(x, 0)
  hinge = 0.5 * (relu(1 - REAL).mean() + relu(1 + FAKE).mean())
  np.testing.assert_allclose(float(adv.hinge_d_loss(REAL, FAKE)), hinge, rtol=1e-6)
  vanilla = 0.5 * (softplus(-REAL).mean() + softplus(FAKE).mean())
  np.testing.assert_allclose(float(adv.vanilla_d_loss(REAL, FAKE)), vanilla, rtol=1e-6)
  # Non-saturating with BCE(input=logits, target) the right way round == vanilla.
  sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
  ns = 0.5 * (-np.log(sig(REAL)).mean() - np.log(1 - sig(FAKE)).mean())
  np.testing.assert_allclose(float(adv.non_saturating_d_loss(REAL, FAKE)), ns, rtol=1e-5)
  np.testing.assert_allclose(float(adv.non_saturating_d_loss(REAL, FAKE)), vanilla, rtol=1e-5)
  # The reference's swapped call would give a D fake term of log 2 with no gradient: ours has one.
  g = jax.grad(lambda f: adv.non_saturating_d_loss(REAL, f))(jnp.asarray(FAKE))
  np.testing.assert_allclose(np.asarray(g), 0.5 * sig(FAKE) / FAKE.size, rtol=1e-5)


def test_g_losses():
  np.testing.assert_allclose(float(adv.hinge_g_loss(FAKE)), -FAKE.mean(), rtol=1e-6)
  np.testing.assert_allclose(
    float(adv.non_saturating_g_loss(FAKE)), softplus(-FAKE).mean(), rtol=1e-6
  )
  # Not the reference's buggy softplus(1) - mean(fake).
  assert abs(float(adv.non_saturating_g_loss(FAKE)) - (softplus(1.0) - FAKE.mean())) > 0.1


def test_lecam_and_ema():
  ema = adv.init_lecam_ema()
  assert float(ema["real"]) == 0.0 and float(ema["fake"]) == 0.0
  ema = adv.update_lecam_ema(ema, REAL, FAKE, 0.999)
  np.testing.assert_allclose(float(ema["real"]), 0.001 * REAL.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(ema["fake"]), 0.001 * FAKE.mean(), rtol=1e-5)
  ema = adv.update_lecam_ema({"real": 0.4, "fake": -0.3}, REAL, FAKE, 0.9)
  np.testing.assert_allclose(float(ema["real"]), 0.9 * 0.4 + 0.1 * REAL.mean(), rtol=1e-5)
  er, ef = 0.25, -0.4
  ref = (np.maximum(REAL - ef, 0) ** 2).mean() + (np.maximum(er - FAKE, 0) ** 2).mean()
  np.testing.assert_allclose(float(adv.lecam_loss(REAL, FAKE, er, ef)), ref, rtol=1e-6)
  # EMAs are constants for the gradient.
  g = jax.grad(lambda e: adv.lecam_loss(REAL, FAKE, e, e))(jnp.float32(0.1))
  assert float(g) == 0.0


def test_consistency_loss():
  r_s, f_s = REAL + 0.5, FAKE * 2
  ref = np.mean((np.concatenate([REAL, FAKE]) - np.concatenate([r_s, f_s])) ** 2)
  np.testing.assert_allclose(float(adv.consistency_loss([REAL, FAKE], [r_s, f_s])), ref, rtol=1e-6)
  np.testing.assert_allclose(float(adv.consistency_loss(jnp.asarray(REAL), r_s)), 0.25, rtol=1e-6)


def test_adaptive_weight_and_schedule():
  g_nll = np.full((3, 4), 0.5, np.float32)  # norm 1.7320508
  g_adv = {"w": np.full((2, 2), 1.0, np.float32), "b": np.zeros(3, np.float32)}  # norm 2
  np.testing.assert_allclose(
    float(adv.adaptive_weight(g_nll, g_adv)), np.sqrt(3) / (2 + 1e-4), rtol=1e-6
  )
  assert float(adv.adaptive_weight(g_nll, np.zeros(3, np.float32))) == 1e4  # clamped
  g = jax.grad(lambda s: adv.adaptive_weight(s * g_nll, g_adv))(1.0)
  assert float(g) == 0.0
  assert float(adv.disc_weight_at(19_999, 20_000, 0.2)) == 0.0
  np.testing.assert_allclose(float(adv.disc_weight_at(20_000, 20_000, 0.2)), 0.2)
  w = jax.jit(adv.disc_weight_at, static_argnums=(1, 2))(jnp.int32(25_000), 20_000, 0.2)
  np.testing.assert_allclose(float(w), 0.2)


def test_config_from_configlib_defaults():
  disc = ConfigDict(
    {
      "name": "dino",
      "weight": 0.2,
      "start": 20_000,
      "loss": "hinge",
      "gen_loss": "hinge",
      "adaptive_weight": False,
      "diffaug": True,
      "diffaug_policy": "color,translation,cutout_0.2",
      "diffaug_prob": 0.5,
      "lecam_weight": 0.001,
      "lecam_decay": 0.999,
      "cr_weight": 4.0,
      "cr_policy": "color,translation,cutout_0.5",
    }
  )
  assert adv.AdvLossConfig.from_config(disc) == adv.AdvLossConfig()
  with pytest.raises(ValueError, match="loss.disc.loss"):
    adv.AdvLossConfig(d_loss="wasserstein")
  with pytest.raises(ValueError, match="loss.disc.gen_loss"):
    adv.AdvLossConfig(g_loss="vanilla")


# ----------------------------------------------------------------------------- step helpers
def toy_disc(params, state, x, k):
  """Per-pixel logits a * x + b; the state counts the calls (to check the threading)."""
  return params["a"] * x[..., 0] + params["b"], {"calls": state["calls"] + 1}


PARAMS = {"a": jnp.float32(1.5), "b": jnp.float32(-0.2)}
STATE = {"calls": jnp.int32(0)}


def _batch():
  real = jax.random.uniform(key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  fake = jax.random.uniform(key(1), (2, 8, 8, 3), minval=-1, maxval=1)
  return real, fake


def test_discriminator_step_loss_by_hand():
  real, fake = _batch()
  cfg = adv.AdvLossConfig(start=10, weight=0.2, diffaug=False, lecam_weight=0.001, cr_weight=4.0)
  ema0 = {"real": jnp.float32(0.3), "fake": jnp.float32(-0.1)}
  k = key(5)

  @jax.jit
  def run(real, fake, k):
    out = adv.discriminator_step_loss(PARAMS, STATE, toy_disc, real, fake, k, 12, ema0, cfg)
    # Documented key schedule: split(key, 8) = aug_r, aug_f, d_r, d_f, strong_r, strong_f, ...
    keys = jax.random.split(k, 8)
    strong = (
      diff_augment(real, keys[4], cfg.cr_policy, 1.0),
      diff_augment(fake, keys[5], cfg.cr_policy, 1.0),
    )
    return out, strong

  (loss, (state, ema, m)), (rs, fs) = run(real, fake, k)
  rs, fs = np.asarray(rs), np.asarray(fs)
  assert int(state["calls"]) == 4  # D(real), D(fake), D(real_strong), D(fake_strong)
  lr = 1.5 * np.asarray(real)[..., 0] - 0.2
  lf = 1.5 * np.asarray(fake)[..., 0] - 0.2
  er = 0.999 * 0.3 + 0.001 * lr.mean()  # the EMA is updated before the LeCam term
  ef = 0.999 * -0.1 + 0.001 * lf.mean()
  np.testing.assert_allclose([float(ema["real"]), float(ema["fake"])], [er, ef], rtol=1e-5)
  lecam = (np.maximum(lr - ef, 0) ** 2).mean() + (np.maximum(er - lf, 0) ** 2).mean()
  hinge = 0.5 * (np.maximum(1 - lr, 0).mean() + np.maximum(1 + lf, 0).mean())
  cr = np.mean(
    (np.concatenate([lr, lf]) - np.concatenate([1.5 * rs[..., 0] - 0.2, 1.5 * fs[..., 0] - 0.2]))
    ** 2
  )
  expect = 0.2 * (0.001 * lecam + hinge) + 4.0 * cr  # the CR term is not scaled by disc_weight
  np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
  np.testing.assert_allclose(float(m["cr_loss"]), cr, rtol=1e-5)
  np.testing.assert_allclose(float(m["lecam_loss"]), lecam, rtol=1e-5)
  np.testing.assert_allclose(float(m["disc_loss"]), hinge, rtol=1e-5)


def test_discriminator_step_before_start_is_zero_and_ema_still_updates():
  real, fake = _batch()
  cfg = adv.AdvLossConfig(start=100, weight=0.2, diffaug=False, cr_weight=4.0)
  ema0 = adv.init_lecam_ema()

  def f(p):
    return adv.discriminator_step_loss(p, STATE, toy_disc, real, fake, key(2), 99, ema0, cfg)

  (loss, (_, ema, _)), g = jax.jit(jax.value_and_grad(f, has_aux=True))(PARAMS)
  assert float(loss) == 0.0 and float(g["a"]) == 0.0 and float(g["b"]) == 0.0
  assert float(ema["real"]) != 0.0
  # No LeCam / CR: two D calls, loss = w_d * hinge.
  cfg2 = adv.AdvLossConfig(start=0, weight=0.5, diffaug=False, lecam_weight=None, cr_weight=0.0)
  loss, (state, ema2, m) = jax.jit(
    lambda: adv.discriminator_step_loss(PARAMS, STATE, toy_disc, real, fake, key(2), 1, ema0, cfg2)
  )()
  assert int(state["calls"]) == 2 and "lecam_loss" not in m and "cr_loss" not in m
  assert float(ema2["real"]) == 0.0
  np.testing.assert_allclose(float(loss), 0.5 * float(m["disc_loss"]), rtol=1e-6)


def test_discriminator_step_stops_gradient_to_images():
  real, fake = _batch()
  cfg = adv.AdvLossConfig(start=0)
  g = jax.jit(
    jax.grad(
      lambda f: adv.discriminator_step_loss(
        PARAMS, STATE, toy_disc, real, f, key(3), 1, adv.init_lecam_ema(), cfg
      )[0]
    )
  )(fake)
  assert float(jnp.abs(g).sum()) == 0.0


def test_generator_adv_loss():
  _, fake = _batch()
  cfg = adv.AdvLossConfig(diffaug=False)
  g_adv, (state, m) = adv.generator_adv_loss(PARAMS, STATE, toy_disc, fake, key(4), cfg)
  np.testing.assert_allclose(
    float(g_adv), -(1.5 * np.asarray(fake)[..., 0] - 0.2).mean(), rtol=1e-5
  )
  assert int(state["calls"]) == 1
  g = jax.grad(lambda f: adv.generator_adv_loss(PARAMS, STATE, toy_disc, f, key(4), cfg)[0])(fake)
  np.testing.assert_allclose(np.asarray(g)[..., 0], np.full((2, 8, 8), -1.5 / 128), rtol=1e-5)
  cfg_ns = adv.AdvLossConfig(diffaug=False, g_loss="non-saturating")
  g_ns, _ = adv.generator_adv_loss(PARAMS, STATE, toy_disc, fake, key(4), cfg_ns)
  np.testing.assert_allclose(
    float(g_ns), softplus(-(1.5 * np.asarray(fake)[..., 0] - 0.2)).mean(), rtol=1e-5
  )
  # Through DiffAugment the gradient still reaches the images.
  cfg_aug = adv.AdvLossConfig(diffaug=True, diffaug_prob=1.0)
  g = jax.jit(
    jax.grad(lambda f: adv.generator_adv_loss(PARAMS, STATE, toy_disc, f, key(4), cfg_aug)[0])
  )(fake)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_jitted_steps_with_patchgan():
  """A G pass + D step with a real (tiny) PatchGAN: finite, state threaded, params move (CR and
  DiffAugment off to keep the compile short; they are covered with the toy discriminator)."""
  d = PatchGANDiscriminator(ndf=4, n_layers=2)
  real, fake = _batch()
  real = jnp.tile(real, (1, 2, 3, 1))  # 16 x 24: a non-square input -> (2, 2, 4, 1) logits
  fake = jnp.tile(fake, (1, 2, 3, 1))
  params, state = jax.jit(lambda k: init_discriminator(d, k, real))(key(6))
  apply = make_disc_apply(d)
  cfg = adv.AdvLossConfig(start=0, cr_weight=0.0, diffaug=False)

  @jax.jit
  def step(params, state, ema, real, fake):
    (g_adv, (state, _)), g_fake = jax.value_and_grad(
      lambda f: adv.generator_adv_loss(params, state, apply, f, key(7), cfg), has_aux=True
    )(fake)
    (loss, (state, ema, m)), grads = jax.value_and_grad(adv.discriminator_step_loss, has_aux=True)(
      params, state, apply, real, fake, key(8), 1, ema, cfg
    )
    return g_adv, g_fake, loss, grads, state, ema

  g_adv, g_fake, loss, grads, new_state, ema = step(params, state, adv.init_lecam_ema(), real, fake)
  for v in (g_adv, loss, ema["real"]):
    assert np.isfinite(float(v))
  assert float(jnp.abs(g_fake).sum()) > 0
  assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["conv_1"]["kernel"]).sum()) > 0
  # The 3 forward passes advanced the running means.
  assert float(jnp.abs(new_state["batch_stats"]["norm_1"]["mean"]).sum()) > 0
