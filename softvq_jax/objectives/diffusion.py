"""DiT Gaussian diffusion (ADM/IDDPM) for channels-last latents, SPEC §2.1.

1000 steps, linear or cosine betas, eps prediction with learned-range variance (the model's last
axis is [eps | v], v in [-1, 1] interpolating log beta_t and the clipped posterior log variance),
loss = MSE(eps) + VB term (bits/dim, mean frozen; decoder NLL at t = 0); respacing (`"250"` -> 250
evenly spaced steps; the model sees the original step indices). The schedule tables are float64
numpy; gathers are cast to the latents' dtype. The ancestral sampler is `sampling/diffusion.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, num_steps: int = 1000) -> np.ndarray:
  """ADM betas (float64): linear 1e-4..0.02 (scaled by 1000/T) or Nichol & Dhariwal cosine."""
  if name == "linear":
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  if name == "cosine":
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array(
      [min(1 - f((i + 1) / num_steps) / f(i / num_steps), 0.999) for i in range(num_steps)],
      np.float64,
    )
  raise ValueError(f"unknown noise schedule {name!r}; choose one of {list(SCHEDULES)}")


def space_timesteps(num_steps: int, spacing: str | int) -> list[int]:
  """ADM `space_timesteps`: "250" (or "100,50" per equal section) -> kept original step indices."""
  counts = [int(x) for x in str(spacing).split(",")]
  size, extra = divmod(num_steps, len(counts))
  out, start = set(), 0
  for i, count in enumerate(counts):
    sec = size + (1 if i < extra else 0)
    if sec < count:
      raise ValueError(f"cannot take {count} steps from a section of {sec}")
    stride = 1 if count <= 1 else (sec - 1) / (count - 1)
    cur = 0.0
    for _ in range(count):
      out.add(start + round(cur))
      cur += stride
    start += sec
  return sorted(out)


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
  """Schedule tables (float64 numpy, one entry per (respaced) step) and `timestep_map`."""

  betas: np.ndarray
  timestep_map: np.ndarray

  @classmethod
  def create(cls, schedule: str = "cosine", num_steps: int = 1000, respacing: str | int = ""):
    """`respacing` "" keeps all steps; "250" keeps 250 evenly spaced ones (new betas)."""
    base = beta_schedule(schedule, num_steps)
    if respacing in ("", None) or int(str(respacing).split(",")[0]) == num_steps:
      return cls(base, np.arange(num_steps))
    keep = space_timesteps(num_steps, respacing)
    acp = np.cumprod(1.0 - base)
    betas, last = [], 1.0
    for i in keep:
      betas.append(1 - acp[i] / last)
      last = acp[i]
    return cls(np.asarray(betas), np.asarray(keep))

  @property
  def num_steps(self) -> int:
    return len(self.betas)

  def __getattr__(self, name):  # derived tables, computed on demand
    if name.startswith("_") or "betas" not in self.__dict__:
      raise AttributeError(name)
    tables = _tables(self.betas)
    if name not in tables:
      raise AttributeError(f"GaussianDiffusion has no table {name!r}")
    return tables[name]

  def __hash__(self):
    return hash((self.betas.tobytes(), self.timestep_map.tobytes()))

  def __eq__(self, other):
    return isinstance(other, GaussianDiffusion) and hash(self) == hash(other)


def _tables(betas: np.ndarray) -> dict[str, np.ndarray]:
  alphas = 1.0 - betas
  acp = np.cumprod(alphas)
  acp_prev = np.append(1.0, acp[:-1])
  post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
  return {
    "alphas_cumprod": acp,
    "alphas_cumprod_prev": acp_prev,
    "sqrt_alphas_cumprod": np.sqrt(acp),
    "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
    "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
    "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1),
    "posterior_variance": post_var,
    "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
    "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
    "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
    "log_betas": np.log(betas),
  }


def _gather(table: np.ndarray, t: jax.Array, x: jax.Array) -> jax.Array:
  """table[t] (B,) broadcast to x's rank, in x's dtype."""
  v = jnp.asarray(table, x.dtype)[t]
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def q_sample(d: GaussianDiffusion, x0, t, noise):
  """x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) noise."""
  return (
    _gather(d.sqrt_alphas_cumprod, t, x0) * x0
    + _gather(d.sqrt_one_minus_alphas_cumprod, t, x0) * noise
  )


def q_posterior_mean_variance(d: GaussianDiffusion, x0, x_t, t):
  """(mean, variance, clipped log variance) of q(x_{t-1} | x_t, x0)."""
  mean = (
    _gather(d.posterior_mean_coef1, t, x_t) * x0 + _gather(d.posterior_mean_coef2, t, x_t) * x_t
  )
  return (
    mean,
    _gather(d.posterior_variance, t, x_t),
    _gather(d.posterior_log_variance_clipped, t, x_t),
  )


def p_mean_variance(d: GaussianDiffusion, model_out, x_t, t, clip_denoised: bool = False):
  """Learned-range p(x_{t-1} | x_t) from model_out = [eps | v] on the last axis.

  Returns dict(mean, log_variance, pred_xstart).
  """
  c = x_t.shape[-1]
  if model_out.shape[-1] != 2 * c:
    raise ValueError(f"learned-sigma output needs {2 * c} channels, got {model_out.shape}")
  eps, v = model_out[..., :c], model_out[..., c:]
  min_log = _gather(d.posterior_log_variance_clipped, t, x_t)
  max_log = _gather(d.log_betas, t, x_t)
  frac = (v + 1) / 2
  log_var = frac * max_log + (1 - frac) * min_log
  x0 = (
    _gather(d.sqrt_recip_alphas_cumprod, t, x_t) * x_t
    - _gather(d.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
  )
  if clip_denoised:
    x0 = jnp.clip(x0, -1, 1)
  mean, _, _ = q_posterior_mean_variance(d, x0, x_t, t)
  return {"mean": mean, "log_variance": log_var, "pred_xstart": x0}


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (
    -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
  )


def _approx_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """ADM decoder log-likelihood (nats) of x in [-1, 1] under a 256-bin discretised Gaussian."""
  centered = x - means
  inv = jnp.exp(-log_scales)
  cdf_plus = _approx_cdf(inv * (centered + 1.0 / 255.0))
  cdf_min = _approx_cdf(inv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def vb_terms_bpd(d: GaussianDiffusion, model_out, x0, x_t, t):
  """(B,) VB term in bits/dim: KL(q || p) for t > 0, decoder NLL at t = 0."""
  true_mean, _, true_logvar = q_posterior_mean_variance(d, x0, x_t, t)
  out = p_mean_variance(d, model_out, x_t, t)
  kl = _mean_flat(normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])) / math.log(2)
  nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
  nll = _mean_flat(nll) / math.log(2)
  return jnp.where(t == 0, nll, kl)


def training_losses(
  d: GaussianDiffusion, model_fn: Callable, x0: jax.Array, t: jax.Array, noise: jax.Array
) -> dict[str, jax.Array]:
  """ADM MSE + VB: {"loss", "mse", "vb"}, each (B,). `model_fn(x_t, step)` -> (.., 2C)."""
  x_t = q_sample(d, x0, t, noise)
  out = model_fn(x_t, jnp.asarray(d.timestep_map)[t]).astype(x0.dtype)
  c = x0.shape[-1]
  frozen = jnp.concatenate([jax.lax.stop_gradient(out[..., :c]), out[..., c:]], axis=-1)
  vb = vb_terms_bpd(d, frozen, x0, x_t, t) * (d.num_steps / 1000.0)
  mse = _mean_flat((noise - out[..., :c]) ** 2)
  return {"loss": mse + vb, "mse": mse, "vb": vb}
