"""The one config validator: every check, reading the registries of the layers below.

`validate(config)` checks a whole training config before anything compiles; its parts are public
for callers holding one section: `validate_tokenizer(model, quantizer)` (dicts or ConfigDicts)
and `check_weight_files(config)` (the frozen networks' files). Every error names the config key
and the fix. The choices come from the registries and tables of the lower layers (quantizers,
tokenizers, discriminators, alignment modes, DINO/DINOv2 variants, SiT sizes, transport paths,
noise schedules, samplers, datasets, trainers) so no list is repeated here; the lower layers only
fail on impossible arguments when called directly.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from softvq_jax.config import ignored
from softvq_jax.utils.config_access import cfg_at
from softvq_jax.utils.config_access import cfg_get as _get
from softvq_jax.utils.errors import UserError


class ConfigError(UserError, ValueError):
  """A config value is invalid; raised before anything compiles."""


def _need(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def validate(config: ConfigDict) -> None:
  """Checks the whole config; raises ConfigError naming the key and the fix (WeightFileError for
  a missing weight file)."""
  from softvq_jax import data
  from softvq_jax.training.registry import TRAINERS

  need = _need
  trainer = config.get("trainer")
  need(trainer in TRAINERS, f"trainer={trainer!r}; known: {sorted(TRAINERS)}")
  need(config.batch_size > 0, f"batch_size={config.batch_size} must be positive")
  need(config.total_steps >= 0, "total_steps must be >= 0 (0: use total_epochs)")
  need(config.total_steps > 0 or config.total_epochs > 0, "set total_steps or total_epochs > 0")
  need(config.get("stop_after", 0) >= 0, "stop_after must be >= 0 (0: run to the end)")
  from softvq_jax.training.guards import NAN_POLICIES

  policy = config.get("nan_policy", "stop")
  need(policy in NAN_POLICIES, f"nan_policy={policy!r}; choose one of {NAN_POLICIES}")
  peak = config.get("peak_tflops", 0.0) or 0.0
  need(peak >= 0, f"peak_tflops={peak} must be >= 0 (0: from the device kind)")
  prof = config.get("profile", {})
  for key in ("start_step", "num_steps"):
    need(prof.get(key, 0) >= 0, f"profile.{key}={prof.get(key, 0)} must be >= 0")
  restore = config.get("ckpt", {}).get("restore_step", 0)
  need(restore >= 0, f"ckpt.restore_step={restore} must be >= 0 (0: the newest good checkpoint)")
  for key in ("log_every", "eval_every", "image_every"):
    need(config[key] > 0, f"{key}={config[key]} must be positive")
  _validate_optim(config)
  d = config.data
  need(d.name in data.DATASETS, f"data.name={d.name!r}; known: {sorted(data.DATASETS)}")
  mcf = d.get("min_crop_frac", 0.8)
  need(0 < mcf <= 1, f"data.min_crop_frac={mcf} must be in (0, 1]")
  readers = ("auto", "array_record", "tfrecord")  # data/sources/imagenet.py READERS
  need(d.get("reader", "auto") in readers, f"data.reader={d.get('reader')!r}; one of {readers}")
  k = d.get("tfrecord_streams", 16)
  need(k >= 1, f"data.tfrecord_streams={k} must be >= 1 (and divide the global batch)")
  if d.name == "folder":
    need(bool(d.get("path", "")), "data.name='folder' needs --config.data.path=/path/to/images")
  need(config.mesh.fsdp >= 1, "mesh.fsdp must be >= 1")
  if trainer in ("sit", "dit"):
    _validate_generator(config)
  if trainer == "tokenizer":
    need(
      d.name in data.IMAGE_DATASETS,
      f"data.name={d.name!r}: the tokenizer trains on images; use one of {data.IMAGE_DATASETS}",
    )
    validate_tokenizer(config.model, config.quantizer)
    _validate_tokenizer_loss(config)
  for message in ignored.ignored_options(config)[:1]:  # after the specific checks: they say more
    raise ConfigError(message)
  if trainer == "tokenizer":
    check_weight_files(config)


def _validate_optim(config: ConfigDict) -> None:
  from softvq_jax.training import optim

  o, need = config.optim, _need
  need(o.name in optim.OPTIMIZERS, f"optim.name={o.name!r}; use one of {sorted(optim.OPTIMIZERS)}")
  need(o.lr > 0, f"optim.lr={o.lr} must be positive")
  need(o.schedule in optim.SCHEDULES, f"optim.schedule={o.schedule!r}; one of {optim.SCHEDULES}")
  need(0 <= o.ema_decay < 1, f"optim.ema_decay={o.ema_decay} must be in [0, 1)")
  need(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
  need(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
  need(o.grad_accum_steps >= 1, "optim.grad_accum_steps must be >= 1")
  need(
    config.batch_size % o.grad_accum_steps == 0,
    f"batch_size={config.batch_size} must be divisible by optim.grad_accum_steps",
  )


# ---------------------------------------------------------------------------------- tokenizer
def validate_tokenizer(model_cfg: Any, quantizer_cfg: Any) -> None:
  """The `model` and `quantizer` sections of a tokenizer (dicts or ConfigDicts): raises
  ConfigError naming the offending key; silent if `models.factory.build_tokenizer` can build it."""
  from softvq_jax.models import factory, quantizers

  need = _need
  name = _get(model_cfg, "name", "softvq")
  need(name in factory.TOKENIZERS, f"model.name={name!r}; known: {sorted(factory.TOKENIZERS)}")
  s = _get(model_cfg, "image_size")
  need(isinstance(s, int) and s > 0, f"model.image_size={s!r} must be a positive int")
  use_rope = bool(_get(model_cfg, "use_rope", False))
  for part in ("encoder", "decoder"):
    section = _get(model_cfg, part)
    need(section is not None, f"model.{part} is missing")
    try:
      depth, width, heads, p = factory.resolve_vit(section, f"model.{part}")
    except ValueError as e:
      raise ConfigError(str(e)) from e
    need(depth > 0, f"model.{part}.depth={depth} must be positive")
    need(
      p > 0 and s % p == 0, f"model.image_size={s} is not divisible by model.{part}.patch_size={p}"
    )
    need(
      heads > 0 and width % heads == 0,
      f"model.{part}.width={width} is not divisible by model.{part}.heads={heads}",
    )
    if use_rope:
      need(
        (width // heads) % 4 == 0,
        f"model.use_rope needs head_dim % 4 == 0; model.{part} has head_dim {width // heads}",
      )
  rope_mode = _get(model_cfg, "rope_mode", "mixed")
  need(
    rope_mode == "mixed",
    f"model.rope_mode={rope_mode!r}: only 'mixed' 2-D RoPE is supported (the reference's axial "
    "RoPE crashes; see REFERENCE_NOTES §4.4)",
  )
  theta = _get(model_cfg, "rope_theta", 10.0)
  need(theta > 0, f"model.rope_theta={theta} must be positive")
  n_lat = _get(model_cfg, "num_latent_tokens")
  need(isinstance(n_lat, int) and n_lat > 0, f"model.num_latent_tokens={n_lat!r} must be > 0")
  dim = _get(model_cfg, "codebook_embed_dim")
  need(isinstance(dim, int) and dim > 0, f"model.codebook_embed_dim={dim!r} must be > 0")
  ls = _get(model_cfg, "layerscale_init", 1e-5)
  need(ls is None or ls >= 0, f"model.layerscale_init={ls} must be >= 0 (or None)")
  to_pixel = _get(model_cfg, "to_pixel", "linear")
  need(to_pixel in factory.TO_PIXEL, f"model.to_pixel={to_pixel!r}; use one of {factory.TO_PIXEL}")
  if to_pixel == "conv":
    p_dec = factory.resolve_vit(_get(model_cfg, "decoder"), "model.decoder")[3]
    need(p_dec == 16, f"model.to_pixel='conv' upsamples x16; model.decoder.patch_size={p_dec}")
  dt = _get(model_cfg, "dtype", "float32")
  need(dt in factory.DTYPES, f"model.dtype={dt!r}; use one of {sorted(factory.DTYPES)}")
  impl = _get(model_cfg, "attn_impl", "") or ""
  need(impl in factory.ATTN_IMPLS, f"model.attn_impl={impl!r}; use one of {factory.ATTN_IMPLS}")
  std = _get(model_cfg, "vq_std", 1.0)
  need(std > 0, f"model.vq_std={std} must be positive")

  q = _get(quantizer_cfg, "name", "softvq")
  need(q in quantizers.QUANTIZERS, f"quantizer.name={q!r}; known: {sorted(quantizers.QUANTIZERS)}")
  QUANTIZER_CHECKS[q](quantizer_cfg, n_lat)


def _check_codebook(q: Any, n_lat: int) -> None:
  k = _get(q, "codebook_size")
  _need(isinstance(k, int) and k > 0, f"quantizer.codebook_size={k!r} must be > 0")
  nc = _get(q, "num_codebooks", 1)
  _need(isinstance(nc, int) and nc > 0, f"quantizer.num_codebooks={nc!r} must be > 0")
  _need(
    n_lat % nc == 0,
    f"model.num_latent_tokens={n_lat} is not divisible by quantizer.num_codebooks={nc}",
  )
  ratio = _get(q, "entropy_loss_ratio", 0.0)
  _need(ratio >= 0, f"quantizer.entropy_loss_ratio={ratio} must be >= 0")
  temp = _get(q, "entropy_temperature", 0.01)
  _need(temp > 0, f"quantizer.entropy_temperature={temp} must be positive")


def _check_softvq(q: Any, n_lat: int) -> None:
  from softvq_jax.models.quantizers import LOGIT_FORMS

  _check_codebook(q, n_lat)
  tau = _get(q, "tau", 0.07)
  _need(tau > 0, f"quantizer.tau={tau} must be positive")
  form = _get(q, "logit_form", "cosine")
  _need(form in LOGIT_FORMS, f"quantizer.logit_form={form!r}; use one of {LOGIT_FORMS}")


def _check_vq(q: Any, n_lat: int) -> None:
  _check_codebook(q, n_lat)
  beta = _get(q, "commit_beta", 0.25)
  _need(beta >= 0, f"quantizer.commit_beta={beta} must be >= 0")


def _check_kl(q: Any, n_lat: int) -> None:
  del n_lat
  w = _get(q, "kl_weight", 1e-6)
  _need(w >= 0, f"quantizer.kl_weight={w} must be >= 0")


# quantizer.name -> the checks of that quantizer's keys (one entry per models.quantizers.QUANTIZERS
# name; tests/test_validate.py keeps the two in step).
QUANTIZER_CHECKS = {
  "softvq": _check_softvq,
  "vq": _check_vq,
  "kl": _check_kl,
  "ae": lambda q, n_lat: None,
}


def _validate_tokenizer_loss(config: ConfigDict) -> None:
  from softvq_jax.models.discriminators import DISCRIMINATORS
  from softvq_jax.models.frozen.dinov2 import TEACHER_VARIANTS
  from softvq_jax.models.projector import ALIGN_MODES
  from softvq_jax.objectives import adversarial, diffaug
  from softvq_jax.objectives.reconstruction import REC_TYPES

  loss, need = config.loss, _need
  need(loss.rec_type in REC_TYPES, f"loss.rec_type={loss.rec_type!r}; one of {REC_TYPES}")
  need(loss.perceptual_weight >= 0, "loss.perceptual_weight must be >= 0")
  disc, align = loss.disc, loss.align
  need(disc.weight >= 0, "loss.disc.weight must be >= 0")
  need(align.weight >= 0, "loss.align.weight must be >= 0")
  need(
    disc.name in DISCRIMINATORS, f"loss.disc.name={disc.name!r}; known: {sorted(DISCRIMINATORS)}"
  )
  d_loss, g_loss = disc.get("loss", "hinge"), disc.get("gen_loss", "hinge")
  need(
    d_loss in adversarial.D_LOSSES,
    f"loss.disc.loss={d_loss!r}; known: {sorted(adversarial.D_LOSSES)}",
  )
  need(
    g_loss in adversarial.G_LOSSES,
    f"loss.disc.gen_loss={g_loss!r}; known: {sorted(adversarial.G_LOSSES)}",
  )
  for key in ("diffaug_policy", "cr_policy"):
    try:
      diffaug.parse_policy(disc.get(key, ""))
    except ValueError as e:
      raise ConfigError(f"loss.disc.{key}: {e} (groups: color, translation, cutout_<r>)") from e
  prob = disc.get("diffaug_prob", 0.5)
  need(0 <= prob <= 1, f"loss.disc.diffaug_prob={prob} must be in [0, 1]")
  need(align.mode in ALIGN_MODES, f"loss.align.mode={align.mode!r}; known: {ALIGN_MODES}")
  if (disc.weight > 0 or align.weight > 0) and config.optim.grad_accum_steps > 1:
    raise ConfigError(
      "optim.grad_accum_steps > 1 together with the GAN loss (loss.disc.weight > 0) or the "
      "alignment loss (loss.align.weight > 0) is not supported yet; set optim.grad_accum_steps=1"
    )
  if align.weight > 0:
    need(
      align.teacher_variant in TEACHER_VARIANTS,
      f"loss.align.teacher_variant={align.teacher_variant!r}; known: {sorted(TEACHER_VARIANTS)}",
    )
    tp = align.get("teacher_patch_size", 16)
    need(
      tp > 0 and config.model.image_size % tp == 0,
      f"model.image_size={config.model.image_size} is not divisible by "
      f"loss.align.teacher_patch_size={tp}",
    )
    need(align.proj_dim > 0, f"loss.align.proj_dim={align.proj_dim} must be positive")
    grid = config.model.image_size // tp
    need(
      align.mode != "repeat" or (grid * grid) % config.model.num_latent_tokens == 0,
      f"loss.align.mode='repeat' needs the teacher token count ({grid}x{grid}) to be a multiple "
      f"of model.num_latent_tokens={config.model.num_latent_tokens}; use mode 'avg_1d'",
    )


def check_weight_files(config: ConfigDict) -> None:
  """Raises WeightFileError naming the file and key of each missing weight file (before compiling).

  `model.encoder_init` (DINOv2 encoder init) when set; then the frozen networks the objective uses
  (`training.frozen_nets.needed` / `WEIGHT_FILES`), unless `loss.random_init` allows random
  weights. LPIPS needs `loss.lpips_lin_path`; `loss.lpips_vgg_path` may stay empty when the lin
  file is a full LPIPS state dict holding the VGG trunk too.
  """
  from softvq_jax.models.frozen import dino
  from softvq_jax.training import frozen_nets
  from softvq_jax.weights.io import WeightFileError, expand_path, require_file

  if config.model.get("encoder_init"):
    require_file(config.model.encoder_init, "DINOv2 encoder weights", "model.encoder_init")
  init_from = config.loss.disc.get("init_from", "")
  if init_from and config.loss.disc.weight > 0:
    _need(
      config.loss.disc.name == "dino",
      "loss.disc.init_from holds converted reference DinoDisc heads; set loss.disc.name='dino'",
    )
    require_file(
      expand_path(init_from) / "config.json",
      "converted DINO discriminator heads (python -m softvq_jax.convert dino-disc)",
      "loss.disc.init_from",
    )
  variant = config.loss.disc.get("dino_variant", "S")
  _need(
    variant in dino.TRUNK_VARIANTS,
    f"loss.disc.dino_variant={variant!r}; known: {sorted(dino.TRUNK_VARIANTS)}",
  )
  needed = frozen_nets.needed(config)
  if config.loss.get("random_init", False):
    return
  _need(
    "dino" not in needed or variant == "S",
    f"loss.disc.dino_variant={variant!r} exists only with random weights (tests, smoke runs): "
    "set loss.random_init=True, or use 'S' with loss.disc.dino_path",
  )
  missing = []  # every missing file at once, not one per run
  for name in needed:
    keys, what = frozen_nets.WEIGHT_FILES[name]
    for key in keys:
      path = cfg_at(config, key)
      if key == "loss.lpips_vgg_path" and not path:
        continue
      if not path or not expand_path(path).is_file():
        missing.append((key, what, path))
  if len(missing) == 1:
    key, what, path = missing[0]
    require_file(path, what, key)  # raises, with the one file's full advice
  if missing:
    raise WeightFileError(
      f"{len(missing)} weight files not found: "
      + "; ".join(f"`{k}` ({w}): {p or '<empty path>'!r}" for k, w, p in missing)
      + ". Nothing is downloaded at run time: download the published files and set those keys "
      "(or loss.random_init=True for random weights in smoke runs)"
    )


# ---------------------------------------------------------------------------------- generators
def _validate_generator(config: ConfigDict) -> None:
  from softvq_jax import data
  from softvq_jax.models import factory, sit
  from softvq_jax.objectives import diffusion, transport
  from softvq_jax.sampling.generate import SAMPLERS

  m, t, d, need = config.model, config.transport, config.data, _need
  need(m.name == config.trainer, f"model.name={m.name!r} must equal trainer={config.trainer!r}")
  need(m.name in sit.MODELS, f"model.name={m.name!r}; known: {sorted(sit.MODELS)}")
  need(
    m.variant in sit.SIT_VARIANTS, f"model.variant={m.variant!r}; known: {sorted(sit.SIT_VARIANTS)}"
  )
  need(m.patch_size == 1, "model.patch_size must be 1 for 1-D tokens (2-D latents: use the API)")
  need(0 <= m.class_dropout_prob < 1, "model.class_dropout_prob must be in [0, 1)")
  need(m.dtype in factory.DTYPES, f"model.dtype={m.dtype!r}; use one of {sorted(factory.DTYPES)}")
  # The latent statistics sources of training/generator.py's resolve_latents.
  need(m.latent_stats in ("cache", "tokenizer"), "model.latent_stats: cache | tokenizer")
  need(
    d.name in data.LATENT_DATASETS,
    f"data.name={d.name!r}: generators train on latents ({' | '.join(data.LATENT_DATASETS)})",
  )
  if d.name == "latents":
    need(
      bool(d.get("path", "")),
      "data.name='latents' needs --config.data.path=/path/to/cache "
      "(create it with python -m softvq_jax.data.cache_latents)",
    )
  if d.name == "latents_online":
    need(  # the encoder is data.tokenizer (training/online_latents.py)
      bool(d.get("tokenizer", "")),
      "data.name='latents_online' needs --config.data.tokenizer=/path/to/tokenizer",
    )
    src = d.get("image_source", "photos")
    need(
      src in data.IMAGE_DATASETS,
      f"data.image_source={src!r}; choose one of {data.IMAGE_DATASETS}",
    )
  need(t.path in transport.PATHS, f"transport.path={t.path!r}; known: {transport.PATHS}")
  need(
    t.prediction == "v",
    f"transport.prediction={t.prediction!r}: the samplers integrate a velocity; train with 'v'",
  )
  need(
    t.time_sampling in transport.TIME_SAMPLING,
    f"transport.time_sampling={t.time_sampling!r}; known: {transport.TIME_SAMPLING}",
  )
  ns = config.diffusion.noise_schedule
  need(ns in diffusion.SCHEDULES, f"diffusion.noise_schedule={ns!r}; known: {diffusion.SCHEDULES}")
  s = config.sampling
  sit_samplers = tuple(x for x in SAMPLERS if x != "diffusion")  # DiT always samples "diffusion"
  need(s.sampler in sit_samplers, f"sampling.sampler={s.sampler!r}; use one of {sit_samplers}")
  need(0 <= s.cfg_low <= s.cfg_high <= 1, "sampling: need 0 <= cfg_low <= cfg_high <= 1")
  need(s.cfg_scale >= 1, "sampling.cfg_scale must be >= 1")
  need(s.steps >= 2, "sampling.steps must be >= 2")
