"""Device mesh, parameter sharding rules and host-batch -> global-array conversion.

The mesh has two named axes, `data` (pure data parallelism: parameters replicated) and `fsdp`
(batch split as well, large parameters and optimizer state sharded along their largest dimension
divisible by the axis size). Model code carries no annotations: shardings come from
`param_shardings`, and XLA's SPMD partitioner inserts the collectives.

`local_mesh` + `local_batch_fn` are the per-process variant for host-driven work (feature
extraction, encoding a dataset): a 1-D mesh over this process's devices and a function of a host
batch split over it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
LOCAL_AXIS = "batch"  # the one axis of `local_mesh`


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh with Auto axis types; -1 for `data` takes all remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {n} devices")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(
      f"mesh.data * mesh.fsdp = {data} * {fsdp} must equal the number of devices ({n}); "
      "set mesh.data=-1 to use all devices"
    )
  return jax.make_mesh(
    (data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:  # largest dimension first
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(
  tree: Any,
  mesh: Mesh,
  rules: Sequence[tuple[str, P]] = (),
  min_fsdp_size: int = 2**18,
) -> Any:
  """NamedShardings for a pytree of arrays/ShapeDtypeStructs.

  `rules` are (regex over the '/'-joined path, PartitionSpec) pairs, first match wins; the default
  replicates small tensors and shards large ones over `fsdp` (no-op when the fsdp axis is 1).
  """
  fsdp = mesh.shape["fsdp"]
  compiled = [(re.compile(r), spec) for r, spec in rules]

  def one(path, x):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    shape = tuple(getattr(x, "shape", ()))
    for pattern, spec in compiled:
      if pattern.search(name):
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, _fsdp_spec(shape, fsdp, min_fsdp_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's share of a batch -> global arrays split over the mesh's batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def to_host(tree: Any) -> Any:
  """Full numpy copies of (possibly multi-host sharded) arrays; every process must call it.

  `jax.device_get` fails on arrays sharded across hosts (e.g. `mesh.fsdp>1` on a pod): those are
  all-gathered first. Arrays this process holds whole are copied directly.
  """

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host values or arrays (the same on every process) -> arrays replicated over `mesh`.

  Unlike `jax.device_put` of a device array, this works when the mesh spans several hosts
  (which would need a cross-host transfer): the values go through the host first.
  """
  return jax.device_put(to_host(tree), replicated(mesh))


def place(host_tree: Any, shardings: Any) -> Any:
  """Host arrays (the same on every process) -> global arrays with `shardings`, each device
  getting only its slice (no device_get / full device_put of sharded state)."""
  return jax.tree.map(
    lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
    host_tree,
    shardings,
  )


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over devices and processes."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
      f"batch_size={global_batch_size} is not divisible by the {n} devices of the mesh; "
      f"use a multiple of {n}"
    )
  if global_batch_size % jax.process_count():
    raise ValueError(
      f"batch_size={global_batch_size} is not divisible by the {jax.process_count()} processes"
    )


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh (axis "batch") over `devices`, default this process's devices."""
  devices = list(devices if devices is not None else jax.local_devices())
  return Mesh(np.asarray(devices), (LOCAL_AXIS,))


def local_batch_fn(
  apply: Callable[[Any, Any], Any], params: Any, mesh: Mesh | None = None
) -> Callable[[np.ndarray], Any]:
  """Host batch (n, ...) -> `apply(params, batch)` as a pytree of (n, ...) np.ndarrays.

  Runs on a `local_mesh` (default: all local devices): `params` are replicated once, the batch is
  padded (repeating its last row) to a multiple of the mesh size and split over it, and the
  padding is dropped from every output leaf. One compilation per batch shape.
  """
  mesh = mesh or local_mesh()
  size = mesh.devices.size
  split = NamedSharding(mesh, P(LOCAL_AXIS))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  fn = jax.jit(apply, out_shardings=split)

  def run(batch: np.ndarray) -> Any:
    batch = np.asarray(batch)
    n = len(batch)
    pad = -n % size
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
    out = fn(params, jax.device_put(batch, split))
    return jax.tree.map(lambda v: np.asarray(v)[:n], out)

  return run
