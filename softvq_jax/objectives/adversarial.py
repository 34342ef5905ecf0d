"""GAN objective of the tokenizer (reference losses/vq_loss.py; REFERENCE_NOTES 6.1-6.2).

Losses on discriminator logits of any shape (means over all elements), LeCam regularisation with
its EMA state, consistency regularisation (CR), the adaptive weight and the disc_start schedule,
plus two pure helpers that run a discriminator step and the generator's adversarial term.

Non-saturating losses: the reference calls BCE-with-logits with (input, target) swapped, which makes
its generator loss softplus(1) - mean(D(fake)) (a shifted hinge loss) and its D fake term the
constant log 2 (no gradient). Here they are written the right way round:
G = mean softplus(-D(fake)); D = 0.5 (mean softplus(-D(real)) + mean softplus(D(fake))), which is
identical to the 'vanilla' D loss.

A discriminator is passed as `disc_apply(params, state, x, key) -> (logits, new_state)` (see
softvq_jax.models.discriminators.make_disc_apply); `state` holds its BatchNorm / spectral-norm
collections and is threaded through consecutive calls in the order the reference makes them.

The whole tokenizer objective (objectives/tokenizer.py) uses the two helpers (step is 1-based,
as the reference's global_step):
  disc_apply = make_disc_apply(disc, frozen=dino_params)   # inside jit; frozen = jit argument
  # G: g_adv, (d_state, m) = generator_adv_loss(d_params, d_state, disc_apply, x_hat, k_g, cfg)
  #    loss_G += adaptive * disc_weight_at(step, cfg.start, cfg.weight) * g_adv
  # D: (loss_D, (d_state, lecam_ema, m)), d_grads = jax.value_and_grad(
  #      discriminator_step_loss, has_aux=True)(d_params, d_state, disc_apply, x, x_hat, k_d,
  #      step, lecam_ema, cfg)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from softvq_jax.objectives.diffaug import diff_augment
from softvq_jax.objectives.terms import weighted_sum
from softvq_jax.utils.config_access import cfg_get

DiscApply = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
  real, fake = _f32(logits_real), _f32(logits_fake)
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean softplus(-D(real)) + mean softplus(D(fake)))."""
  real, fake = _f32(logits_real), _f32(logits_fake)
  return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))


def non_saturating_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (BCE(D(real), 1) + BCE(D(fake), 0)) with logits as the input (== vanilla_d_loss)."""
  real, fake = _f32(logits_real), _f32(logits_fake)
  bce_real = optax.sigmoid_binary_cross_entropy(real, jnp.ones_like(real))
  bce_fake = optax.sigmoid_binary_cross_entropy(fake, jnp.zeros_like(fake))
  return 0.5 * (jnp.mean(bce_real) + jnp.mean(bce_fake))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """-mean D(fake)."""
  return -jnp.mean(_f32(logits_fake))


def non_saturating_g_loss(logits_fake: jax.Array) -> jax.Array:
  """BCE(D(fake), 1) = mean softplus(-D(fake))."""
  fake = _f32(logits_fake)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(fake, jnp.ones_like(fake)))


D_LOSSES = {
  "hinge": hinge_d_loss,
  "vanilla": vanilla_d_loss,
  "non-saturating": non_saturating_d_loss,
  "non_saturating": non_saturating_d_loss,
}
G_LOSSES = {
  "hinge": hinge_g_loss,
  "non-saturating": non_saturating_g_loss,
  "non_saturating": non_saturating_g_loss,
}


def init_lecam_ema() -> dict[str, jax.Array]:
  """LeCam EMA state (a pytree for the train state): both EMAs start at 0."""
  return {"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32)}


def update_lecam_ema(
  ema: Mapping[str, jax.Array], logits_real: jax.Array, logits_fake: jax.Array, decay: float = 0.999
) -> dict[str, jax.Array]:
  """ema <- decay * ema + (1 - decay) * mean(logits), gradient-free (reference `.item()`)."""
  mr = jax.lax.stop_gradient(jnp.mean(_f32(logits_real)))
  mf = jax.lax.stop_gradient(jnp.mean(_f32(logits_fake)))
  return {
    "real": ema["real"] * decay + mr * (1.0 - decay),
    "fake": ema["fake"] * decay + mf * (1.0 - decay),
  }


def lecam_loss(
  logits_real: jax.Array, logits_fake: jax.Array, ema_real: jax.Array, ema_fake: jax.Array
) -> jax.Array:
  """mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2)."""
  ema_real, ema_fake = jax.lax.stop_gradient(ema_real), jax.lax.stop_gradient(ema_fake)
  real, fake = _f32(logits_real), _f32(logits_fake)
  return jnp.mean(jnp.square(jax.nn.relu(real - ema_fake))) + jnp.mean(
    jnp.square(jax.nn.relu(ema_real - fake))
  )


def consistency_loss(
  d_plain: jax.Array | Sequence[jax.Array], d_aug: jax.Array | Sequence[jax.Array]
) -> jax.Array:
  """MSE between D outputs on plain and augmented inputs; sequences are concatenated on axis 0."""
  if isinstance(d_plain, list | tuple):
    d_plain = jnp.concatenate([_f32(a) for a in d_plain], axis=0)
  if isinstance(d_aug, list | tuple):
    d_aug = jnp.concatenate([_f32(a) for a in d_aug], axis=0)
  return jnp.mean(jnp.square(_f32(d_plain) - _f32(d_aug)))


def adaptive_weight(
  nll_grad: Any, g_grad: Any, eps: float = 1e-4, max_value: float = 1e4
) -> jax.Array:
  """||grad nll|| / (||grad g_adv|| + eps) at the last decoder layer, clamped to [0, max], no grad.

  The gradients may be arrays or pytrees (global L2 norm over all leaves); the reference uses
  the weight of the decoder's last (to-pixel) layer only.
  """
  w = optax.tree.norm(nll_grad) / (optax.tree.norm(g_grad) + eps)
  return jax.lax.stop_gradient(jnp.clip(_f32(w), 0.0, max_value))


def disc_weight_at(step: jax.Array | int, disc_start: int, weight: float) -> jax.Array:
  """weight if step >= disc_start else 0 (reference adopt_weight; step is 1-based there)."""
  return jnp.where(jnp.asarray(step) >= disc_start, jnp.float32(weight), jnp.float32(0.0))


@dataclasses.dataclass(frozen=True)
class AdvLossConfig:
  """Static hyper-parameters of the GAN objective (config section `loss.disc`)."""

  d_loss: str = "hinge"
  g_loss: str = "hinge"
  weight: float = 0.2
  start: int = 20_000
  diffaug: bool = True
  diffaug_policy: str = "color,translation,cutout_0.2"
  diffaug_prob: float = 0.5
  lecam_weight: float | None = 0.001  # None or 0 -> no LeCam (and no EMA update)
  lecam_decay: float = 0.999
  cr_weight: float = 4.0  # 0 -> no consistency regularisation
  cr_policy: str = "color,translation,cutout_0.5"

  def __post_init__(self):
    if self.d_loss not in D_LOSSES:
      raise ValueError(f"loss.disc.loss: unknown {self.d_loss!r}, choose from {sorted(D_LOSSES)}")
    if self.g_loss not in G_LOSSES:
      raise ValueError(
        f"loss.disc.gen_loss: unknown {self.g_loss!r}, choose from {sorted(G_LOSSES)}"
      )

  @classmethod
  def from_config(cls, disc: Any) -> AdvLossConfig:
    """From the `loss.disc` ConfigDict (or a dict); missing keys keep the defaults above."""
    get = lambda key, default: cfg_get(disc, key, default)
    d = cls()
    return cls(
      d_loss=get("loss", d.d_loss),
      g_loss=get("gen_loss", d.g_loss),
      weight=float(get("weight", d.weight)),
      start=int(get("start", d.start)),
      diffaug=bool(get("diffaug", d.diffaug)),
      diffaug_policy=get("diffaug_policy", d.diffaug_policy),
      diffaug_prob=float(get("diffaug_prob", d.diffaug_prob)),
      lecam_weight=get("lecam_weight", d.lecam_weight),
      lecam_decay=float(get("lecam_decay", d.lecam_decay)),
      cr_weight=float(get("cr_weight", d.cr_weight) or 0.0),
      cr_policy=get("cr_policy", d.cr_policy),
    )


def discriminator_step_loss(
  d_params: Any,
  d_state: Any,
  disc_apply: DiscApply,
  real: jax.Array,
  fake: jax.Array,
  key: jax.Array,
  step: jax.Array | int,
  lecam_ema: Mapping[str, jax.Array],
  cfg: AdvLossConfig,
) -> tuple[jax.Array, tuple[Any, dict, dict]]:
  """The discriminator loss of one step (reference VQLoss optimizer_idx=1).

  real, fake: (B, H, W, C) images in [-1, 1] (both stop-gradient'ed here). Differentiate w.r.t.
  d_params with has_aux=True. Returns loss, (new d_state, new lecam_ema, metrics).
    D_r = D(aug(real)), D_f = D(aug(fake))      (independent DiffAugment draws) if cfg.diffaug
    L = sum of the (name, weight, value) terms, each also a metric:
      disc_loss   w_d                    d_loss(D_r, D_f)
      lecam_loss  w_d * lecam_weight     LeCam(D_r, D_f) (its EMAs updated first)
      cr_loss     [step >= start] * cr_weight
                                         MSE([D_r, D_f], [D(aug_s(real)), D(aug_s(fake))])
  where w_d = weight * [step >= start] and aug_s uses cfg.cr_policy with prob 1.
  Keys: split(key, 8) = aug real, aug fake, D real, D fake, strong-aug real, strong-aug fake,
  D strong real, D strong fake (the D keys drive the DINO trunk's random crop).
  """
  real = jax.lax.stop_gradient(real)
  fake = jax.lax.stop_gradient(fake)
  ka_r, ka_f, kd_r, kd_f, ks_r, ks_f, kds_r, kds_f = jax.random.split(key, 8)
  if cfg.diffaug:
    in_r = diff_augment(real, ka_r, cfg.diffaug_policy, cfg.diffaug_prob)
    in_f = diff_augment(fake, ka_f, cfg.diffaug_policy, cfg.diffaug_prob)
  else:
    in_r, in_f = real, fake
  logits_r, d_state = disc_apply(d_params, d_state, in_r, kd_r)
  logits_f, d_state = disc_apply(d_params, d_state, in_f, kd_f)

  w_d = disc_weight_at(step, cfg.start, cfg.weight)
  adv = D_LOSSES[cfg.d_loss](logits_r, logits_f)
  terms = [("disc_loss", w_d, adv)]  # (name, weight, value); the loss is their weighted sum
  metrics = {
    "logits_real": jnp.mean(_f32(logits_r)),
    "logits_fake": jnp.mean(_f32(logits_f)),
    "disc_weight": w_d,
  }
  if cfg.lecam_weight:
    lecam_ema = update_lecam_ema(lecam_ema, logits_r, logits_f, cfg.lecam_decay)
    lecam = lecam_loss(logits_r, logits_f, lecam_ema["real"], lecam_ema["fake"])
    terms.append(("lecam_loss", w_d * cfg.lecam_weight, lecam))
    metrics.update(lecam_ema_real=lecam_ema["real"], lecam_ema_fake=lecam_ema["fake"])
  if cfg.cr_weight:
    logits_rs, d_state = disc_apply(
      d_params, d_state, diff_augment(real, ks_r, cfg.cr_policy, 1.0), kds_r
    )
    logits_fs, d_state = disc_apply(
      d_params, d_state, diff_augment(fake, ks_f, cfg.cr_policy, 1.0), kds_f
    )
    cr = consistency_loss([logits_r, logits_f], [logits_rs, logits_fs])
    cr_w = jnp.where(jnp.asarray(step) >= cfg.start, jnp.float32(cfg.cr_weight), jnp.float32(0.0))
    terms.append(("cr_loss", cr_w, cr))
  loss = weighted_sum(terms)
  metrics.update({name: v for name, _, v in terms}, d_total=loss)
  return loss, (d_state, dict(lecam_ema), metrics)


def generator_adv_loss(
  d_params: Any,
  d_state: Any,
  disc_apply: DiscApply,
  fake: jax.Array,
  key: jax.Array,
  cfg: AdvLossConfig,
) -> tuple[jax.Array, tuple[Any, dict]]:
  """Unweighted generator adversarial loss g_loss(D(aug(fake))) (reference optimizer_idx=0).

  Gradients flow to `fake` (and to d_params, which the generator step ignores). The trainer adds
  adaptive * disc_weight_at(step, start, weight) * g_adv to the generator loss (the term is
  computed, and multiplied by 0, before disc_start, as the reference). Returns g_adv,
  (new d_state, metrics).
  """
  ka, kd = jax.random.split(key)
  x = diff_augment(fake, ka, cfg.diffaug_policy, cfg.diffaug_prob) if cfg.diffaug else fake
  logits, d_state = disc_apply(d_params, d_state, x, kd)
  g_adv = G_LOSSES[cfg.g_loss](logits)
  return g_adv, (d_state, {"gen_adv_loss": g_adv, "logits_fake_g": jnp.mean(_f32(logits))})
