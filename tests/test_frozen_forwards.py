"""Frozen-network work per tokenizer step (full objective, random-init frozen nets, tiny).

The step's jaxpr is traced (not compiled) and the images each frozen network's first layer
sees are counted: a forward shows up as that layer applied to 3-channel images (VGG16 conv1_1)
or to 16x16x3 patches (the DINO trunk / DINOv2 teacher patch embedding); an input gradient as
the same kernel applied to cotangents of the layer's output width. With batch B per step:

  LPIPS-VGG16   forward on x and on x_rec once each (2B); input gradients for x_rec only (B)
  DINO trunk    forward on 5 different augmented batches (G: aug(x_rec); D: aug(x), aug(x_rec),
                CR strong-aug(x), strong-aug(x_rec)) (5B); input gradients in the G pass (B)
  DINOv2        forward on x once (B); no gradient

so no frozen network runs twice on the same input and none is differentiated where its input
needs no gradient.
"""

import jax
import jax.numpy as jnp
import pytest
from test_tokenizer_objective import ALL_TERMS
from test_tokenizer_trainer import tiny_config

from softvq_jax import sharding
from softvq_jax.models.frozen import dino as dino_lib
from softvq_jax.training.tokenizer import TokenizerTask

B = 4


def _eqns(jaxpr):
  """Every equation, also inside sub-jaxprs (pjit, custom_vjp, scan, cond, remat)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      subs = value if isinstance(value, list | tuple) else [value]
      for sub in subs:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _eqns(inner)


def _step_jaxpr(**overrides):
  config = tiny_config(**{**ALL_TERMS, **overrides})
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=10, warmup_steps=1)
  state = jax.eval_shape(task.init_state, jax.random.key(0))
  s = config.model.image_size
  batch = {"image": jax.ShapeDtypeStruct((B, s, s, 3), jnp.float32)}
  frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), task.frozen_params())
  return jax.make_jaxpr(task.train_step)(state, batch, frozen).jaxpr, task


def _images(jaxpr, prim: str, kernel: tuple, in_width: int) -> int:
  """Images (leading dim) a `prim` with this kernel shape sees with `in_width` input channels."""
  total = 0
  for eqn in _eqns(jaxpr):
    if eqn.primitive.name == prim and tuple(eqn.invars[1].aval.shape) == kernel:
      lhs = eqn.invars[0].aval.shape
      if lhs[-1] == in_width:
        total += lhs[0]
  return total


@pytest.fixture(scope="module")
def full_step():
  return _step_jaxpr()


def test_lpips_vgg_runs_once_per_input_and_differentiates_x_rec_only(full_step):
  jaxpr, _ = full_step
  conv = "conv_general_dilated"
  assert _images(jaxpr, conv, (3, 3, 3, 64), 3) == 2 * B  # forward: x, x_rec
  assert _images(jaxpr, conv, (3, 3, 3, 64), 64) == B  # input gradient: x_rec only


def test_dino_trunk_and_teacher_forwards(full_step):
  jaxpr, task = full_step
  width = dino_lib.TRUNK_VARIANTS["tiny"][1]
  kernel = (16 * 16 * 3, width)  # the DINO trunk's patch embedding (224 px, patch 16)
  assert _images(jaxpr, "dot_general", kernel, 16 * 16 * 3) == 5 * B
  assert _images(jaxpr, "dot_general", kernel, width) == B  # G pass input gradient
  teacher = task.frozen_params()["teacher"]
  p, _, _, c = teacher["patch_embed"]["proj"]["kernel"].shape  # (p, p, 3, C)
  assert _images(jaxpr, "dot_general", (p * p * 3, c), p * p * 3) == B
  assert _images(jaxpr, "dot_general", (p * p * 3, c), c) == 0


def test_adaptive_weight_reuses_the_real_images_lpips_features():
  """adaptive_weight re-runs the tokenizer on x (for d nll / d W): x's VGG features are reused."""
  light = {"loss.disc.name": "patchgan", "loss.align.weight": 0.0}  # only LPIPS matters here
  jaxpr, _ = _step_jaxpr(**light, **{"loss.disc.adaptive_weight": True})
  assert _images(jaxpr, "conv_general_dilated", (3, 3, 3, 64), 3) == 3 * B  # x, x_rec twice
