"""The full tokenizer objective in the trainer: every term on (random-init frozen nets), files."""

import jax
import numpy as np
import pytest
from test_tokenizer_trainer import _batches, tiny_config

from softvq_jax import sharding
from softvq_jax.config import defaults
from softvq_jax.config.validate import check_weight_files, validate
from softvq_jax.objectives import perceptual
from softvq_jax.training import frozen_nets, loop
from softvq_jax.training.tokenizer import TokenizerTask
from softvq_jax.weights.io import WeightFileError

ALL_TERMS = {
  "loss.random_init": True,
  "loss.perceptual_weight": 1.0,
  "loss.perceptual_warmup": 4,
  "loss.disc.name": "dino",
  "loss.disc.weight": 0.2,
  "loss.disc.start": 3,
  "loss.disc.dino_variant": "tiny",  # the real trunk's graph at width 32 (CPU cost)
  "loss.align.weight": 0.1,
  "loss.align.teacher_variant": "tiny",
  "loss.align.mode": "repeat",
  "loss.align.proj_dim": 32,
  # 32 px / patch 16 -> 4 teacher tokens; 4 latent tokens (2 per codebook) -> repeat x1
  "model.num_latent_tokens": 4,
}


def _read_tags(workdir):
  from tensorflow.core.util import event_pb2
  from tensorflow.python.lib.io import tf_record

  tags = set()
  for path in workdir.glob("events.out.tfevents.*"):
    for record in tf_record.tf_record_iterator(str(path)):
      event = event_pb2.Event.FromString(record)
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_every_term_trains_and_is_logged(tmp_path):
  config = tiny_config(
    **ALL_TERMS, total_steps=4, log_every=1, eval_every=4, image_every=4, **{"ckpt.save_every": 4}
  )
  summary = loop.train(TokenizerTask, config, str(tmp_path / "run"))
  assert summary["total_steps"] == 4
  tags = _read_tags(tmp_path / "run")
  for term in (
    "rec_loss",
    "perceptual_loss",
    "perceptual_weight",
    "entropy_loss",
    "quantizer_loss",
    "align_loss",
    "gan/gen_adv_loss",
    "gan/g_weight",
    "gan/d_total",
    "grad_norm",
    "gan/disc_grad_norm",
  ):
    assert term in tags, (term, sorted(tags))


def test_all_terms_step_values():
  """Per step: the weighted sum, the LPIPS ramp, D off before disc_start, projector trained."""
  config = tiny_config(**ALL_TERMS)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=10, warmup_steps=2)
  frozen = task.frozen_params()
  assert set(frozen) == {"lpips", "dino", "teacher"}
  state = jax.jit(task.init_state)(jax.random.PRNGKey(0))
  assert set(state.opt_state[1][0].mu) == {"model", "align_proj"}  # one optimizer, both trees
  assert "align_proj" not in state.params and "align_proj" not in state.ema_params
  proj0 = jax.device_get(state.extra["align_proj"])
  step = jax.jit(task.train_step)
  for i, b in enumerate(_batches(config, 4)):
    state, m = step(state, b, frozen)
    m = jax.device_get(m)
    assert float(m["perceptual_weight"]) == pytest.approx(min(1.0, (i + 1) / 4))
    assert float(m["gan/g_weight"]) == (0.0 if i + 1 < 3 else pytest.approx(0.2))
    for k in ("loss", "rec_loss", "perceptual_loss", "align_loss", "gan/d_total"):
      assert np.isfinite(m[k]), k
    assert -1.0 <= float(m["align_loss"]) <= 1.0
    assert float(m["perceptual_loss"]) > 0
    if i == 0:  # loss == rec + w_p * lpips + quantizer + 0.1 * align (+ 0 * g_adv before start)
      expected = (
        m["rec_loss"]
        + perceptual.perceptual_weight_at(1, 1.0, 4) * m["perceptual_loss"]
        + m["quantizer_loss"]
        + 0.1 * m["align_loss"]
      )
      np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
  moved = jax.tree.map(
    lambda a, b: not np.array_equal(a, b), proj0, jax.device_get(state.extra["align_proj"])
  )
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize(
  "overrides,key",
  [
    ({"loss.perceptual_weight": 1.0}, "loss.lpips_lin_path"),
    ({"loss.disc.weight": 0.2, "loss.disc.name": "dino"}, "loss.disc.dino_path"),
    ({"loss.align.weight": 0.1, "model.num_latent_tokens": 4}, "loss.align.teacher_path"),
  ],
)
def test_missing_weight_files_name_the_key(overrides, key, tmp_path):
  c = defaults.tokenizer_config("B", "quick")
  for k, v in overrides.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  with pytest.raises(WeightFileError, match=key.replace(".", r"\.")):
    validate(c)
  # A configured but absent file is named too.
  missing = str(tmp_path / "weights.safetensors")
  node = c
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = missing
  with pytest.raises(WeightFileError, match="weights.safetensors"):
    check_weight_files(c)
  c.loss.random_init = True
  check_weight_files(c)  # random weights allowed explicitly


def test_quick_uses_mse_patchgan_and_entropy():
  c = defaults.tokenizer_config("B", "quick")
  assert c.loss.rec_type == "l2" and c.loss.rec_weight == 1.0
  assert c.loss.disc.name == "patchgan" and c.loss.disc.weight > 0
  assert c.quantizer.entropy_loss_ratio > 0
  assert c.loss.perceptual_weight == 0 and c.loss.align.weight == 0
  assert frozen_nets.needed(c) == ()
