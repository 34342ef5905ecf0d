"""Latent bottlenecks of the tokenizer behind one interface: SoftVQ, hard VQ, KL and plain AE.

Every quantizer is called as `z_q, info = q(z_e, train)` on z_e (B, L, D) (KL: (B, L, 2D)) and
returns the `info` dict the trainer consumes (see `softvq_jax.models.tokenizer`): "z_e", "z_q",
"quantizer_loss" (already weighted), "entropy_loss" (weighted), "metrics" (f32 scalars) and, for the
codebook quantizers, "indices" (B, L) and "code_counts" (nc, K). All computations run in float32
(matmuls at HIGHEST precision so TPU logits are not bf16-rounded).

Multiple codebooks split the *sequence* (SPEC §1.2): token l uses codebook l // (L / nc).

`QUANTIZERS` (name -> class) is the one registry: `quantizer.name` selects the class and its
`from_config(quantizer_cfg, embed_dim)` reads that quantizer's own keys (missing keys keep the
defaults below). The values are checked by `softvq_jax.config.validate`, not here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.functional import l2_normalize
from softvq_jax.utils.config_access import cfg_get

Dtype = Any
_HI = jax.lax.Precision.HIGHEST
LOGIT_FORMS = ("cosine", "distance")  # SoftVectorQuantizer.logit_form


def entropy_loss(affinity: jax.Array, temperature: float = 0.01, log_eps: float = 1e-6):
  """H_sample - H_avg of softmax(affinity / temperature) over the last axis (K).

  H_sample is the mean per-row entropy, H_avg the entropy of the mean distribution over ALL rows
  (every token of every codebook of the batch). Under `jit` with a batch sharded over devices the
  mean is over the global batch (the reference takes it per GPU). `log_eps` is 1e-6 in the
  reference soft VQ and 1e-5 in its hard VQ.
  """
  a = affinity.reshape(-1, affinity.shape[-1]).astype(jnp.float32) / temperature
  p = jax.nn.softmax(a, axis=-1)
  logp = jax.nn.log_softmax(a, axis=-1)
  avg = jnp.mean(p, axis=0)
  h_avg = -jnp.sum(avg * jnp.log(avg + log_eps))
  h_sample = -jnp.mean(jnp.sum(p * logp, axis=-1))
  return h_sample - h_avg


def uniform_codebook_init(l2_norm: bool):
  """U(-1/K, 1/K) then (optionally) unit rows, as the reference; shape (nc, K, D)."""

  def init(key, shape, dtype=jnp.float32):
    k = shape[-2]
    c = jax.random.uniform(key, shape, jnp.float32, -1.0 / k, 1.0 / k)
    return (l2_normalize(c) if l2_norm else c).astype(dtype)

  return init


def _codebook_and_tokens(module: nn.Module, z_e: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The (nc, K, D) `embedding` param and the tokens, both in f32 and l2-normalised if asked."""
  shape = (module.num_codebooks, module.codebook_size, module.embed_dim)
  init = uniform_codebook_init(module.l2_norm)
  codebook = module.param("embedding", init, shape, module.param_dtype).astype(jnp.float32)
  z = z_e.astype(jnp.float32)
  if module.l2_norm:
    codebook, z = l2_normalize(codebook), l2_normalize(z)
  return codebook, z


def _segments(z: jax.Array, nc: int) -> jax.Array:
  """(B, L, D) -> (B, nc, L/nc, D): contiguous token groups, one per codebook."""
  b, n, d = z.shape
  if n % nc:
    raise ValueError(f"num_latent_tokens {n} is not divisible by num_codebooks {nc}")
  return z.reshape(b, nc, n // nc, d)


def _code_counts(indices: jax.Array, nc: int, k: int) -> jax.Array:
  """(B, nc, seg) argmax indices -> (nc, K) int32 histogram (scatter-add, no one-hot)."""
  book = jnp.broadcast_to(jnp.arange(nc)[None, :, None], indices.shape)
  return jnp.zeros((nc, k), jnp.int32).at[book.reshape(-1), indices.reshape(-1)].add(1)


def _usage(counts: jax.Array) -> jax.Array:
  return jnp.mean(jnp.count_nonzero(counts, axis=-1) / counts.shape[-1]).astype(jnp.float32)


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean cosine similarity along the last axis (torch cosine_similarity, eps 1e-8)."""
  num = jnp.sum(a * b, -1)
  den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-8)
  return jnp.mean(num / den)


def _sq_dist(z: jax.Array, c: jax.Array) -> jax.Array:
  """||z - c||^2 for z (B, nc, S, D), c (nc, K, D) -> (B, nc, S, K)."""
  zc = jnp.einsum("bnsd,nkd->bnsk", z, c, precision=_HI)
  return jnp.sum(z * z, -1, keepdims=True) + jnp.sum(c * c, -1)[None, :, None, :] - 2 * zc


class FromConfig:
  """`from_config(quantizer_cfg, embed_dim)`: `embed_dim` (if the quantizer has one) plus every
  other field read from the `quantizer` section (dict or ConfigDict) under its own name, with the
  field's default when absent."""

  @classmethod
  def from_config(cls, quantizer_cfg: Any, embed_dim: int):
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")]
    kw = {
      f.name: cfg_get(
        quantizer_cfg, f.name, None if f.default is dataclasses.MISSING else f.default
      )
      for f in fields
      if f.name not in ("embed_dim", "param_dtype")
    }
    if any(f.name == "embed_dim" for f in fields):
      kw["embed_dim"] = embed_dim
    return cls(**kw)


class _Codebook(FromConfig, nn.Module):
  """Fields of the codebook quantizers: nc codebooks of K codes of size D (sequence split)."""

  codebook_size: int
  embed_dim: int
  num_codebooks: int = 1
  l2_norm: bool = True
  entropy_loss_ratio: float = 0.0
  entropy_temperature: float = 0.01
  param_dtype: Dtype = jnp.float32
  quant_conv_factor: ClassVar[int] = 1


class SoftVectorQuantizer(_Codebook):
  """Soft VQ (SPEC §1.2): z_q = softmax(logits / tau) @ C with logits against stop_grad(C).

  logit_form 'cosine' (reference): logits = <z^, sg(C^)> (unit vectors when l2_norm);
  'distance' (paper): logits = -||z^ - sg(C^)||. The codebook gets gradient only through
  z_q = p @ C^. Training adds entropy_loss_ratio * entropy_loss(logits, entropy_temperature),
  whose batch marginal is over the global batch under jit (see `entropy_loss`).
  """

  tau: float = 0.07
  logit_form: str = "cosine"

  @nn.compact
  def __call__(self, z_e: jax.Array, train: bool = False):
    nc, k = self.num_codebooks, self.codebook_size
    codebook, z = _codebook_and_tokens(self, z_e)
    b, n, d = z.shape
    zs = _segments(z, nc)  # (B, nc, S, D)
    c_sg = jax.lax.stop_gradient(codebook)
    if self.logit_form == "cosine":
      logits = jnp.einsum("bnsd,nkd->bnsk", zs, c_sg, precision=_HI)
    elif self.logit_form == "distance":
      logits = -jnp.sqrt(jnp.maximum(_sq_dist(zs, c_sg), 1e-12))
    else:
      raise ValueError(f"quantizer.logit_form={self.logit_form!r}; use one of {LOGIT_FORMS}")
    probs = jax.nn.softmax(logits / self.tau, axis=-1)  # (B, nc, S, K)
    z_q = jnp.einsum("bnsk,nkd->bnsd", probs, codebook, precision=_HI).reshape(b, n, d)

    if train and self.entropy_loss_ratio:
      ent = self.entropy_loss_ratio * entropy_loss(logits, self.entropy_temperature, 1e-6)
    else:
      ent = jnp.zeros((), jnp.float32)
    idx = jnp.argmax(probs, axis=-1).astype(jnp.int32)  # (B, nc, S)
    counts = _code_counts(idx, nc, k)
    sg = jax.lax.stop_gradient
    metrics = {
      "max_prob": jnp.mean(jnp.max(sg(probs), axis=-1)),
      "zq_z_cos": _cos(sg(z), sg(z_q)),
      "codebook_usage_batch": _usage(counts),
    }
    info = {
      "z_e": z_e,
      "z_q": z_q,
      "quantizer_loss": ent,
      "entropy_loss": ent,
      "metrics": metrics,
      "indices": idx.reshape(b, n),
      "code_counts": counts,
      "logits": logits.reshape(b, n, k),
      "probs": probs.reshape(b, n, k),
    }
    return z_q, info


class VectorQuantizer(_Codebook):
  """Hard VQ baseline (LlamaGen style): nearest codeword, straight-through, codebook + commitment.

  Training loss: mean((z_q - sg z)^2) + beta * mean((sg z_q - z)^2) (+ ratio * entropy on -d^2
  with log eps 1e-5, as the reference). With l2_norm both z and codewords are unit vectors (the
  output z_q too). num_codebooks > 1 splits the sequence like the soft quantizer.
  """

  commit_beta: float = 0.25

  @nn.compact
  def __call__(self, z_e: jax.Array, train: bool = False):
    nc, k = self.num_codebooks, self.codebook_size
    codebook, z = _codebook_and_tokens(self, z_e)
    b, n, d = z.shape
    zs = _segments(z, nc)
    dist = _sq_dist(zs, codebook)  # (B, nc, S, K)
    idx = jnp.argmin(dist, axis=-1).astype(jnp.int32)  # (B, nc, S)
    hard = jax.vmap(lambda c, i: c[i], in_axes=(0, 1), out_axes=1)(codebook, idx)  # (B,nc,S,D)
    hard = hard.reshape(b, n, d)
    sg = jax.lax.stop_gradient
    codebook_loss = jnp.mean(jnp.square(hard - sg(z)))
    commit_loss = jnp.mean(jnp.square(sg(hard) - z))
    if train and self.entropy_loss_ratio:
      ent = self.entropy_loss_ratio * entropy_loss(-dist, self.entropy_temperature, 1e-5)
    else:
      ent = jnp.zeros((), jnp.float32)
    total = codebook_loss + self.commit_beta * commit_loss + ent if train else jnp.zeros(())
    z_q = z + sg(hard - z)
    counts = _code_counts(idx, nc, k)
    metrics = {
      "codebook_loss": sg(codebook_loss),
      "commit_loss": sg(commit_loss),
      "codebook_usage_batch": _usage(counts),
    }
    info = {
      "z_e": z_e,
      "z_q": z_q,
      "quantizer_loss": total.astype(jnp.float32),
      "entropy_loss": ent,
      "metrics": metrics,
      "indices": idx.reshape(b, n),
      "code_counts": counts,
    }
    return z_q, info


class DiagonalGaussianQuantizer(FromConfig, nn.Module):
  """KL baseline: z_e (B, L, 2D) = [mean | logvar] (logvar clamped to [-30, 20]).

  Samples mean + std * eps with the "sample" rng in training, returns the mean in eval.
  quantizer_loss = kl_weight * sum_{L,D} KL(q || N(0, I)) / B (computed in both modes).
  """

  embed_dim: int
  kl_weight: float = 1e-6
  quant_conv_factor: ClassVar[int] = 2

  @nn.compact
  def __call__(self, z_e: jax.Array, train: bool = False):
    h = z_e.astype(jnp.float32)
    if h.shape[-1] != 2 * self.embed_dim:
      raise ValueError(f"KL quantizer expects 2*D={2 * self.embed_dim} channels, got {h.shape}")
    mean, logvar = jnp.split(h, 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    std = jnp.exp(0.5 * logvar)
    if train:
      z = mean + std * jax.random.normal(self.make_rng("sample"), mean.shape, jnp.float32)
    else:
      z = mean
    kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2))
    kl = jnp.sum(kl) / h.shape[0]
    info = {
      "z_e": mean,
      "z_q": z,
      "logvar": logvar,
      "quantizer_loss": self.kl_weight * kl,
      "entropy_loss": jnp.zeros((), jnp.float32),
      "metrics": {
        "kl": jax.lax.stop_gradient(kl),
        "posterior_std": jnp.mean(jax.lax.stop_gradient(std)),
      },
    }
    return z, info


class IdentityQuantizer(FromConfig, nn.Module):
  """Plain autoencoder: z_q = z_e, no loss."""

  quant_conv_factor: ClassVar[int] = 1

  @nn.compact
  def __call__(self, z_e: jax.Array, train: bool = False):
    del train
    z = z_e.astype(jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    return z, {"z_e": z, "z_q": z, "quantizer_loss": zero, "entropy_loss": zero, "metrics": {}}


QUANTIZERS = {
  "softvq": SoftVectorQuantizer,
  "vq": VectorQuantizer,
  "kl": DiagonalGaussianQuantizer,
  "ae": IdentityQuantizer,
}
