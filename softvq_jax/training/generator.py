"""SiT / DiT generator training on tokenizer latents (SPEC §2.2) on top of the generic loop.

Batches are `{"latent": raw z_q (B, L, D), "label": (B,)}` from a latent cache (`data.name =
latents`) or encoded on the fly (`latents_online`, built by `build_data` from
training/online_latents.py); the task normalises `(z - vq_mean) / vq_std`
with the cache's statistics (or the tokenizer's, `model.latent_stats = tokenizer`). SiT: the
interpolant v-prediction loss (sampling/transport.py); DiT: ADM MSE + VB (sampling/diffusion.py).
Label dropout (`model.class_dropout_prob`) trains the null class for CFG. The frozen tokenizer is
only used to decode the periodic sample grids.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from softvq_jax import sharding
from softvq_jax.models.factory import DTYPES
from softvq_jax.models.sit import generator_from_train_config
from softvq_jax.objectives import diffusion as diffusion_lib
from softvq_jax.objectives import transport
from softvq_jax.sampling import generate as generate_lib
from softvq_jax.training import eval_batches, loop, optim
from softvq_jax.training.train_state import TrainState, ema_update
from softvq_jax.utils import images as image_utils


def resolve_latents(config) -> dict:
  """num_tokens, dim, vq_mean, vq_std, tokenizer, image_size of the training latents.

  From the cache's `cache_info` (data.name = latents) or the tokenizer's config (latents_online).
  Values already set in `config.model` (num_tokens/dim > 0, vq_std > 0, tokenizer) win.
  """
  m, d = config.model, config.data
  if d.name == "latents":
    from softvq_jax.data import latents

    info = latents.cache_info(d.path)
    # model.latent_stats is checked by config/validate.py: cache | tokenizer
    prefix = "tokenizer_" if m.get("latent_stats", "cache") == "tokenizer" else ""
    out = dict(
      num_tokens=int(info["num_tokens"]),
      dim=int(info["dim"]),
      vq_mean=float(info.get(f"{prefix}vq_mean", info["vq_mean"])),
      vq_std=float(info.get(f"{prefix}vq_std", info["vq_std"])),
      tokenizer=str(info.get("tokenizer", "")),
      image_size=int(info.get("image_size", 0) or 0),
    )
  else:
    from softvq_jax.weights import pretrained

    path = d.get("tokenizer", "") or m.get("tokenizer", "")
    if not path:
      raise ValueError(f"data.name={d.name!r} needs --config.data.tokenizer=/path/to/tokenizer")
    tok = pretrained.load_tokenizer(path)
    tm = tok.config["model"]
    out = dict(
      num_tokens=int(tm["num_latent_tokens"]),
      dim=int(tm["codebook_embed_dim"]),
      vq_mean=tok.vq_mean,
      vq_std=tok.vq_std,
      tokenizer=str(path),
      image_size=int(tm["image_size"]),
    )
  for key in ("num_tokens", "dim"):
    if m.get(key, 0) and int(m[key]) != out[key]:
      raise ValueError(f"model.{key}={m[key]} but the latents have {key}={out[key]}")
  if m.get("vq_std", 0.0) > 0:
    out["vq_mean"], out["vq_std"] = float(m.vq_mean), float(m.vq_std)
  if m.get("tokenizer", ""):
    out["tokenizer"] = str(m.tokenizer)
  if out["vq_std"] <= 0:
    raise ValueError(f"latent vq_std={out['vq_std']} must be positive")
  return out


def build_model(config, num_tokens: int, dim: int):
  """The SiT/DiT module of a generator config (sizes from the variant table)."""
  m = config.model
  return generator_from_train_config(
    {**m.to_dict(), "num_tokens": num_tokens, "dim": dim},
    remat=m.get("remat", False),
    attn_impl=m.get("attn_impl", "") or None,
    dtype=DTYPES[m.get("dtype", "float32")],
  )


def sampler_settings(config) -> generate_lib.SamplerSettings:
  """Preview-sampling settings from `config.sampling` (DiT always uses `diffusion`)."""
  s = config.sampling
  return generate_lib.SamplerSettings(
    sampler="diffusion" if config.model.name == "dit" else s.sampler,
    steps=s.steps,
    heun=s.heun,
    cfg_scale=s.cfg_scale,
    cfg_interval=(s.cfg_low, s.cfg_high),
    path=config.transport.path,
    noise_schedule=config.diffusion.noise_schedule,
  )


class GeneratorTask(loop.Task):
  """SiT (interpolant loss) or DiT (diffusion loss) with EMA, constant-lr AdamW and clipping."""

  def __init__(self, config, mesh, total_steps, warmup_steps):
    super().__init__(config, mesh, total_steps, warmup_steps)
    lat = resolve_latents(config)
    m = config.model
    # Recorded in the config saved with every checkpoint, so sampling rebuilds the same model.
    m.num_tokens, m.dim = lat["num_tokens"], lat["dim"]
    m.vq_mean, m.vq_std, m.tokenizer = lat["vq_mean"], lat["vq_std"], lat["tokenizer"]
    if lat["image_size"]:
      m.image_size = lat["image_size"]
    logging.info(
      "Generator %s-%s on (%d, %d) latents, vq_mean=%.6g vq_std=%.6g, tokenizer %r",
      m.name,
      m.variant,
      m.num_tokens,
      m.dim,
      m.vq_mean,
      m.vq_std,
      m.tokenizer,
    )
    self.model = build_model(config, m.num_tokens, m.dim)
    self.is_dit = m.name == "dit"
    self.diffusion = (
      diffusion_lib.GaussianDiffusion.create(
        config.diffusion.noise_schedule, config.diffusion.steps
      )
      if self.is_dit
      else None
    )
    self.tx, self.schedule = optim.optimizer_from_config(
      config.optim, config.optim.lr, total_steps, warmup_steps
    )
    self._tokenizer = self._tok_params = None
    if m.tokenizer:
      try:
        from softvq_jax.weights import pretrained

        self._tokenizer = pretrained.load_tokenizer(m.tokenizer)
      except FileNotFoundError as e:
        logging.warning("no tokenizer for sample grids (%s); grids are skipped", e)

  @classmethod
  def build_data(cls, config):
    """A latent cache through data/; `latents_online` through training/online_latents.py."""
    if config.data.name != "latents_online":
      return super().build_data(config)
    from softvq_jax.training import online_latents

    tok = online_latents.load_tokenizer(config.data)
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count(), tokenizer=tok)
    train = online_latents.build_train_data(
      config.data, global_batch=config.batch_size, seed=config.seed, **kw
    )
    ev = online_latents.build_eval_data(config.data, batch_size=loop.local_eval_batch(config), **kw)
    return train, ev

  # --- pure ---------------------------------------------------------------------------------
  def init_state(self, rng):
    init_rng, state_rng = jax.random.split(rng)
    x = jnp.zeros((1, self.config.model.num_tokens, self.config.model.dim), jnp.float32)
    params = self.model.init(init_rng, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
    return TrainState.create(params, self.tx, state_rng)

  def normalize(self, z):
    m = self.config.model
    return (z.astype(jnp.float32) - m.vq_mean) / m.vq_std

  def per_sample_loss(self, params, batch, key, train: bool):
    """(loss (B,), metrics of (B,) arrays) for a batch of raw latents."""
    x = self.normalize(batch["latent"])
    y = batch["label"].astype(jnp.int32)
    k_drop, k_t, k_eps = jax.random.split(key, 3)
    rngs = {"label_dropout": k_drop}

    def model_fn(x_t, t):
      out = self.model.apply({"params": params}, x_t, t, y, train=train, rngs=rngs)
      return out.astype(jnp.float32)

    if self.is_dit:
      t = jax.random.randint(k_t, (x.shape[0],), 0, self.diffusion.num_steps)
      noise = jax.random.normal(k_eps, x.shape)
      terms = diffusion_lib.training_losses(
        self.diffusion, lambda xt, s: model_fn(xt, s.astype(jnp.float32)), x, t, noise
      )
      return terms["loss"], {"mse": terms["mse"], "vb": terms["vb"]}
    tr = self.config.transport
    loss = transport.training_loss(
      model_fn,
      x,
      k_t,
      path=tr.path,
      prediction=tr.prediction,
      time_sampling=tr.time_sampling,
    )
    return loss, {}

  def train_step(self, state, batch, frozen=None):
    key = state.step_key()

    def loss_fn(params):
      loss, extra = self.per_sample_loss(params, batch, key, train=True)
      return loss.mean(), {k: v.mean() for k, v in extra.items()}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    ema = ema_update(state.ema_params, params, self.config.optim.ema_decay)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    metrics["lr"] = self.schedule(state.step)
    new_state = state.replace(
      step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state
    )
    return new_state, metrics

  def frozen_params(self):
    """The tokenizer's params (used host-side for the sample grids only)."""
    return None if self._tokenizer is None else self._tokenizer.params

  # --- host-side ----------------------------------------------------------------------------
  @functools.cached_property
  def _eval_fn(self):
    def fn(params, batch, i):
      key = jax.random.fold_in(jax.random.key(1234), i)  # fixed per batch; made on every host
      loss, _ = self.per_sample_loss(params, batch, key, train=False)
      mask = batch["mask"].astype(jnp.float32)
      return jnp.sum(loss * mask), jnp.sum(mask)

    rep = sharding.replicated(self.mesh)
    return jax.jit(fn, out_shardings=(rep, rep))

  def evaluate(self, state, eval_data, step):
    """Mean loss of the EMA and raw params on (up to eval.num_batches) eval batches, fixed keys."""
    runs = {"ema": state.ema_params, "raw": state.params}
    sums = {prefix: [0.0, 0.0] for prefix in runs}  # (loss total, count)
    limit = self.config.eval.num_batches
    batches = eval_batches.global_eval_batches(eval_data, self.mesh, limit=limit)
    for i, b in enumerate(batches):  # each batch read and placed once, equal counts per host
      for prefix, params in runs.items():
        s, n = self._eval_fn(params, b, np.uint32(i))
        sums[prefix][0] += float(s)
        sums[prefix][1] += float(n)
    return {f"eval/{p}_loss": t / max(c, 1.0) for p, (t, c) in sums.items()}

  @functools.cached_property
  def _grid_fn(self):
    """The jitted sampler + decoder for the preview grids (compiled once per run)."""
    m = self.config.model
    fn = generate_lib.make_sample_fn(
      self.model,
      (m.num_tokens, m.dim),
      sampler_settings(self.config),
      m.vq_mean,
      m.vq_std,
      self._tokenizer.model,
    )
    seed = self.config.seed
    # Keys made in the jit from sample indices: a host array reaches every host's devices.
    return jax.jit(
      lambda params, tok_params, labels, indices: fn(
        params, tok_params, labels, generate_lib.sample_keys(seed, indices)
      ),
      out_shardings=sharding.replicated(self.mesh),
    )

  def images(self, state, eval_data, step):
    """A grid of EMA samples for the first eval labels, decoded by the tokenizer."""
    if self._tokenizer is None:
      return {}
    n = self.config.eval.num_images_grid
    # The labels of the first global eval batch: the same on every process.
    first = next(eval_batches.global_eval_batches(eval_data, self.mesh, limit=1))
    first = sharding.to_host({"label": first["label"], "mask": first["mask"]})
    labels = np.asarray(first["label"])[np.asarray(first["mask"], bool)]
    labels = np.resize(labels, n).astype(np.int32) if len(labels) else np.zeros(n, np.int32)
    if self._tok_params is None:
      self._tok_params = sharding.replicate(self._tokenizer.params, self.mesh)
    labels, indices = sharding.replicate((labels, np.arange(n, dtype=np.uint32)), self.mesh)
    images = self._grid_fn(state.ema_params, self._tok_params, labels, indices)
    return {"samples": image_utils.make_grid(np.asarray(images), ncols=min(8, n))}


def train(config, workdir):
  """Entry point used by main: the generator task in the generic loop."""
  return loop.train(GeneratorTask, config, workdir)
