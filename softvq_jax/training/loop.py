"""The one training loop, shared by the tokenizer and the generators.

A `Task` supplies the pure pieces (state init, train step) and host-side evaluation/images; the
loop owns the mesh, data, sharding, jit, checkpoints (with automatic resume), metric writing and
progress reporting.
"""

from __future__ import annotations

import abc
import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from softvq_jax import checkpointing, data, sharding
from softvq_jax.data import preprocess
from softvq_jax.training import optim
from softvq_jax.training.train_state import TrainState
from softvq_jax.utils import images as image_utils


class Task(abc.ABC):
  """What a trainer plugs into the loop. Pure functions must not close over device arrays."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    total_steps: int,
    warmup_steps: int,
  ):
    self.config = config
    self.mesh = mesh
    self.total_steps = total_steps
    self.warmup_steps = warmup_steps

  @classmethod
  def build_data(cls, config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(train data, eval data) of this process for `config.data` (see data.build_train_data).

    A classmethod: the loop builds the data before the task (the step count depends on the
    training set's size). Tasks that build their own data override it.
    """
    kw = dict(
      image_size=config.model.image_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    train = data.build_train_data(
      config.data, global_batch=config.batch_size, seed=config.seed, **kw
    )
    return train, data.build_eval_data(config.data, batch_size=config.eval.batch_size, **kw)

  @abc.abstractmethod
  def init_state(self, rng: jax.Array) -> TrainState:
    """Fresh state from a key (pure: traced by eval_shape and jit)."""

  def post_init(self, state: TrainState) -> TrainState:
    """Host-side changes to a fresh (not resumed) state, e.g. loading pretrained weights."""
    return state

  def frozen_params(self) -> Any:
    """Frozen networks' weights (teachers, LPIPS, the tokenizer for generators), or None.

    Passed to every step as a jit argument (replicated), never closed over or checkpointed.
    """
    return None

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: dict, frozen: Any) -> tuple[TrainState, dict]:
    """One optimisation step (pure). Metrics: f32 scalars; keys ending in `_counts` are summed."""

  def sharding_rules(self) -> list:
    """(regex, PartitionSpec) overrides for the state's sharding."""
    return []

  def evaluate(self, state: TrainState, eval_data, step: int) -> dict[str, float]:
    """Host-side evaluation; returns scalars to log."""
    return {}

  def images(self, state: TrainState, eval_data, step: int) -> dict[str, np.ndarray]:
    """Named uint8 (H, W, 3) grids to write as PNG and TensorBoard images."""
    return {}

  def window_metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
    """Scalars derived from metrics summed over a logging window (e.g. codebook usage)."""
    return {}


def _reduce(history: list[dict]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Means of scalar metrics over a window, sums of `*_counts` arrays."""
  host = jax.device_get(history)
  means, sums = {}, {}
  for key in host[0]:
    values = [h[key] for h in host]
    if key.endswith("_counts"):
      sums[key] = np.sum(values, axis=0)
    else:
      means[key] = float(np.mean(values))
  return means, sums


class _EvalHistory:
  """Append-only eval log (jsonl) so the first/last comparison survives restarts."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "eval_history.jsonl"

  def append(self, step: int, metrics: dict[str, float]):
    if jax.process_index() == 0:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")

  def read(self) -> list[dict]:
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def train(task_cls: type[Task], config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) `task_cls` under `config`, writing everything to `workdir`."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  sharding.check_batch_size(config.batch_size, mesh)
  train_data, eval_data = task_cls.build_data(config)
  total_steps, warmup_steps = optim.steps_from(config, train_data.num_examples)
  logging.info(
    "Training for %d steps (%d warm-up), %d train examples",
    total_steps,
    warmup_steps,
    train_data.num_examples,
  )
  task = task_cls(config, mesh, total_steps, warmup_steps)

  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(task.init_state, rng)
  state_shardings = sharding.param_shardings(abstract, mesh, task.sharding_rules())
  ckpt = checkpointing.CheckpointManager(
    workdir,
    max_to_keep=config.ckpt.keep,
    keep_every=config.ckpt.keep_every,
    save_every=config.ckpt.save_every,
    async_save=config.ckpt.async_save,
  )
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(checkpointing.abstract_like(abstract, state_shardings))
    logging.info("Resumed from %s at step %d", ckpt.directory, int(state.step))
  else:
    state = jax.jit(task.init_state, out_shardings=state_shardings)(rng)
    state = task.post_init(state)
  start_step = int(jax.device_get(state.step))

  batch_sharding = sharding.batch_sharding(mesh)
  frozen = jax.device_put(task.frozen_params(), sharding.replicated(mesh))
  step_fn = jax.jit(
    # uint8 batches (data.uint8_transfer) become [-1, 1] floats on device, inside the step.
    lambda state, batch, frozen: task.train_step(state, preprocess.float_images(batch), frozen),
    in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  hooks = [
    periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer, every_steps=config.log_every
    )
  ]
  history, evals = [], _EvalHistory(workdir)

  def run_eval(step):
    metrics = task.evaluate(state, eval_data, step)
    if metrics:
      writer.write_scalars(step, metrics)
      evals.append(step, metrics)
      logging.info("eval @ %d: %s", step, _fmt(metrics))

  def run_images(step):
    for name, grid in task.images(state, eval_data, step).items():
      if is_main:
        image_utils.save_png(workdir / "images" / f"{name}_{step:07d}.png", grid)
      writer.write_images(step, {name: grid[None]})

  batches = train_data.iterator(start_step)
  step = start_step
  last_step = min(total_steps, config.get("stop_after", 0) or total_steps)
  t0 = time.time()
  try:
    for step in range(start_step + 1, last_step + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.global_batch(next(batches), mesh)
        state, metrics = step_fn(state, batch, frozen)
      history.append(metrics)
      if step % config.log_every == 0 or step == last_step:
        means, sums = _reduce(history)
        history = []
        bad = [k for k, v in means.items() if not np.isfinite(v)]
        if bad:
          raise FloatingPointError(
            f"non-finite {bad} at step {step}; the last good checkpoint is "
            f"{ckpt.latest_step()} in {ckpt.directory} (lower optim.lr or check the data)"
          )
        means.update(task.window_metrics(sums))
        writer.write_scalars(step, means)
      # After the window's metrics are fetched: steps run asynchronously, so only then does the
      # wall-clock time cover the steps actually computed (honest steps/s and ETA).
      for hook in hooks:
        hook(step)
      if ckpt.should_save(step) and step != last_step:
        ckpt.save(step, state, config=config, data_state={"next_step": step})
      if step % config.eval_every == 0 or step == last_step:
        run_eval(step)
      if step % config.image_every == 0 or step == last_step:
        run_images(step)
  finally:
    batches.close() if hasattr(batches, "close") else None
  if step > start_step and ckpt.latest_step() != step:
    ckpt.save(step, state, config=config, data_state={"next_step": step}, force=True)
  ckpt.close()
  writer.flush()
  logging.info("Done %d steps in %.1fs", step - start_step, time.time() - t0)
  summary = _summary(evals.read(), total_steps)
  if is_main:
    (workdir / "eval_summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _summary(history: list[dict], total_steps: int) -> dict:
  if not history:
    return {"total_steps": total_steps}
  first, last = history[0], history[-1]
  out = {"total_steps": total_steps, "first_eval": first, "final_eval": last}
  print(f"first eval (step {first['step']}): {_fmt(first)}")
  print(f"final eval (step {last['step']}): {_fmt(last)}")
  return out


def _fmt(metrics: dict) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step")


def _flat_hparams(config) -> dict:
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict | dict):
        walk(key + ".", v)
      elif isinstance(v, bool | int | float | str):
        flat[key] = v

  walk("", config)
  return flat
