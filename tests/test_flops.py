"""The trainer's FLOPs per step (XLA cost analysis of the compiled step) vs an analytic count.

Analytic count of one optimizer step, forward + backward = 3 x forward (the backward computes
gradients w.r.t. both the activations and the weights), batch B, for a transformer of `depth`
blocks of width E on T tokens (MLP ratio 4):

  forward per block  = 2 * 12 E^2 * T   (qkv 3E^2, proj E^2, MLP 8E^2 matmul params, 2 FLOPs/MAC)
                     + 4 * T^2 * E      (q k^T and p v)
  step               = 3 * B * (sum over blocks + embeddings and heads), i.e.
                     ~ 6 * params * tokens + 12 * depth * T^2 * E * B

  tokenizer  encoder and decoder on T = 1 + N + L tokens (N = (S/p)^2 patches, L latents), plus
             patch embedding and to-pixel head 2 * N * 3p^2 * E each, quant_conv / post_quant_conv
             2 * L * D * E each and the SoftVQ logits and soft assignment 2 * 2 * L * D * K
  SiT        T latent tokens of C channels: per-token x_embedder / final linear 2 * C * E each,
             per-sample adaLN (6E^2 per block, 2E^2 final) and timestep MLP (256 E + E^2)

Elementwise work (norms, softmax, GELU, the loss, AdamW) is left out: at these sizes it is a few
percent, hence the 10 % tolerance.
"""

import jax
import jax.numpy as jnp
import pytest
from test_tokenizer_trainer import tiny_config

from softvq_jax import sharding
from softvq_jax.config import defaults
from softvq_jax.config.validate import validate
from softvq_jax.models import sit as sit_lib
from softvq_jax.training import flops, generator
from softvq_jax.training.tokenizer import TokenizerTask

B = 8


def _block(e: int, t: int) -> float:
  return 2 * 12 * e * e * t + 4 * t * t * e


def _compiled_step_flops(task, batch) -> float:
  """Per-device FLOPs of the task's step compiled as the loop compiles it (one device)."""
  state = jax.eval_shape(task.init_state, jax.random.key(0))
  step = jax.jit(task.train_step, donate_argnums=(0,))
  frozen = task.frozen_params()
  return flops.compiled_flops(step.lower(state, batch, frozen).compile())


def _mesh():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def test_tokenizer_step_flops_match_the_analytic_count():
  s, p, e, depth, latents, d, k = 32, 4, 128, 2, 8, 4, 16
  config = tiny_config(
    **{"model.image_size": s, "model.num_latent_tokens": latents, "model.codebook_embed_dim": d}
  )
  for part in (config.model.encoder, config.model.decoder):
    part.patch_size, part.depth, part.width, part.heads = p, depth, e, 4
  config.quantizer.codebook_size = k
  validate(config)
  task = TokenizerTask(config, _mesh(), total_steps=10, warmup_steps=1)
  batch = {"image": jax.ShapeDtypeStruct((B, s, s, 3), jnp.float32)}
  measured = _compiled_step_flops(task, batch)

  n = (s // p) ** 2
  t = 1 + n + latents
  forward = 2 * depth * _block(e, t)  # encoder + decoder
  forward += 2 * (2 * n * 3 * p * p * e)  # patch embedding, to-pixel head
  forward += 2 * (2 * latents * d * e)  # quant_conv, post_quant_conv
  forward += 2 * 2 * latents * d * k  # SoftVQ logits, soft assignment
  analytic = 3 * B * forward
  assert measured == pytest.approx(analytic, rel=0.10), (measured, analytic)


def test_sit_step_flops_match_the_analytic_count(monkeypatch):
  t, c, e, depth = 32, 8, 128, 2
  monkeypatch.setitem(sit_lib.SIT_VARIANTS, "mu", (depth, e, 4))
  latents = dict(num_tokens=t, dim=c, vq_mean=0.0, vq_std=1.0, tokenizer="", image_size=0)
  monkeypatch.setattr(generator, "resolve_latents", lambda config: latents)
  config = defaults.generator_config("S", "quick")
  config.model.num_classes = 10
  task = generator.GeneratorTask(config, _mesh(), total_steps=10, warmup_steps=0)
  batch = {
    "latent": jax.ShapeDtypeStruct((B, t, c), jnp.float32),
    "label": jax.ShapeDtypeStruct((B,), jnp.int32),
  }
  measured = _compiled_step_flops(task, batch)

  per_token = depth * _block(e, t) + 2 * (2 * c * e * t)  # blocks, x_embedder, final linear
  per_sample = 2 * (depth * 6 * e * e + 2 * e * e + 256 * e + e * e)  # adaLN, t_embedder
  analytic = 3 * B * (per_token + per_sample)
  assert measured == pytest.approx(analytic, rel=0.10), (measured, analytic)


def test_peak_table_and_utilisation():
  assert flops.peak_tflops("TPU v5 lite") == 197.0
  assert flops.peak_tflops("TPU v5p") == flops.peak_tflops("TPU v5") == 459.0
  assert flops.peak_tflops("TPU v6 lite") == 918.0 and flops.peak_tflops("TPU v4") == 275.0
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("NVIDIA H200") == 989.0
  assert flops.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert flops.peak_tflops("cpu") is None and flops.peak_tflops("cpu", 2.0) == 2.0
  assert flops.utilisation(2e12, 0.5, 4.0) == {"perf/tflops_per_device": 1.0, "perf/mfu": 0.25}
  assert flops.utilisation(2e12, 0.5, None) == {"perf/tflops_per_device": 1.0}
  assert flops.utilisation(None, 0.5, 4.0) == {}

  class _Compiled:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      return self.cost

  assert flops.compiled_flops(_Compiled([{"flops": 2.0}, {"flops": 3.0}])) == 5.0
  assert flops.compiled_flops(_Compiled({"flops": 2.0})) == 2.0
  assert flops.compiled_flops(_Compiled(None)) is None
