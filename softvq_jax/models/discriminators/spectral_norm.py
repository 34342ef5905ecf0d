"""Spectral normalisation as torch.nn.utils.spectral_norm, for linen convolutions.

The power-iteration vectors u (out,) and v (in*prod(kernel),) live in the mutable "spectral"
collection, a plain pytree the trainer keeps in its train state. Matching torch:
- the weight matrix is the kernel in torch layout reshaped to (out, -1): a flax kernel
  (*kernel, in, out) is transposed to (out, in, *kernel) first, so u/v are ordered as torch's
  `weight_u` / `weight_v` buffers (sigma itself does not depend on the column order);
- init: u, v = normalize(N(0, 1)) without any iteration;
- `update_stats=True` (torch train mode): n power iterations from the stored u
  (v = normalize(W^T u), u = normalize(W v), normalize(x) = x / max(||x||, eps)), the new u, v
  are stored and used; `update_stats=False` (torch eval mode): the stored u, v are used as is;
- sigma = u . (W v) with u, v constants (stop_gradient) and the gradient flowing through W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.functional import (
  l2_normalize,
  torch_default_bias_init,
  torch_default_kernel_init,
)

Dtype = Any
COLLECTION = "spectral"


def kernel_to_matrix(kernel: jax.Array) -> jax.Array:
  """Flax conv kernel (*kernel, in, out) or dense kernel (in, out) -> torch matrix (out, -1)."""
  nd = kernel.ndim - 2
  w = jnp.transpose(kernel, (nd + 1, nd, *range(nd)))  # (out, in, *kernel): torch layout
  return w.reshape(w.shape[0], -1)


def power_iteration(
  w_mat: jax.Array, u: jax.Array, n_iter: int = 1, eps: float = 1e-12
) -> tuple[jax.Array, jax.Array]:
  """n_iter power iterations from u on the (out, k) matrix; returns (u, v), gradient-free."""
  w_mat = jax.lax.stop_gradient(w_mat)
  v = None
  for _ in range(n_iter):
    v = l2_normalize(w_mat.T @ u, eps=eps)
    u = l2_normalize(w_mat @ v, eps=eps)
  return u, v


def spectral_sigma(w_mat: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """sigma = u . (W v); gradient through W only."""
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  return jnp.dot(u, w_mat @ v)


class SpectralConv(nn.Module):
  """N-d convolution (channels-last) whose kernel is divided by its spectral norm.

  padding: "CIRCULAR" (k // 2 on each side, wrapped, as torch padding_mode='circular'),
  an int (zeros on each side), or explicit ((lo, hi), ...) pairs. With `spectral=False` it is a
  plain convolution with the same parameters (reference `using_spec_norm=False`).
  Parameters: kernel (*kernel_size, in, out) and bias (out,) in "params"; u, v in "spectral".
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  padding: str | int | Sequence[tuple[int, int]] = 0
  use_bias: bool = True
  spectral: bool = True
  n_power_iterations: int = 1
  eps: float = 1e-12
  kernel_init: Any = torch_default_kernel_init
  bias_init: Any = None  # None -> torch default for the fan-in
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    ks = tuple(self.kernel_size)
    nd = len(ks)
    c_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (*ks, c_in, self.features), self.param_dtype)
    if self.spectral:
      kernel = self._normalise(kernel, update_stats)

    if isinstance(self.padding, str):
      if self.padding.upper() != "CIRCULAR":
        raise ValueError(f"unsupported padding {self.padding!r}")
      pads = [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)]
      x = jnp.pad(x, pads, mode="wrap")
      conv_pad = [(0, 0)] * nd
    elif isinstance(self.padding, int):
      conv_pad = [(self.padding, self.padding)] * nd
    else:
      conv_pad = [tuple(p) for p in self.padding]
    strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
    if not 1 <= nd <= 3:
      raise ValueError(f"SpectralConv supports 1-3 spatial dims, got kernel_size={ks}")
    spatial = "DHW"[-nd:]
    dn = jax.lax.conv_dimension_numbers(
      x.shape, kernel.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    )
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      window_strides=strides,
      padding=conv_pad,
      dimension_numbers=dn,
    )
    if self.use_bias:
      fan_in = c_in * math.prod(ks)
      init = self.bias_init or torch_default_bias_init(fan_in)
      bias = self.param("bias", init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

  def _normalise(self, kernel: jax.Array, update_stats: bool) -> jax.Array:
    w_mat = kernel_to_matrix(kernel).astype(jnp.float32)  # (out, in * prod(k))
    h, w = w_mat.shape

    def init_vec(n):
      def f():
        key = self.make_rng("params")
        return l2_normalize(jax.random.normal(key, (n,), jnp.float32), eps=self.eps)

      return f

    u_var = self.variable(COLLECTION, "u", init_vec(h))
    v_var = self.variable(COLLECTION, "v", init_vec(w))
    u, v = u_var.value, v_var.value
    if update_stats and not self.is_initializing():
      u, v = power_iteration(w_mat, u, self.n_power_iterations, self.eps)
      u_var.value, v_var.value = u, v
    sigma = spectral_sigma(w_mat, u, v)
    return (kernel.astype(jnp.float32) / sigma).astype(kernel.dtype)
