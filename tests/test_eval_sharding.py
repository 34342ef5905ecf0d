"""In-training evaluation: sharded over the mesh, padded batches masked, equal counts per host."""

import jax
import jax.numpy as jnp
import numpy as np
from test_tokenizer_trainer import tiny_config

from softvq_jax import data, sharding
from softvq_jax.evaluation import image_metrics
from softvq_jax.training import eval_batches
from softvq_jax.training.tokenizer import TokenizerTask


def _eval_data(config, batch_size):
  return data.build_eval_data(
    config.data, image_size=config.model.image_size, batch_size=batch_size
  )


def test_sharded_eval_equals_a_direct_computation_on_any_mesh():
  config = tiny_config(**{"data.eval_crops": 3})  # 2 held-out photos x 3 views = 6 images
  ev = _eval_data(config, batch_size=4)  # batches of 4 (+ padding to 8 devices), 2 batches
  one = TokenizerTask(config, sharding.make_mesh(devices=jax.devices()[:1]), 4, 2)
  state = jax.jit(one.init_state)(jax.random.PRNGKey(0))
  state = state.replace(params=jax.tree.map(lambda p: p * 1.01, state.params))  # EMA != raw
  got1 = one.evaluate(state, ev, 0)
  mesh8 = sharding.make_mesh(config.mesh.data, 2)
  eight = TokenizerTask(tiny_config(**{"data.eval_crops": 3, "mesh.fsdp": 2}), mesh8, 4, 2)
  abstract = jax.eval_shape(eight.init_state, jax.random.PRNGKey(0))
  shard = sharding.param_shardings(abstract, mesh8, min_fsdp_size=1)
  got8 = eight.evaluate(jax.device_put(state, shard), ev, 0)
  for k in got1:
    np.testing.assert_allclose(got8[k], got1[k], rtol=1e-5, err_msg=k)
  # Direct: every real image once, per-image metrics averaged.
  x = np.concatenate([b["image"][b["mask"]] for b in ev.iterator()])
  assert len(x) == 6
  for prefix, params in (("ema", state.ema_params), ("raw", state.params)):
    rec = np.asarray(one.model.apply({"params": params}, jnp.asarray(x))[0])
    xu8, ru8 = image_metrics.to_uint8(x), image_metrics.to_uint8(rec)
    np.testing.assert_allclose(
      got1[f"eval/{prefix}_psnr"], np.mean(image_metrics.psnr(xu8, ru8, 255.0)), rtol=1e-5
    )
    np.testing.assert_allclose(
      got1[f"eval/{prefix}_ssim"], np.mean(image_metrics.ssim(xu8, ru8, 255.0)), rtol=1e-5
    )
  assert got1["eval/ema_psnr"] != got1["eval/raw_psnr"]


def test_every_process_runs_the_same_number_of_eval_batches(monkeypatch):
  config = tiny_config(**{"data.eval_crops": 3})
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  # 6 items over 2 processes with batch 2: 3 items each -> 2 batches each; process 1 of 2 that
  # holds fewer items still yields 2 (the last fully masked when its data runs out).
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert eval_batches.num_batches(6, 2) == 2 and eval_batches.num_batches(7, 2) == 2
  assert eval_batches.num_batches(6, 2, max_examples=2) == 1
  monkeypatch.undo()
  few = _eval_data(config, batch_size=2)
  few._items = few._items[:3]  # this host's share ran short (e.g. skipped images)
  batches = list(eval_batches.global_eval_batches(few, mesh, limit=0))
  assert len(batches) == eval_batches.num_batches(few.num_examples, 2) == 3
  masks = [np.asarray(b["mask"]) for b in batches]
  assert [int(m.sum()) for m in masks] == [2, 1, 0]
