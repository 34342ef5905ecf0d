"""Mesh construction, parameter shardings, global batches and checkpoint round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from softvq_jax import checkpointing, sharding
from softvq_jax.training import optim
from softvq_jax.training.train_state import TrainState


def test_mesh_uses_auto_axes_and_all_devices():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data", "fsdp") and mesh.devices.size == 8
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(sharding.make_mesh(-1, 4).shape) == {"data": 2, "fsdp": 4}
  with pytest.raises(ValueError, match="mesh.fsdp"):
    sharding.make_mesh(-1, 3)
  with pytest.raises(ValueError, match="number of devices"):
    sharding.make_mesh(3, 1)


def test_fsdp_shards_large_params_only():
  mesh = sharding.make_mesh(-1, 4)
  tree = {
    "big": jax.ShapeDtypeStruct((1024, 768), jnp.float32),
    "small": jax.ShapeDtypeStruct((768,), jnp.float32),
    "odd": jax.ShapeDtypeStruct((1023, 1021), jnp.float32),
  }
  sh = sharding.param_shardings(tree, mesh)
  assert sh["big"].spec == P("fsdp", None)
  assert sh["small"].spec == P() and sh["odd"].spec == P()
  sh = sharding.param_shardings(tree, mesh, rules=[("big", P(None, "fsdp"))])
  assert sh["big"].spec == P(None, "fsdp")
  # Pure data parallelism replicates everything.
  assert sharding.param_shardings(tree, sharding.make_mesh())["big"].spec == P()


def test_global_batch_and_batch_size_check():
  mesh = sharding.make_mesh()
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = sharding.global_batch({"x": x}, mesh)["x"]
  assert g.shape == (16, 3) and len(g.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(g), x)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.check_batch_size(12, mesh)


def _state(seed=0, shape=(64, 32)):
  params = {"w": jax.random.normal(jax.random.PRNGKey(seed), shape), "b": jnp.zeros(shape[-1])}
  tx = optim.make_optimizer("adamw", 1e-3, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
  state = TrainState.create(params, tx, jax.random.PRNGKey(1), extra={"lecam": jnp.zeros(2)})
  return state.replace(step=jnp.asarray(7, jnp.int32))


def test_checkpoint_round_trip_across_device_counts(tmp_path):
  state = _state()
  mesh8 = sharding.make_mesh(-1, 8)
  sh8 = sharding.param_shardings(state, mesh8, min_fsdp_size=1)
  state8 = jax.device_put(state, sh8)
  mngr = checkpointing.CheckpointManager(tmp_path, max_to_keep=2, save_every=1, async_save=False)
  mngr.save(7, state8, config={"a": 1}, data_state={"next_step": 7})
  mngr.wait()
  # Restore on a single device.
  mesh1 = sharding.make_mesh(devices=jax.devices()[:1])
  sh1 = sharding.param_shardings(state, mesh1)
  restored, data_state = mngr.restore(checkpointing.abstract_like(state, sh1))
  assert data_state == {"next_step": 7}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(jax.tree.leaves(restored)[0].sharding.device_set) == 1
  assert checkpointing.read_checkpoint_config(tmp_path) == {"a": 1}
  ema = mngr.restore_params(checkpointing.abstract_like(state.ema_params, sh1.ema_params))
  np.testing.assert_array_equal(np.asarray(ema["w"]), np.asarray(state.ema_params["w"]))
  mngr.close()


def test_keep_last_n(tmp_path):
  state = _state(shape=(4, 4))
  mngr = checkpointing.CheckpointManager(tmp_path, max_to_keep=2, save_every=1, async_save=False)
  for step in (1, 2, 3):
    mngr.save(step, state.replace(step=jnp.asarray(step)))
  mngr.wait()
  assert mngr.all_steps() == [2, 3] and mngr.latest_step() == 3
  mngr.close()


def test_export_model_round_trip_and_errors(tmp_path):
  params = {"enc": {"kernel": np.random.rand(3, 4).astype(np.float32)}}
  out = checkpointing.save_model(tmp_path / "m", params, {"model": {"image_size": 64}})
  loaded, cfg = checkpointing.load_model(out)
  np.testing.assert_array_equal(np.asarray(loaded["enc"]["kernel"]), params["enc"]["kernel"])
  assert cfg == {"model": {"image_size": 64}}
  with pytest.raises(FileExistsError):
    checkpointing.save_model(out, params, {})
  with pytest.raises(FileNotFoundError, match="not an exported"):
    checkpointing.load_model(tmp_path / "missing")
