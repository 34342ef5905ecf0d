"""Generation throughput: images/s of noise -> sampler with CFG -> tokenizer decode -> uint8.

  python benchmarks/generation_throughput.py --batch=64 --steps=250 --dtype=bfloat16
  python benchmarks/generation_throughput.py --tiny          # CPU smoke run in seconds

Compares (SPEC §3, the paper's throughput claim):
  SoftVQ: SiT-XL/1 on 64 x 32 tokens (`--tokens`) + the SoftVQ decoder (`--tokenizer`, B/BL/L),
  baseline: SiT-XL/2 on 32 x 32 x 4 latents (256 tokens, SD-VAE-shaped). The baseline's VAE
    decoder is EXCLUDED (its latents are timed, not decoded), so the baseline is timed faster
    than it really is and the printed speed-up is a lower bound.
Random weights (throughput does not depend on them), the same sampler settings for both, the batch
split over all local devices; the same jitted pipeline as `softvq_jax.sampling.generate`. Each
figure is the median of `--iters` timed runs after one compile + warm-up run.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # softvq_jax from the checkout
from softvq_jax.config import defaults  # noqa: E402
from softvq_jax.models.factory import build_tokenizer  # noqa: E402

_TINY = flags.DEFINE_bool("tiny", False, "Tiny models and 4 steps: a CPU smoke run in seconds.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per pipeline call (split over devices).")
_STEPS = flags.DEFINE_integer("steps", 250, "Sampler steps.")
_SAMPLER = flags.DEFINE_enum("sampler", "sde", ["sde", "ode"], "Sampler (sde: published).")
_CFG = flags.DEFINE_float("cfg_scale", 1.75, "Guidance scale (1: none).")
_INTERVAL = flags.DEFINE_string("cfg_interval", "0,0.7", "Guidance interval low,high.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_TOKENIZER = flags.DEFINE_enum("tokenizer", "B", ["B", "BL", "L"], "SoftVQ tokenizer variant.")
_TOKENS = flags.DEFINE_integer("tokens", 64, "SoftVQ latent tokens (32 or 64).")
_SIT = flags.DEFINE_string("sit", "XL", "SiT size for both pipelines (S/B/L/XL).")
_ITERS = flags.DEFINE_integer("iters", 3, "Timed runs (median reported).")


def _sit(input_size, in_channels, patch_size, dtype):
  from softvq_jax.models.sit import build_generator

  if _TINY.value:
    from softvq_jax.models.sit import SiT

    return SiT(
      input_size=input_size,
      in_channels=in_channels,
      patch_size=patch_size,
      hidden_size=64,
      depth=2,
      num_heads=2,
      dtype=dtype,
    )
  return build_generator(
    "sit",
    _SIT.value,
    input_size=input_size,
    in_channels=in_channels,
    patch_size=patch_size,
    dtype=dtype,
  )


def _tokenizer(dtype_name):
  if _TINY.value:
    c = defaults.tokenizer_config("B", "quick")
    for part in (c.model.encoder, c.model.decoder):
      part.depth, part.width, part.heads = 1, 64, 2
  else:
    c = defaults.tokenizer_config(_TOKENIZER.value, f"tokens={_TOKENS.value}")
  c.model.dtype = dtype_name
  c.model.encoder_init = ""
  model = build_tokenizer(c.model, c.quantizer)
  s = c.model.image_size
  params = jax.jit(
    lambda k: model.init({"params": k, "sample": k}, jnp.zeros((1, s, s, 3)))["params"]
  )(jax.random.key(1))
  return model, params, c


def _time(fn, args, iters):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _pipeline(model, shape, settings, tok_model, tok_params, mesh, batch, iters, label):
  from softvq_jax.sampling import generate

  data, rep = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  x = jnp.zeros((1, *shape))
  params = jax.jit(
    lambda k: model.init(k, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
  )(jax.random.key(0))
  params = jax.device_put(params, rep)
  tok_params = jax.device_put(tok_params, rep) if tok_params is not None else None
  run = generate.make_sample_fn(model, shape, settings, 0.0, 1.0, tok_model)
  fn = jax.jit(run, out_shardings=data)
  labels = jax.device_put(np.arange(batch, dtype=np.int32) % model.num_classes, data)
  keys = jax.device_put(generate.sample_keys(0, np.arange(batch)), data)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  seconds = _time(fn, (params, tok_params, labels, keys), iters)
  print(
    f"{label}: {batch / seconds:9.2f} images/s  ({seconds:.3f} s per batch of {batch}; "
    f"generator {n_params / 1e6:.1f}M params, latent {shape})",
    flush=True,
  )
  return batch / seconds


def main(argv):
  del argv
  try:
    from softvq_jax.sampling.generate import SamplerSettings
  except ImportError as e:
    raise SystemExit(f"this benchmark needs the SiT generator modules: {e}") from e

  dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
  steps = 4 if _TINY.value else _STEPS.value
  lo, hi = (float(v) for v in _INTERVAL.value.split(","))
  settings = SamplerSettings(
    sampler=_SAMPLER.value, steps=steps, cfg_scale=_CFG.value, cfg_interval=(lo, hi)
  )
  devices = jax.local_devices()
  mesh = Mesh(np.asarray(devices), ("batch",))
  batch = _BATCH.value
  if batch % len(devices):
    raise ValueError(f"--batch={batch} must be a multiple of the {len(devices)} local devices")
  tok_model, tok_params, c = _tokenizer(_DTYPE.value)
  s, n_tok, dim = c.model.image_size, c.model.num_latent_tokens, c.model.codebook_embed_dim
  base_grid = 16 if _TINY.value else s // 8  # SD-VAE: 8x downsampling, 4 channels
  print(
    f"device: {len(devices)} x {devices[0].device_kind}; batch {batch}; dtype {_DTYPE.value}; "
    f"sampler {settings.sampler}, {steps} steps, CFG {settings.cfg_scale} on "
    f"t in [{lo}, {hi}]; {s}px; SiT-{'tiny' if _TINY.value else _SIT.value}",
    flush=True,
  )
  iters = _ITERS.value
  soft = _pipeline(
    _sit(n_tok, dim, 1, dtype),
    (n_tok, dim),
    settings,
    tok_model,
    tok_params,
    mesh,
    batch,
    iters,
    f"SoftVQ-{_TOKENIZER.value}-{n_tok} + SiT/1 ({n_tok} tokens), incl. decoder",
  )
  soft_latents = _pipeline(
    _sit(n_tok, dim, 1, dtype),
    (n_tok, dim),
    settings,
    None,
    None,
    mesh,
    batch,
    iters,
    f"SoftVQ-{_TOKENIZER.value}-{n_tok} + SiT/1 ({n_tok} tokens), sampler only",
  )
  base = _pipeline(
    _sit(base_grid, 4, 2, dtype),
    (base_grid, base_grid, 4),
    settings,
    None,
    None,
    mesh,
    batch,
    iters,
    f"baseline SiT/2 on {base_grid}x{base_grid}x4 ({(base_grid // 2) ** 2} tokens), "
    "VAE decoder excluded",
  )
  print(
    f"speed-up (SoftVQ incl. decoder vs baseline without decoder): {soft / base:.2f}x "
    f"(a lower bound); sampler-only ratio {soft_latents / base:.2f}x"
    + (" [--tiny: toy models, the ratio means nothing]" if _TINY.value else "")
  )


if __name__ == "__main__":
  app.run(main)
