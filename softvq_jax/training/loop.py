"""The one training loop, shared by the tokenizer and the generators.

A `Task` supplies the pure pieces (state init, train step) and host-side evaluation/images; the
loop owns the mesh, data, sharding, jit, checkpoints (with automatic resume), metric writing and
progress reporting.
"""

from __future__ import annotations

import itertools
import json
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from softvq_jax import checkpointing, sharding
from softvq_jax.data import preprocess
from softvq_jax.training import flops as flops_lib
from softvq_jax.training import guards, optim, signals
from softvq_jax.training import workdir as workdir_lib
from softvq_jax.training.progress import Progress
from softvq_jax.training.task import Task, local_eval_batch  # noqa: F401 -- loop.Task for trainers
from softvq_jax.utils import images as image_utils
from softvq_jax.utils import paths, profiling


def _reduce(history: list[dict]) -> tuple[dict[str, float], dict[str, np.ndarray], list[float]]:
  """Means of scalar metrics over a window, sums of `*_counts` arrays, per-step skip flags.

  Under nan_policy=skip_step a skipped step's metrics are NaN: means are over the kept steps,
  and a metric with no kept step in the window is left out.
  """
  host = jax.device_get(history)
  means, sums = {}, {}
  skipped = [float(h.get(guards.SKIPPED, 0.0)) for h in host]
  for key in host[0]:
    values = [h[key] for h in host]
    if key.endswith("_counts"):
      sums[key] = np.sum(values, axis=0)
    elif any(skipped) and key != guards.SKIPPED:
      kept = [v for v, s in zip(values, skipped, strict=True) if not s]
      if kept:
        means[key] = float(np.mean(kept))
    else:
      means[key] = float(np.mean(values))
  return means, sums, skipped


class _EvalHistory:
  """Append-only eval log (jsonl) so the first/last comparison survives restarts."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / "eval_history.jsonl"

  def append(self, step: int, metrics: dict[str, float]):
    if jax.process_index() == 0:
      line = json.dumps({"step": step, **metrics}) + "\n"
      if paths.is_uri(self.path):  # object stores cannot append
        self.path.write_text((self.path.read_text() if self.path.exists() else "") + line)
      else:
        with self.path.open("a") as f:
          f.write(line)

  def read(self) -> list[dict]:
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def train(task_cls: type[Task], config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) `task_cls` under `config`, writing everything to `workdir`.

  One trainer per workdir (a lock); SIGTERM/SIGINT save and raise signals.TrainingStopped.
  """
  workdir = paths.user_path(workdir)
  is_main = jax.process_index() == 0
  created = is_main and not workdir.exists()
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir_lib.WorkdirLock(workdir) if is_main else None
  if lock is not None:
    lock.acquire()
  try:
    with signals.StopRequest() as stop:
      return _train(task_cls, config, workdir, stop)
  finally:
    if lock is not None:
      lock.release()
    if created and not list(workdir.iterdir()):  # refused before writing anything: no trace
      workdir.rmdir()


def _restore_or_init(task, config, ckpt, abstract, state_shardings, rng, finite_fn):
  """The newest good checkpoint (after the resume check), else a fresh state -> (state, step)."""
  latest = ckpt.latest_step()
  if latest is None:
    state = jax.jit(task.init_state, out_shardings=state_shardings)(rng)
    return task.post_init(state), None
  saved = checkpointing.read_checkpoint_config(ckpt.workdir, latest)
  new = checkpointing.to_json(config)
  for change in workdir_lib.check_resume(saved, new, ckpt.workdir, latest):
    logging.warning("resuming with a changed setting: %s", change)
  state, _, step = ckpt.restore_good(
    checkpointing.abstract_like(abstract, state_shardings),
    step=config.ckpt.get("restore_step", 0) or None,
    accept=lambda st: None if bool(finite_fn(st)) else "non-finite values",
  )
  logging.info("Resumed from %s at step %d", ckpt.directory, step)
  return state, step


def _write_config(workdir: epath.Path, config, resumed_step: int | None) -> None:
  """config.json of the run; a previous, different one is kept as config.step<N>.json."""
  path, text = workdir / "config.json", json.dumps(checkpointing.to_json(config), indent=2)
  if jax.process_index() != 0:
    return
  if resumed_step is not None and path.exists() and path.read_text() != text:
    path.rename(workdir / f"config.step{resumed_step}.json")
  path.write_text(text)


def _train(task_cls, config, workdir: epath.Path, stop: signals.StopRequest) -> dict:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  sharding.check_batch_size(config.batch_size, mesh)
  train_data, eval_data = task_cls.build_data(config)  # bad data fails before anything is written
  total_steps, warmup_steps = optim.steps_from(config, train_data.num_examples)
  task = task_cls(config, mesh, total_steps, warmup_steps)

  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(task.init_state, rng)
  state_shardings = sharding.param_shardings(abstract, mesh, task.sharding_rules())
  finite_fn = jax.jit(guards.all_finite, in_shardings=(state_shardings,))
  ckpt = checkpointing.CheckpointManager(
    workdir,
    max_to_keep=config.ckpt.keep,
    keep_every=config.ckpt.keep_every,
    save_every=config.ckpt.save_every,
    async_save=config.ckpt.async_save,
  )
  state, resumed = _restore_or_init(task, config, ckpt, abstract, state_shardings, rng, finite_fn)
  _write_config(workdir, config, resumed)
  start_step = int(jax.device_get(state.step))
  _log_run(config, task, abstract, mesh, train_data, eval_data, total_steps, warmup_steps)

  policy = config.get("nan_policy", "stop")
  step_core = task.train_step if policy == "stop" else guards.skip_nonfinite(task.train_step)
  batch_sharding = sharding.batch_sharding(mesh)
  frozen = sharding.replicate(task.frozen_params(), mesh)
  step_fn = jax.jit(
    # uint8 batches (data.uint8_transfer) become [-1, 1] floats on device, inside the step.
    lambda state, batch, frozen: step_core(state, preprocess.float_images(batch), frozen),
    in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  is_main = jax.process_index() == 0
  writer = _writer(workdir, is_main)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  progress = Progress(total_steps, start_step, config.batch_size)
  prof = config.get("profile", {})
  profiler = profiling.StepProfiler(
    workdir / "profile", prof.get("start_step", 0), prof.get("num_steps", 0), enabled=is_main
  )
  history, evals = [], _EvalHistory(workdir)

  def save(step, force=False):
    """Saves `state` at `step` unless it is not finite (then: the divergence error)."""
    if not (force or ckpt.should_save(step)):
      return
    with progress.excluded():
      if not bool(finite_fn(state)):
        ckpt.wait()
        raise guards.NonFiniteError(
          guards.divergence_message("state", step, ckpt.latest_step(), ckpt.directory)
        )
      ckpt.save(step, state, config=config, data_state={"next_step": step}, force=force)

  consecutive_skips = 0

  def report(step, means, skipped):
    nonlocal consecutive_skips
    for flag in skipped:
      consecutive_skips = consecutive_skips + 1 if flag else 0
    if any(skipped):
      logging.warning(
        "nan_policy=skip_step: dropped %d non-finite update(s) in the window ending at step %d",
        sum(map(bool, skipped)),
        step,
      )
    bad = [k for k, v in means.items() if not np.isfinite(v)]
    if consecutive_skips >= guards.MAX_CONSECUTIVE_SKIPS:
      bad = [f"updates in {consecutive_skips} consecutive steps"]
    if bad:
      ckpt.wait()
      raise guards.NonFiniteError(
        guards.divergence_message(f"{bad}", step, ckpt.latest_step(), ckpt.directory)
      )
    skipped = getattr(train_data, "num_skipped", 0)
    means.update(progress.window(step, means), **{"data/skipped": float(skipped)})
    writer.write_scalars(step, means)

  batches = train_data.iterator(start_step)
  step = start_step
  last_step = min(total_steps, config.get("stop_after", 0) or total_steps)
  t0 = time.time()
  try:
    feed = (sharding.global_batch(b, mesh) for b in batches)
    first_batch = next(feed) if start_step < last_step else None
    with progress.excluded():
      # Compiled once, here, so that its cost analysis gives the FLOPs of a step (MFU); the
      # loop calls this executable (no second compilation).
      compiled, perf = _compile(step_fn, (state, first_batch, frozen), config)
    progress.set_perf(**perf)
    feed = itertools.chain([first_batch], feed)
    for step in range(start_step + 1, last_step + 1):
      profiler.before(step, state)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = compiled(state, next(feed), frozen)
      profiler.after(step, state)
      history.append(metrics)
      ckpt.check_for_errors()  # a failed asynchronous write surfaces here, at the next step
      signum = stop.requested() or (signals.PREEMPTED if ckpt.reached_preemption(step) else None)
      if step % config.log_every == 0 or step == last_step or signum:
        means, sums, skipped = _reduce(history)
        history = []
        means.update(task.window_metrics(sums))
        report(step, means, skipped)
      if signum:
        save(step, force=True)
        ckpt.wait()
        raise signals.TrainingStopped(signum, step, _stopped_message(signum, step, ckpt))
      if step != last_step:
        save(step)
      with progress.excluded():
        if step % config.eval_every == 0 or step == last_step:
          _run_eval(task, state, eval_data, step, writer, evals)
        if step % config.image_every == 0 or step == last_step:
          _run_images(task, state, eval_data, step, writer, workdir, is_main)
    if step > start_step and ckpt.latest_step() != step:
      save(step, force=True)
    ckpt.close()
  finally:
    profiler.close()
    batches.close() if hasattr(batches, "close") else None
    try:
      writer.flush()
    except Exception as e:  # noqa: BLE001 -- e.g. a full disk: keep the error that stopped us
      logging.warning("could not flush the summaries in %s: %s", workdir, e)
  logging.info("Done %d steps in %.1fs", step - start_step, time.time() - t0)
  if hasattr(train_data, "read_counts"):  # each process reads only its slice of every batch
    logging.info(
      "input: process %d/%d read %s",
      jax.process_index(),
      jax.process_count(),
      " ".join(f"{k}={v}" for k, v in train_data.read_counts().items()),
    )
  summary = _summary(evals.read(), total_steps)
  summary["data_skipped"] = int(getattr(train_data, "num_skipped", 0))  # replaced train samples
  summary["eval_skipped"] = int(getattr(eval_data, "num_skipped", 0))  # items left out per pass
  if is_main:
    (workdir / "eval_summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _compile(step_fn, args, config):
  """(callable step, Progress' perf kwargs): the step compiled once, and its FLOPs and peak.

  FLOPs are per device (XLA's cost analysis of the partitioned module), x grad_accum_steps
  since a scan body is counted once. Without a batch (nothing left to train) the jitted step.
  """
  if args[1] is None:
    return step_fn, {}
  t = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  step_flops = flops_lib.compiled_flops(compiled)
  if step_flops:
    step_flops *= max(int(config.optim.get("grad_accum_steps", 1) or 1), 1)
  kind = jax.devices()[0].device_kind
  peak = flops_lib.peak_tflops(kind, float(config.get("peak_tflops", 0.0) or 0.0))
  logging.info(
    "train step compiled in %.1fs: %s per device per step, peak %s (%s)",
    time.perf_counter() - t,
    f"{step_flops / 1e9:.4g} GFLOP" if step_flops else "FLOPs unknown",
    f"{peak:g} TFLOP/s" if peak else "unknown (set config.peak_tflops for MFU)",
    kind,
  )
  return compiled, {"step_flops": step_flops, "peak_tflops": peak}


def _stopped_message(signum: int, step: int, ckpt) -> str:
  return (
    f"{signal.Signals(signum).name if signum > 0 else 'preemption'}: saved step {step} to "
    f"{ckpt.directory}; rerun the same command to resume from it"
  )


def _writer(workdir: epath.Path, is_main: bool):
  """TensorBoard summaries on process 0 (the console gets the progress line, not every scalar)."""
  from clu import metric_writers  # imports TensorFlow: only when a run writes summaries

  if not is_main:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))


def _run_eval(task, state, eval_data, step, writer, evals):
  metrics = task.evaluate(state, eval_data, step)
  if metrics:
    writer.write_scalars(step, metrics)
    evals.append(step, metrics)
    logging.info("eval @ %d: %s", step, _fmt(metrics))


def _run_images(task, state, eval_data, step, writer, workdir, is_main):
  for name, grid in task.images(state, eval_data, step).items():
    if is_main:
      image_utils.save_png(workdir / "images" / f"{name}_{step:07d}.png", grid)
    writer.write_images(step, {name: grid[None]})


def _log_run(config, task, abstract, mesh, train_data, eval_data, total_steps, warmup_steps):
  """The resolved run, once: model size, devices and mesh, data, steps."""
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  extra = count(abstract.extra)
  logging.info(
    "%s %s: %.2fM trainable params%s | %d devices (%s) on %d process(es), mesh %s | data %s: %d "
    "train / %d eval examples, global batch %d | %d steps (%d warm-up)",
    config.trainer,
    config.model.get("name", config.get("variant", "")),
    count(abstract.params) / 1e6,
    f" (+{extra / 1e6:.2f}M loss state)" if extra else "",
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
    dict(mesh.shape),
    config.data.name,
    train_data.num_examples,
    getattr(eval_data, "num_examples", 0),
    config.batch_size,
    total_steps,
    warmup_steps,
  )


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
