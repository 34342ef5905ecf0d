"""The whole tokenizer objective as pure functions (SPEC §1.4; README "The training objective").

  L_G = rec_weight * rec + w_p(t) * LPIPS + quantizer_loss + align_weight * (-cos(MLP(z_q), T))
        + w_d(t) * adaptive * g_adv
  L_D = w_d(t) * d_loss + w_d(t) * lecam_weight * LeCam + [t >= start] * cr_weight * CR

with t the 1-based step, w_p(t) = perceptual_weight * min(1, t / perceptual_warmup) and
w_d(t) = disc weight * [t >= disc start]. Each loss is the sum of a list of named, weighted terms
`(name, weight, value)`, summed in list order; every value, the time-varying weights
(`perceptual_weight`, `gan/g_weight`) and the total (`loss`, `gan/d_total`) come back as metrics
under their TensorBoard tags, so adding a term is one entry in the list.

Nothing here reads a config, a mesh or a file. `TokenizerObjective` holds the static weights and
hyper-parameters (training/tokenizer.py `objective_from_config` builds it from the `loss` config
section); the frozen networks come in as arrays: LPIPS params (`weights.lpips`, or a random init
of `models.frozen.vgg.LPIPS`) and the alignment teacher's patch features (B, N, C) (e.g.
`models.frozen.dinov2.teacher_features`); the discriminator as `Discriminator(apply, params,
state)` with `apply(params, state, x, key) -> (logits, new_state)`
(`models.discriminators.make_disc_apply`). All randomness is an explicit key: `adv_key` draws the
generator pass's DiffAugment and the discriminator's own randomness (the DINO trunk's crop),
`align_key` the 'avg_1d_shuffle' permutation, and `discriminator_loss`'s `key` its augmentations
(key schedule in `adversarial.discriminator_step_loss`). The tokenizer's own sampling (KL
posterior, SoftVQ has none) happens in the model forward, before `x_rec` and `info` reach here.

The quantizer's regularisers (SoftVQ entropy, VQ codebook + commitment, KL) stay inside the
quantizer module: they need its codebook and pre-quantisation latents, which only the module
holds. They arrive already weighted in its `info` dict, and `info["quantizer_loss"]` enters L_G as
one term of weight 1. It already contains the entropy term, so `info["entropy_loss"]` is logged on
its own but not added a second time.

Usage (inside the jitted step; TokenizerTask._loss is the full version):
  obj = TokenizerObjective(perceptual_weight=1.0, perceptual_warmup=10_000, gan=AdvLossConfig())
  loss, (metrics, aux) = generator_loss(obj, x, x_rec, info, step, lpips_params=lpips,
                                        disc=Discriminator(d_apply, d_params, d_state), adv_key=k)
  (d_loss, (d_metrics, d_aux)), d_grads = jax.value_and_grad(
      discriminator_loss, argnums=1, has_aux=True)(obj, d_params, aux["disc_state"], d_apply,
                                                   x, x_rec, step, lecam_ema, k_d)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from softvq_jax.models.projector import check_mode
from softvq_jax.objectives import adversarial, alignment, perceptual
from softvq_jax.objectives.reconstruction import check_rec_type, reconstruction_loss
from softvq_jax.objectives.terms import Term, weighted_sum

# Time-varying weights are logged under their own tags.
WEIGHT_TAGS = {"perceptual_loss": "perceptual_weight", "gan/gen_adv_loss": "gan/g_weight"}


class Discriminator(NamedTuple):
  """The discriminator as the generator objective sees it (its params are not trained there)."""

  apply: adversarial.DiscApply  # (params, state, x, key) -> (logits, new_state)
  params: Any
  state: Any  # BatchNorm / spectral-norm collections, threaded through the calls


@dataclasses.dataclass(frozen=True)
class TokenizerObjective:
  """Static weights and hyper-parameters of the tokenizer objective (config section `loss`).

  A term is on when its weight is > 0 (`gan` None or gan.weight 0: no adversarial term and no
  discriminator step). `adaptive_weight` scales the GAN weight by `adaptive_gan_weight`.
  """

  rec_type: str = "l2"  # 'l2' | 'l1'
  rec_weight: float = 1.0
  perceptual_weight: float = 0.0
  perceptual_warmup: int = 0  # linear ramp length in steps; 0: constant weight
  gan: adversarial.AdvLossConfig | None = None
  adaptive_weight: bool = False
  align_weight: float = 0.0
  align_mode: str = "repeat"  # 'repeat' | 'global' | 'avg_1d' | 'avg_1d_shuffle'

  def __post_init__(self):
    check_rec_type(self.rec_type)
    check_mode(self.align_mode)

  @property
  def use_lpips(self) -> bool:
    return self.perceptual_weight > 0

  @property
  def use_gan(self) -> bool:
    return self.gan is not None and self.gan.weight > 0

  @property
  def use_align(self) -> bool:
    return self.align_weight > 0


def _need(value, what: str, why: str):
  if value is None:
    raise ValueError(f"tokenizer objective: {what} is needed when {why}")
  return value


def nll_terms(
  obj: TokenizerObjective,
  x: jax.Array,
  x_rec: jax.Array,
  step,
  lpips_params: Any = None,
  lpips_feats: Any = None,
) -> list[Term]:
  """The reconstruction terms: rec_loss (rec_weight) and, if on, perceptual_loss (w_p(step)).

  Their weighted sum is what the adaptive GAN weight balances g_adv against (`nll_loss`).
  `lpips_feats`: `perceptual.real_features(lpips_params, x)` if already computed (else here).
  """
  terms = [("rec_loss", obj.rec_weight, reconstruction_loss(x, x_rec, obj.rec_type))]
  if obj.use_lpips:
    params = _need(lpips_params, "lpips_params", "perceptual_weight > 0")
    if lpips_feats is None:
      lpips_feats = perceptual.real_features(params, x)
    w_p = perceptual.perceptual_weight_at(step, obj.perceptual_weight, obj.perceptual_warmup)
    p_loss = perceptual.lpips_loss(params, x, x_rec, x_feats=lpips_feats)
    terms.append(("perceptual_loss", w_p, p_loss))
  return terms


def nll_loss(obj, x, x_rec, step, lpips_params=None, lpips_feats=None) -> jax.Array:
  """rec_weight * rec + w_p(step) * LPIPS, a float32 scalar."""
  return weighted_sum(nll_terms(obj, x, x_rec, step, lpips_params, lpips_feats))


def generator_loss(
  obj: TokenizerObjective,
  x: jax.Array,
  x_rec: jax.Array,
  info: Mapping[str, Any],
  step: jax.Array | int,
  *,
  lpips_params: Any = None,
  lpips_feats: Any = None,
  z_proj: jax.Array | None = None,
  teacher: jax.Array | None = None,
  align_key: jax.Array | None = None,
  disc: Discriminator | None = None,
  adv_key: jax.Array | None = None,
  adaptive: jax.Array | None = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
  """The tokenizer (generator) loss L_G of one step; differentiable w.r.t. x_rec and z_proj.

  x, x_rec: (B, H, W, 3) images in [-1, 1]; info: the quantizer's dict ("quantizer_loss",
  optionally "entropy_loss"); step: 1-based. Needed only when the term is on:
    lpips_params  frozen LPIPS pytree {"vgg", "lin"}                 (perceptual_weight > 0)
    lpips_feats   optional perceptual.real_features(lpips_params, x), reused if given
    z_proj        projector output (B, L or 1, C) from AlignProjector (align_weight > 0)
    teacher       frozen teacher patch features (B, N, C)             (align_weight > 0)
    align_key     PRNG key                                            ('avg_1d_shuffle' only)
    disc, adv_key the discriminator and a PRNG key (DiffAugment, D)  (GAN on)
    adaptive      the adaptive weight from `adaptive_gan_weight`      (obj.adaptive_weight)
  Returns (loss, (metrics, aux)), the form `jax.value_and_grad(..., has_aux=True)` takes:
  metrics = every term's value by name, the weights in WEIGHT_TAGS, entropy_loss and `loss`;
  aux = {"weights": {name: weight}, "disc_state": D state after the G pass (None without GAN)}.
  """
  terms = nll_terms(obj, x, x_rec, step, lpips_params, lpips_feats)
  terms.append(("quantizer_loss", 1.0, info["quantizer_loss"]))
  metrics = {}
  if "entropy_loss" in info:
    metrics["entropy_loss"] = info["entropy_loss"]  # a part of quantizer_loss
  if obj.use_align:
    z = _need(z_proj, "z_proj", "align_weight > 0")
    t = _need(teacher, "teacher features", "align_weight > 0")
    terms.append(
      ("align_loss", obj.align_weight, alignment.alignment_loss(z, t, obj.align_mode, align_key))
    )
  disc_state = None
  if obj.use_gan:
    d = _need(disc, "disc", "the GAN term is on")
    k = _need(adv_key, "adv_key", "the GAN term is on")
    g_adv, (disc_state, m) = adversarial.generator_adv_loss(
      d.params, d.state, d.apply, x_rec, k, obj.gan
    )
    w = adversarial.disc_weight_at(step, obj.gan.start, obj.gan.weight)
    if obj.adaptive_weight:
      w = w * jax.lax.stop_gradient(_need(adaptive, "adaptive", "adaptive_weight is set"))
    terms.append(("gan/gen_adv_loss", w, g_adv))
    metrics["gan/logits_fake_g"] = m["logits_fake_g"]
  loss = weighted_sum(terms)
  metrics.update({name: v for name, _, v in terms})
  metrics.update({WEIGHT_TAGS[name]: w for name, w, _ in terms if name in WEIGHT_TAGS})
  metrics["loss"] = loss
  weights = {name: jnp.asarray(w, jnp.float32) for name, w, _ in terms}
  return loss, (metrics, {"weights": weights, "disc_state": disc_state})


def adaptive_gan_weight(
  obj: TokenizerObjective,
  reconstruct: Callable[[Any], jax.Array],
  params: Any,
  last_layer: Sequence[str],
  x: jax.Array,
  step: jax.Array | int,
  *,
  disc: Discriminator,
  adv_key: jax.Array,
  lpips_params: Any = None,
  lpips_feats: Any = None,
) -> jax.Array:
  """||d nll / d W|| / (||d g_adv / d W|| + 1e-4), clamped to [0, 1e4], without gradient.

  W = params[last_layer[0]][last_layer[1]]... (the decoder's last kernel, as the reference);
  `reconstruct(params) -> x_rec` is the tokenizer forward with its sampling key fixed; nll and
  g_adv are computed exactly as in `generator_loss` (same step, D state and adv_key).
  """

  def nll_fn(p):
    return nll_loss(obj, x, reconstruct(p), step, lpips_params, lpips_feats)

  def adv_fn(p):
    return adversarial.generator_adv_loss(
      disc.params, disc.state, disc.apply, reconstruct(p), adv_key, obj.gan
    )[0]

  def pick(tree):
    for name in last_layer:
      tree = tree[name]
    return tree

  return adversarial.adaptive_weight(pick(jax.grad(nll_fn)(params)), pick(jax.grad(adv_fn)(params)))


def discriminator_loss(
  obj: TokenizerObjective,
  d_params: Any,
  d_state: Any,
  disc_apply: adversarial.DiscApply,
  real: jax.Array,
  fake: jax.Array,
  step: jax.Array | int,
  lecam_ema: Mapping[str, jax.Array],
  key: jax.Array,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
  """The discriminator loss L_D of one step; differentiate w.r.t. d_params (argnums=1).

  real, fake: (B, H, W, 3) images in [-1, 1], stop-gradient'ed; step: 1-based; lecam_ema: the
  LeCam EMA state (`adversarial.init_lecam_ema()` at the start). Returns (loss, (metrics, aux)):
  metrics under the "gan/" tags (disc_loss, lecam_loss, cr_loss, logits_real, logits_fake,
  disc_weight, lecam_ema_*, d_total); aux = {"disc_state", "lecam"} (the updated states).
  """
  if not obj.use_gan:
    raise ValueError("tokenizer objective: discriminator_loss needs the GAN term (gan.weight > 0)")
  loss, (state, lecam, m) = adversarial.discriminator_step_loss(
    d_params, d_state, disc_apply, real, fake, key, step, lecam_ema, obj.gan
  )
  return loss, ({f"gan/{k}": v for k, v in m.items()}, {"disc_state": state, "lecam": lecam})
