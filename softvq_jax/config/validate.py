"""The one config validator: every check, reading the registries of the layers below."""

from __future__ import annotations

from ml_collections import ConfigDict


class ConfigError(ValueError):
  """A config value is invalid; raised before anything compiles."""


def validate(config: ConfigDict) -> None:
  """Checks the whole config; raises ConfigError naming the key and the fix."""

  def need(cond: bool, msg: str):
    if not cond:
      raise ConfigError(msg)

  from softvq_jax.training.registry import TRAINERS

  need(
    config.get("trainer") in TRAINERS,
    f"trainer={config.get('trainer')!r}; known: {sorted(TRAINERS)}",
  )
  need(config.batch_size > 0, f"batch_size={config.batch_size} must be positive")
  need(config.total_steps >= 0, "total_steps must be >= 0 (0: use total_epochs)")
  need(config.total_steps > 0 or config.total_epochs > 0, "set total_steps or total_epochs > 0")
  need(config.get("stop_after", 0) >= 0, "stop_after must be >= 0 (0: run to the end)")
  for key in ("log_every", "eval_every", "image_every"):
    need(config[key] > 0, f"{key}={config[key]} must be positive")
  o = config.optim
  need(o.name in ("adamw", "adam"), f"optim.name={o.name!r}; use 'adamw' or 'adam'")
  need(o.lr > 0, f"optim.lr={o.lr} must be positive")
  need(o.schedule in ("cosine", "constant"), f"optim.schedule={o.schedule!r}; cosine|constant")
  need(0 <= o.ema_decay < 1, f"optim.ema_decay={o.ema_decay} must be in [0, 1)")
  need(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
  need(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
  need(o.grad_accum_steps >= 1, "optim.grad_accum_steps must be >= 1")
  need(
    config.batch_size % o.grad_accum_steps == 0,
    f"batch_size={config.batch_size} must be divisible by optim.grad_accum_steps",
  )
  from softvq_jax.data import DATASETS

  need(config.data.name in DATASETS, f"data.name={config.data.name!r}; known: {DATASETS}")
  mcf = config.data.get("min_crop_frac", 0.8)
  need(0 < mcf <= 1, f"data.min_crop_frac={mcf} must be in (0, 1]")
  if config.data.name == "folder":
    need(bool(config.data.path), "data.name='folder' needs --config.data.path=/path/to/images")
  need(config.mesh.fsdp >= 1, "mesh.fsdp must be >= 1")
  if config.trainer in ("sit", "dit"):
    _validate_generator(config, need)
  if config.trainer == "tokenizer":
    from softvq_jax.models.factory import validate_tokenizer_config

    try:
      validate_tokenizer_config(config.model, config.quantizer)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    need(config.loss.rec_type in ("l2", "l1"), f"loss.rec_type={config.loss.rec_type!r}; l2|l1")
    loss = config.loss
    need(loss.perceptual_weight >= 0, "loss.perceptual_weight must be >= 0")
    need(loss.disc.weight >= 0, "loss.disc.weight must be >= 0")
    need(loss.align.weight >= 0, "loss.align.weight must be >= 0")
    from softvq_jax.models.discriminators import DISCRIMINATORS

    need(
      loss.disc.name in DISCRIMINATORS,
      f"loss.disc.name={loss.disc.name!r}; known: {sorted(DISCRIMINATORS)}",
    )
    modes = ("repeat", "global", "avg_1d", "avg_1d_shuffle")
    need(loss.align.mode in modes, f"loss.align.mode={loss.align.mode!r}; known: {modes}")
    if loss.align.weight > 0:
      from softvq_jax.models.frozen.dinov2 import TEACHER_VARIANTS

      need(
        loss.align.teacher_variant in TEACHER_VARIANTS,
        f"loss.align.teacher_variant={loss.align.teacher_variant!r}; known: "
        f"{sorted(TEACHER_VARIANTS)}",
      )
      grid = config.model.image_size // loss.align.teacher_patch_size
      need(
        loss.align.mode != "repeat" or (grid * grid) % config.model.num_latent_tokens == 0,
        f"loss.align.mode='repeat' needs the teacher token count ({grid}x{grid}) to be a multiple "
        f"of model.num_latent_tokens={config.model.num_latent_tokens}; use mode 'avg_1d'",
      )
    if config.model.get("encoder_init"):
      from softvq_jax.weights.io import require_file

      require_file(config.model.encoder_init, "DINOv2 encoder weights", "model.encoder_init")
    from softvq_jax.training import frozen_nets

    try:
      frozen_nets.check_files(config)  # each missing weight file, naming it and its config key
    except ValueError as e:
      raise ConfigError(str(e)) from e


def _validate_generator(config: ConfigDict, need) -> None:
  from softvq_jax.models.sit import SIT_VARIANTS
  from softvq_jax.objectives import transport

  m, t = config.model, config.transport
  need(m.name == config.trainer, f"model.name={m.name!r} must equal trainer={config.trainer!r}")
  need(m.variant in SIT_VARIANTS, f"model.variant={m.variant!r}; known: {sorted(SIT_VARIANTS)}")
  need(m.patch_size == 1, "model.patch_size must be 1 for 1-D tokens (2-D latents: use the API)")
  need(0 <= m.class_dropout_prob < 1, "model.class_dropout_prob must be in [0, 1)")
  need(m.dtype in ("float32", "bfloat16", "float16"), f"model.dtype={m.dtype!r}")
  need(m.latent_stats in ("cache", "tokenizer"), "model.latent_stats: cache | tokenizer")
  need(
    config.data.name in ("latents", "latents_online"),
    f"data.name={config.data.name!r}: generators train on latents (latents | latents_online)",
  )
  if config.data.name == "latents":
    need(
      bool(config.data.path),
      "data.name='latents' needs --config.data.path=/path/to/cache "
      "(create it with python -m softvq_jax.data.cache_latents)",
    )
  need(t.path in transport.PATHS, f"transport.path={t.path!r}; known: {transport.PATHS}")
  need(
    t.prediction == "v",
    f"transport.prediction={t.prediction!r}: the samplers integrate a velocity; train with 'v'",
  )
  need(t.time_sampling in transport.TIME_SAMPLING, f"transport.time_sampling={t.time_sampling!r}")
  need(config.diffusion.noise_schedule in ("linear", "cosine"), "diffusion.noise_schedule")
  s = config.sampling
  need(s.sampler in ("ode", "sde"), f"sampling.sampler={s.sampler!r}; ode | sde")
  need(0 <= s.cfg_low <= s.cfg_high <= 1, "sampling: need 0 <= cfg_low <= cfg_high <= 1")
  need(s.cfg_scale >= 1, "sampling.cfg_scale must be >= 1")
  need(s.steps >= 2, "sampling.steps must be >= 2")
