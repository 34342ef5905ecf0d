"""The tokenizer trainer (SPEC §1.4) on top of the generic loop.

The objective is `objectives.tokenizer` (pure functions, a list of named weighted terms):
L_G = rec_weight * rec + w_p(t) * LPIPS + quantizer terms (entropy) + w_d(t) * adaptive * g_adv
      + align_weight * (-cos(MLP(z_q), DINOv2)),
and a discriminator step on the same (stop-gradient) reconstructions, all in one jitted step. This
task runs the tokenizer, the projector and the frozen teacher and hands their outputs to
`generator_loss` / `discriminator_loss` (via training/gan.py); `objective_from_config` maps the
`loss` config section to the objective's hyper-parameters. The discriminator state lives in
`state.extra["disc"]`; the alignment projector's params in `state.extra["align_proj"]`,
optimised together with the tokenizer (one optimizer state over {"model", "align_proj"}, one
gradient clip, as the reference's single optimizer) but kept out of `state.params` so EMA, export
and inference see the tokenizer only.
Frozen networks (LPIPS-VGG16, the DINO trunk, the DINOv2 teacher; training/frozen_nets.py) are
jit arguments, never trained or checkpointed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax import sharding
from softvq_jax.evaluation import image_metrics
from softvq_jax.models import discriminators
from softvq_jax.models.factory import build_tokenizer
from softvq_jax.models.frozen import dinov2
from softvq_jax.models.projector import AlignProjector
from softvq_jax.objectives import adversarial, perceptual
from softvq_jax.objectives import tokenizer as objective
from softvq_jax.training import eval_batches, frozen_nets, loop, optim
from softvq_jax.training import gan as gan_state
from softvq_jax.training.train_state import TrainState, ema_update
from softvq_jax.utils import images as image_utils


def objective_from_config(loss) -> objective.TokenizerObjective:
  """The tokenizer objective's hyper-parameters from the `loss` config section."""
  return objective.TokenizerObjective(
    rec_type=loss.rec_type,
    rec_weight=loss.rec_weight,
    perceptual_weight=loss.perceptual_weight,
    perceptual_warmup=loss.perceptual_warmup or 0,
    gan=adversarial.AdvLossConfig.from_config(loss.disc),
    adaptive_weight=bool(loss.disc.get("adaptive_weight", False)),
    align_weight=loss.align.weight,
    align_mode=loss.align.mode,
  )


def accumulate_gradients(grad_fn, params, batch: dict, rng: jax.Array, steps: int):
  """Averages (aux, grads) of `grad_fn(params, batch, rng)` over `steps` micro-batches (a scan)."""
  if steps == 1:
    return grad_fn(params, batch, rng)
  micro = jax.tree.map(lambda x: x.reshape(steps, x.shape[0] // steps, *x.shape[1:]), batch)

  def body(carry, inputs):
    i, mb = inputs
    aux, grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, carry, (aux, grads)), None

  zero = jax.tree.map(
    jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
  )
  (aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(steps), micro))
  scale = lambda path, x: x if str(path[-1]).endswith("_counts']") else x / steps
  aux = jax.tree_util.tree_map_with_path(scale, aux)
  return aux, jax.tree.map(lambda g: g / steps, grads)


class TokenizerTask(loop.Task):
  """SoftVQ (or VQ/KL/AE) tokenizer with EMA, AdamW + warm-up/cosine and grad clipping."""

  def __init__(self, config, mesh, total_steps, warmup_steps):
    super().__init__(config, mesh, total_steps, warmup_steps)
    self.model = build_tokenizer(config.model, config.quantizer)
    self.dtype = jnp.dtype(config.model.dtype)
    self.peak_lr = optim.learning_rate(config)
    self.tx, self.schedule = optim.optimizer_from_config(
      config.optim, self.peak_lr, total_steps, warmup_steps
    )
    loss = config.loss
    self.objective = objective_from_config(loss)
    self.use_gan, self.use_align = self.objective.use_gan, self.objective.use_align
    # grad_accum_steps > 1 with the GAN or alignment loss is refused by config/validate.py.
    if self.use_gan:
      self.disc = discriminators.discriminator_from_config(loss.disc, self.dtype)
      # The discriminator has its own optimizer with the same hyper-parameters (reference).
      self.disc_tx, _ = optim.optimizer_from_config(
        config.optim, self.peak_lr, total_steps, warmup_steps
      )
    if self.use_align:
      width = dinov2.teacher_variant(loss.align.teacher_variant)[1]
      self.projector = AlignProjector(hidden=loss.align.proj_dim, out_dim=width)
    # Files were checked by config.validate. Loaded on the host, outside any trace
    # (init_state is traced by eval_shape/jit).
    self._frozen = frozen_nets.load(config)

  def frozen_params(self):
    return self._frozen

  # --- pure ---------------------------------------------------------------------------------
  def init_state(self, rng):
    init_rng, sample_rng, state_rng, disc_rng, proj_rng = jax.random.split(rng, 5)
    s = self.config.model.image_size
    x = jnp.zeros((1, s, s, 3), jnp.float32)
    params = self.model.init({"params": init_rng, "sample": sample_rng}, x)["params"]
    extra = {}
    if self.use_gan:
      xd = jnp.zeros((2, s, s, 3), jnp.float32)
      # Only shapes matter for the heads' init: zeros stand in for the frozen trunk's weights.
      trunk = self._frozen.get("dino")
      trunk = None if trunk is None else jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), trunk)
      extra["disc"] = gan_state.init(self.disc, disc_rng, xd, self.disc_tx, trunk)
    if self.use_align:
      z = jnp.zeros((1, self.config.model.num_latent_tokens, self.config.model.codebook_embed_dim))
      mode = self.config.loss.align.mode
      extra["align_proj"] = self.projector.init(proj_rng, z, mode)["params"]
    state = TrainState.create(params, self.tx, state_rng, extra=extra)
    if self.use_align:
      state = state.replace(opt_state=self.tx.init(self._trainable(state)))
    return state

  def _trainable(self, state):
    """What the tokenizer optimizer updates: the model params (+ the alignment projector)."""
    if self.use_align:
      return {"model": state.params, "align_proj": state.extra["align_proj"]}
    return state.params

  def _model_params(self, trainable):
    return trainable["model"] if self.use_align else trainable

  def _forward(self, params, x, key):
    return self.model.apply({"params": params}, x, train=True, rngs={"sample": key})

  def _loss(self, trainable, batch, rng, frozen, step, disc=None, disc_apply=None):
    """Generator loss; with a discriminator also returns its statistics after the G pass."""
    params = self._model_params(trainable)
    x = batch["image"]
    k_model, k_adv, k_align = jax.random.split(rng, 3)
    x_rec, info = self._forward(params, x, k_model)
    kw = {"lpips_params": frozen.get("lpips")}
    if self.objective.use_lpips:  # x's VGG features once, for every LPIPS term of the step
      kw["lpips_feats"] = perceptual.real_features(kw["lpips_params"], x)
    if self.use_align:
      mode = self.objective.align_mode
      z_proj = self.projector.apply({"params": trainable["align_proj"]}, info["z_q"], mode)
      attn = self.config.model.get("attn_impl", "") or None
      teacher = dinov2.teacher_features(frozen["teacher"], x, dtype=self.dtype, attn_impl=attn)
      kw.update(z_proj=z_proj, teacher=teacher, align_key=k_align)
    if disc is not None:
      d = objective.Discriminator(disc_apply, disc["params"], disc["stats"])
      kw.update(disc=d, adv_key=k_adv)
      if self.objective.adaptive_weight:  # two extra backward passes
        reconstruct = lambda p: self._forward(p, x, k_model)[0]
        kw["adaptive"] = objective.adaptive_gan_weight(
          self.objective,
          reconstruct,
          params,
          self.model.last_layer,
          x,
          step,
          disc=d,
          adv_key=k_adv,
          lpips_params=kw["lpips_params"],
          lpips_feats=kw.get("lpips_feats"),
        )
    loss, (metrics, aux) = objective.generator_loss(self.objective, x, x_rec, info, step, **kw)
    metrics.update({f"quantizer/{k}": v for k, v in info.get("metrics", {}).items()})
    if "code_counts" in info:
      metrics["code_counts"] = info["code_counts"]
    return loss, (metrics, x_rec, aux["disc_state"])

  def train_step(self, state, batch, frozen=None):
    frozen = frozen or {}
    rng = state.step_key()
    k_g, k_d = jax.random.split(rng)
    step = state.step + 1  # 1-based, as the reference's global_step
    extra = dict(state.extra)
    trainable = self._trainable(state)
    if self.use_gan:
      disc_apply = discriminators.make_disc_apply(self.disc, frozen=frozen.get("dino"))
      (_, (metrics, x_rec, stats)), grads = jax.value_and_grad(self._loss, has_aux=True)(
        trainable, batch, k_g, frozen, step, extra["disc"], disc_apply
      )
      disc = dict(extra["disc"], stats=stats)
      extra["disc"], d_metrics = gan_state.update(
        disc, disc_apply, self.disc_tx, batch["image"], x_rec, k_d, step, self.objective
      )
      metrics.update(d_metrics)
    else:

      def grad_fn(params, mb, key):
        (_, (m, _, _)), g = jax.value_and_grad(self._loss, has_aux=True)(
          params, mb, key, frozen, step
        )
        return m, g

      metrics, grads = accumulate_gradients(
        grad_fn, trainable, batch, k_g, self.config.optim.grad_accum_steps
      )
    updates, opt_state = self.tx.update(grads, state.opt_state, trainable)
    trainable = jax.tree.map(lambda p, u: p + u, trainable, updates)
    params = self._model_params(trainable)
    if self.use_align:
      extra["align_proj"] = trainable["align_proj"]
    ema = ema_update(state.ema_params, params, self.config.optim.ema_decay)
    metrics["grad_norm"] = optim_global_norm(grads)
    metrics["lr"] = self.schedule(state.step)
    new_state = state.replace(
      step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state, extra=extra
    )
    return new_state, metrics

  def post_init(self, state):
    """Fresh runs: the encoder from DINOv2 (`model.encoder_init`, as the released models were)
    and the discriminator heads from a converted reference DinoDisc (`loss.disc.init_from`)."""
    state = self._init_disc_from(state)
    path = self.config.model.get("encoder_init", "")
    if not path:
      logging.info("Tokenizer encoder: random init (set model.encoder_init to start from DINOv2)")
      return state
    from softvq_jax.weights import io
    from softvq_jax.weights.dinov2_init import init_encoder_from_dinov2

    sd = io.load_state_dict(path, "DINOv2 encoder weights", "model.encoder_init")
    enc = self.config.model.encoder
    # Host copies gathered from every process (parameters may be sharded across hosts), the
    # DINOv2 weights filled in, then each device given only its slice.
    params = init_encoder_from_dinov2(
      sharding.to_host(state.params),
      sd,
      patch_size=enc.patch_size,
      image_size=self.config.model.image_size,
    )
    params = sharding.place(params, jax.tree.map(lambda x: x.sharding, state.params))
    logging.info("Tokenizer encoder initialised from DINOv2 weights %s", path)
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))

  def _init_disc_from(self, state):
    """Discriminator params and statistics from a `python -m softvq_jax.convert dino-disc` dir."""
    path = self.config.loss.disc.get("init_from", "") if self.use_gan else ""
    if not path:
      return state
    from softvq_jax import checkpointing

    tree, _ = checkpointing.load_model(path)
    want = {k: state.extra["disc"][k] for k in ("params", "stats")}
    shapes = lambda tr: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tr)
    if jax.tree.structure(tree) != jax.tree.structure(want) or shapes(tree) != shapes(want):
      raise ValueError(
        f"loss.disc.init_from={path!r} does not match this discriminator (loss.disc.name="
        f"{self.config.loss.disc.name!r}, dino_variant={self.config.loss.disc.dino_variant!r}); "
        "convert the reference heads with the same sizes (python -m softvq_jax.convert dino-disc)"
      )
    new = sharding.place(sharding.to_host(tree), jax.tree.map(lambda x: x.sharding, want))
    extra = {**state.extra, "disc": {**state.extra["disc"], **new}}
    logging.info("Discriminator heads initialised from %s", path)
    return state.replace(extra=extra)

  def window_metrics(self, sums):
    if "code_counts" not in sums:
      return {}
    counts = sums["code_counts"]  # (nc, K)
    return {
      "quantizer/codebook_usage_window": float(
        np.mean(np.count_nonzero(counts, -1)) / counts.shape[-1]
      )
    }

  # --- evaluation -----------------------------------------------------------------------------
  @functools.cached_property
  def _eval_fn(self):
    """(EMA params, raw params, global batch) -> masked metric sums, reduced over the mesh."""

    def fn(ema, raw, batch):
      x, mask = batch["image"], batch["mask"]
      xu8 = image_metrics.to_uint8(x, jnp)
      sums = {"count": jnp.sum(mask.astype(jnp.float32))}
      masked_sum = lambda v: jnp.sum(jnp.where(mask, v, 0.0))
      for prefix, params in (("ema", ema), ("raw", raw)):
        rec = self.model.apply({"params": params}, x)[0]
        ru8 = image_metrics.to_uint8(rec, jnp)
        sums[f"{prefix}_psnr"] = masked_sum(image_metrics.psnr(xu8, ru8, 255.0))
        sums[f"{prefix}_ssim"] = masked_sum(image_metrics.ssim(xu8, ru8, 255.0))
        sums[f"{prefix}_mse"] = masked_sum(jnp.mean((jnp.clip(rec, -1, 1) - x) ** 2, (1, 2, 3)))
      return sums

    return jax.jit(fn, out_shardings=sharding.replicated(self.mesh))

  def evaluate(self, state, eval_data, step):
    """PSNR/SSIM (uint8, data range 255, as the reference) and MSE in [-1, 1], EMA and raw.

    One pass over the eval split (at most `max_eval_images`), each device reconstructing its
    share of every global batch; sums are reduced in-jit, so every process gets the totals.
    """
    totals: dict[str, float] = {}
    batches = eval_batches.global_eval_batches(eval_data, self.mesh, self.config.max_eval_images)
    for batch in batches:
      sums = jax.device_get(self._eval_fn(state.ema_params, state.params, batch))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    count = max(totals.pop("count", 0.0), 1.0)
    return {f"eval/{k}": v / count for k, v in totals.items()}

  @functools.cached_property
  def _reconstruct(self):
    return jax.jit(
      lambda params, x: jnp.clip(self.model.apply({"params": params}, x)[0], -1, 1),
      out_shardings=sharding.replicated(self.mesh),
    )

  def images(self, state, eval_data, step):
    """Held-out images beside their EMA reconstructions (the first global eval batch)."""
    batch = next(eval_batches.global_eval_batches(eval_data, self.mesh, limit=1))
    rec = np.asarray(self._reconstruct(state.ema_params, batch["image"]))
    x = np.asarray(jax.device_put(batch["image"], sharding.replicated(self.mesh)))
    mask = np.asarray(jax.device_put(batch["mask"], sharding.replicated(self.mesh)))
    n = int(min(self.config.eval.num_images_grid, mask.sum()))
    keep = np.flatnonzero(mask)[:n]
    return {"reconstruction": image_utils.side_by_side(x[keep], rec[keep], ncols=4)}


def optim_global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def train(config, workdir):
  """Entry point used by main: the tokenizer task in the generic loop."""
  logging.info("Tokenizer %s, quantizer %s", config.get("variant", "?"), config.quantizer.name)
  return loop.train(TokenizerTask, config, workdir)
