"""The full tokenizer objective in the trainer: every term on (random-init frozen nets), files.

The two all-terms tests share one 4-step training run (a module fixture): the trainer's one
compile of the full step, its TensorBoard scalars (every step) and its checkpoints are what both
check, which keeps the most expensive graph of the suite to a single compile.
"""

import jax
import numpy as np
import pytest
from test_tokenizer_trainer import tiny_config

from softvq_jax import checkpointing, sharding
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
  # 48 px: VGG16's deepest maps are 3x3 (at 32 px they are 2x2, where XLA's unoptimised CPU
  # convolutions are ~5x slower); teacher patch 8 -> 6x6 = 36 teacher tokens; 4 latent tokens
  # (2 per codebook) -> repeat x9
  "model.image_size": 48,
  "loss.align.teacher_patch_size": 8,
  "model.num_latent_tokens": 4,
}


def _read_scalars(workdir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar in the run's TensorBoard event files."""
  from tensorflow.core.util import event_pb2
  from tensorflow.python.framework import tensor_util
  from tensorflow.python.lib.io import tf_record

  out: dict[str, dict[int, float]] = {}
  for path in workdir.glob("events.out.tfevents.*"):
    for record in tf_record.tf_record_iterator(str(path)):
      event = event_pb2.Event.FromString(record)
      for v in event.summary.value:
        if v.HasField("tensor") and not v.tensor.string_val:
          value = np.asarray(tensor_util.MakeNdarray(v.tensor)).reshape(-1)
          if value.size != 1:
            continue  # hparams metadata
          value = float(value[0])
        elif v.HasField("simple_value"):
          value = float(v.simple_value)
        else:
          continue  # images
        out.setdefault(v.tag, {})[int(event.step)] = value
  return out


@pytest.fixture(scope="module")
def all_terms_run(tmp_path_factory):
  """One 4-step training run with every term on, logged every step, checkpointed at steps 2 and
  4: both tests below read it (one compile of the full step instead of one per test).

  Returns (config, workdir, summary, scalars) with scalars = {tag: {step: value}}."""
  config = tiny_config(
    **ALL_TERMS,
    total_steps=4,
    log_every=1,
    eval_every=4,
    image_every=4,
    **{"ckpt.save_every": 2, "ckpt.keep": 2},
  )
  workdir = tmp_path_factory.mktemp("all_terms") / "run"
  summary = loop.train(TokenizerTask, config, str(workdir))
  return config, workdir, summary, _read_scalars(workdir)


def test_every_term_trains_and_is_logged(all_terms_run):
  _, _, summary, scalars = all_terms_run
  assert summary["total_steps"] == 4
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
    assert term in scalars, (term, sorted(scalars))
    assert sorted(scalars[term]) == [1, 2, 3, 4], (term, scalars[term])  # logged every step


def test_all_terms_step_values(all_terms_run):
  """Per step: the weighted sum, the LPIPS ramp, D off before disc_start, projector trained
  (one optimizer for the tokenizer and the projector, which stays out of params / EMA)."""
  config, workdir, _, scalars = all_terms_run
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=4, warmup_steps=2)
  assert set(task.frozen_params()) == {"lpips", "dino", "teacher"}
  abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  assert set(abstract.opt_state[1][0].mu) == {"model", "align_proj"}  # one optimizer, both trees
  assert "align_proj" not in abstract.params and "align_proj" not in abstract.ema_params
  for step in (1, 2, 3, 4):
    m = {k: v[step] for k, v in scalars.items() if step in v}
    assert m["perceptual_weight"] == pytest.approx(min(1.0, step / 4))
    assert m["gan/g_weight"] == (0.0 if step < 3 else pytest.approx(0.2))
    for k in ("loss", "rec_loss", "perceptual_loss", "align_loss", "gan/d_total"):
      assert np.isfinite(m[k]), k
    assert -1.0 <= m["align_loss"] <= 1.0
    assert m["perceptual_loss"] > 0
    if step == 1:  # loss == rec + w_p * lpips + quantizer + 0.1 * align (+ 0 * g_adv before start)
      expected = (
        m["rec_loss"]
        + perceptual.perceptual_weight_at(1, 1.0, 4) * m["perceptual_loss"]
        + m["quantizer_loss"]
        + 0.1 * m["align_loss"]
      )
      np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
  # The projector (in state.extra) moved between the checkpoints of steps 2 and 4.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = checkpointing.abstract_like(abstract, jax.tree.map(lambda _: device, abstract))
  mngr = checkpointing.CheckpointManager(workdir, async_save=False)
  assert mngr.all_steps() == [2, 4]
  proj = {s: jax.device_get(mngr.restore(target, s)[0].extra["align_proj"]) for s in (2, 4)}
  mngr.close()
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), proj[2], proj[4])
  assert jax.tree.leaves(moved) and all(jax.tree.leaves(moved))


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
