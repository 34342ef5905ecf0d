"""Optimizers and learning-rate schedules (SPEC §1.4 tokenizer, §2.2 generators)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")


def lr_schedule(
  peak_lr: float,
  total_steps: int,
  warmup_steps: int,
  *,
  kind: str = "cosine",
  warmup_init_lr: float = 0.0,
  min_lr_ratio: float = 0.0,
):
  """Linear warm-up from `warmup_init_lr`, then cosine to `min_lr_ratio * peak_lr` (or constant).

  As timm's CosineLRScheduler (warmup_prefix=False, stepped per update), the cosine is evaluated
  at the absolute step over `total_steps`, so it continues from where the warm-up ends.
  """
  min_lr = peak_lr * min_lr_ratio

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = warmup_init_lr + (peak_lr - warmup_init_lr) * step / max(warmup_steps, 1)
    if kind == "constant":
      main = jnp.full_like(step, peak_lr)
    else:
      frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
      main = min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + jnp.cos(math.pi * frac))
    return jnp.where(step < warmup_steps, warm, main)

  return schedule


def decay_mask(params):
  """Weight decay on matrices only: no decay on biases and 1-D params (norm scales, gammas)."""

  def keep(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    return x.ndim > 1 and name != "bias"

  return jax.tree_util.tree_map_with_path(keep, params)


# optim.name -> optax optimizer; AdamW decays matrices only, Adam is the reference as shipped.
OPTIMIZERS = {
  "adamw": lambda lr, weight_decay, **kw: optax.adamw(
    lr, weight_decay=weight_decay, mask=decay_mask, **kw
  ),
  "adam": lambda lr, weight_decay, **kw: optax.adam(lr, **kw),
}


def make_optimizer(
  name: str,
  schedule,
  *,
  b1: float,
  b2: float,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  grad_clip: float = 0.0,
) -> optax.GradientTransformation:
  """Grad-norm clipping then AdamW (decay masked) or Adam (the reference as shipped: no decay)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; use one of {sorted(OPTIMIZERS)}")
  opt = OPTIMIZERS[name](schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  return optax.chain(*parts, opt)


def optimizer_from_config(optim_cfg, peak_lr: float, total_steps: int, warmup_steps: int):
  """(optimizer, schedule) from an `optim` config section."""
  schedule = lr_schedule(
    peak_lr,
    total_steps,
    warmup_steps,
    kind=optim_cfg.schedule,
    warmup_init_lr=min(optim_cfg.get("warmup_init_lr", 0.0), peak_lr),
    min_lr_ratio=optim_cfg.get("min_lr_ratio", 0.0),
  )
  tx = make_optimizer(
    optim_cfg.name,
    schedule,
    b1=optim_cfg.b1,
    b2=optim_cfg.b2,
    eps=optim_cfg.eps,
    weight_decay=optim_cfg.weight_decay,
    grad_clip=optim_cfg.grad_clip,
  )
  return tx, schedule


def steps_from(config, num_examples: int | None) -> tuple[int, int]:
  """(total_steps, warmup_steps) from steps or epochs; epochs need the dataset size."""

  def to_steps(steps: int, epochs: float, what: str) -> int:
    if steps:
      return int(steps)
    if not num_examples:
      raise ValueError(
        f"{what} is given in epochs but the dataset size is unknown; set it in steps"
      )
    return int(math.ceil(epochs * num_examples / config.batch_size))

  total = to_steps(config.total_steps, config.total_epochs, "total_epochs")
  warmup = to_steps(config.optim.warmup_steps, config.optim.warmup_epochs, "optim.warmup_epochs")
  return total, min(warmup, total)


def learning_rate(config) -> float:
  """Peak learning rate, scaled linearly with the global batch (reference: lr * batch / 256)."""
  scale = config.batch_size / 256 if config.optim.lr_batch_scaling else 1.0
  return config.optim.lr * scale
