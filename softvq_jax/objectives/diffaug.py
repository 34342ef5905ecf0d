"""DiffAugment (Zhao et al. 2020) as the reference utils/diff_aug.py, NHWC, pure and jit-friendly.

Policy: comma-separated groups from "color", "translation", "cutout_<ratio>" (e.g.
"color,translation,cutout_0.2"). For each group ONE uniform draw for the whole batch decides whether
the group is applied (applied iff u < prob; the reference skips iff u > prob, which differs only on
a measure-zero event and makes prob=0 an exact identity here); parameters are drawn per sample:
- color: brightness x + U(-0.5, 0.5); saturation (x - m_c) * U(0, 2) + m_c with m_c the per-pixel
  channel mean; contrast (x - m) * U(0.5, 1.5) + m with m the per-image mean (in this order);
- translation: integer shifts t_h, t_w ~ U{-s, .., s}, s = int(side / 8 + 0.5), out[i, j] =
  x[i + t_h, j + t_w], zero outside the image;
- cutout_r: a square of int(side * r + 0.5) pixels centred at a uniform random offset
  (offset in [0, side + 1 - size % 2), first row offset - size // 2), clipped to the image, is
  zeroed.
The decisions use jnp.where (no Python branching on traced values); gradients flow to x.
Integer draws are floor(U[0,1) * n) (same distribution as torch.randint, fewer random ops).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def parse_policy(policy: str) -> list[tuple[str, float]]:
  """'color,translation,cutout_0.2' -> [('color', 0), ('translation', 0), ('cutout', 0.2)]."""
  groups = []
  for name in (p.strip() for p in policy.split(",") if p.strip()):
    if name in ("color", "translation"):
      groups.append((name, 0.0))
    elif name.startswith("cutout_"):
      try:
        ratio = float(name[len("cutout_") :])
      except ValueError as e:
        raise ValueError(f"bad cutout ratio in DiffAugment policy entry {name!r}") from e
      if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"cutout ratio must be in [0, 1], got {name!r}")
      groups.append(("cutout", ratio))
    else:
      raise ValueError(f"unknown DiffAugment policy entry {name!r} in {policy!r}")
  return groups


def _uniform(key: jax.Array, n: int, b: int, lo: float, hi: float) -> jax.Array:
  """(n, B) uniform draws in [lo, hi); one random op per augmentation keeps the compile short."""
  return jax.random.uniform(key, (n, b), jnp.float32, lo, hi)


def _bcast(r: jax.Array, x: jax.Array) -> jax.Array:
  return r.reshape(-1, 1, 1, 1).astype(x.dtype)


def brightness(x: jax.Array, r: jax.Array) -> jax.Array:
  """x + r per sample, r (B,)."""
  return x + _bcast(r, x)


def saturation(x: jax.Array, f: jax.Array) -> jax.Array:
  """(x - channel mean) * f + channel mean, f (B,)."""
  m = jnp.mean(x, axis=-1, keepdims=True)
  return (x - m) * _bcast(f, x) + m


def contrast(x: jax.Array, f: jax.Array) -> jax.Array:
  """(x - image mean) * f + image mean, f (B,)."""
  m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - m) * _bcast(f, x) + m


def rand_brightness(x: jax.Array, key: jax.Array) -> jax.Array:
  """x + U(-0.5, 0.5) per sample."""
  return brightness(x, _uniform(key, 1, x.shape[0], -0.5, 0.5)[0])


def rand_saturation(x: jax.Array, key: jax.Array) -> jax.Array:
  """(x - channel mean) * U(0, 2) + channel mean, per sample."""
  return saturation(x, _uniform(key, 1, x.shape[0], 0.0, 2.0)[0])


def rand_contrast(x: jax.Array, key: jax.Array) -> jax.Array:
  """(x - image mean) * U(0.5, 1.5) + image mean, per sample."""
  return contrast(x, _uniform(key, 1, x.shape[0], 0.5, 1.5)[0])


def rand_color(x: jax.Array, key: jax.Array) -> jax.Array:
  """Brightness, saturation, contrast in sequence (independent per-sample draws)."""
  u = _uniform(key, 3, x.shape[0], 0.0, 1.0)
  return contrast(saturation(brightness(x, u[0] - 0.5), 2.0 * u[1]), u[2] + 0.5)


def _randint(u: jax.Array, lo: int, hi: int) -> jax.Array:
  """Uniform integers in [lo, hi) from uniform floats u in [0, 1)."""
  return jnp.clip(lo + jnp.floor(u * (hi - lo)).astype(jnp.int32), lo, hi - 1)


def translation_shifts(key: jax.Array, b: int, h: int, w: int, ratio: float = 0.125):
  """Per-sample integer shifts (t_h, t_w), each (B,), uniform in [-s, s], s = int(side*ratio+.5)."""
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  u = _uniform(key, 2, b, 0.0, 1.0)
  return _randint(u[0], -sh, sh + 1), _randint(u[1], -sw, sw + 1)


def translate(x: jax.Array, t_h: jax.Array, t_w: jax.Array) -> jax.Array:
  """out[b, i, j] = x[b, i + t_h[b], j + t_w[b]], zero where the source is outside the image."""
  _, h, w, _ = x.shape
  ih = jnp.arange(h)[None, :] + t_h[:, None]  # (B, H)
  iw = jnp.arange(w)[None, :] + t_w[:, None]  # (B, W)
  vh = (ih >= 0) & (ih < h)
  vw = (iw >= 0) & (iw < w)
  gather = lambda xs, a, c: xs[jnp.clip(a, 0, h - 1)][:, jnp.clip(c, 0, w - 1)]
  out = jax.vmap(gather)(x, ih, iw)
  mask = (vh[:, :, None] & vw[:, None, :]).astype(x.dtype)[..., None]
  return out * mask


def rand_translation(x: jax.Array, key: jax.Array, ratio: float = 0.125) -> jax.Array:
  """Random integer translation up to ratio * side with zero fill."""
  b, h, w, _ = x.shape
  t_h, t_w = translation_shifts(key, b, h, w, ratio)
  return translate(x, t_h, t_w)


def cutout_offsets(key: jax.Array, b: int, h: int, w: int, ratio: float):
  """Per-sample centre offsets (o_h, o_w), each (B,), and the square size (size_h, size_w)."""
  size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
  u = _uniform(key, 2, b, 0.0, 1.0)
  o_h = _randint(u[0], 0, h + (1 - size_h % 2))
  o_w = _randint(u[1], 0, w + (1 - size_w % 2))
  return o_h, o_w, (size_h, size_w)


def cutout_mask(o_h: jax.Array, o_w: jax.Array, size: tuple[int, int], h: int, w: int):
  """(B, H, W) mask: 0 on rows [o_h - s_h//2, +s_h) x cols [o_w - s_w//2, +s_w), else 1."""
  s_h, s_w = size
  r = jnp.arange(h)[None, :] - (o_h[:, None] - s_h // 2)  # (B, H)
  c = jnp.arange(w)[None, :] - (o_w[:, None] - s_w // 2)  # (B, W)
  in_r = (r >= 0) & (r < s_h)
  in_c = (c >= 0) & (c < s_w)
  return 1.0 - (in_r[:, :, None] & in_c[:, None, :]).astype(jnp.float32)


def rand_cutout(x: jax.Array, key: jax.Array, ratio: float = 0.2) -> jax.Array:
  """Zero a random square of side int(side * ratio + 0.5) per sample (clipped to the image)."""
  b, h, w, _ = x.shape
  o_h, o_w, size = cutout_offsets(key, b, h, w, ratio)
  return x * cutout_mask(o_h, o_w, size, h, w).astype(x.dtype)[..., None]


def diff_augment(x: jax.Array, key: jax.Array, policy: str = "", prob: float = 0.5) -> jax.Array:
  """DiffAugment of a batch x (B, H, W, C); one Bernoulli(prob) decision per policy group.

  `prob` may be a Python float or a traced scalar; prob = 0 returns x, prob = 1 always applies.
  """
  groups = parse_policy(policy)
  if not groups or (isinstance(prob, (int, float)) and prob <= 0.0):
    return x
  k_apply, *k_aug = jax.random.split(key, len(groups) + 1)
  apply = jax.random.uniform(k_apply, (len(groups),)) < prob  # one draw per group for the batch
  for g, (name, ratio) in enumerate(groups):
    if name == "color":
      y = rand_color(x, k_aug[g])
    elif name == "translation":
      y = rand_translation(x, k_aug[g])
    else:
      y = rand_cutout(x, k_aug[g], ratio)
    x = jnp.where(apply[g], y, x)
  return x
