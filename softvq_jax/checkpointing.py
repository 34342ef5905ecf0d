"""All checkpoint I/O (the only module that imports Orbax).

Two kinds of checkpoints:
- training checkpoints under `<workdir>/checkpoints/<step>/` with the items `params`, `ema_params`,
  `train` (step, optimizer state, rng, loss state) and `config` (JSON); written atomically by Orbax
  (temporary directory, then rename), so a crash never leaves a half-written "latest" step;
- exported models (`save_model`/`load_model`): one params pytree plus `config.json`, the format the
  converters write and that evaluation, inference and the generators load.
Restores go into abstract targets that carry the current shardings, so a checkpoint written on 8
devices restores on 1 and vice versa.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from softvq_jax.utils.errors import UserError
from softvq_jax.utils.files import replace_dir
from softvq_jax.utils.paths import is_uri, user_path

ITEMS = ("params", "ema_params", "train")
SET_ASIDE = "checkpoints_set_aside"  # newer steps moved out of the way (never deleted)
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (disk full, no permission); earlier ones are intact."""


class CheckpointRestoreError(UserError):
  """No checkpoint of a workdir could be restored (each step's failure is in the message)."""


def _short_error(e: BaseException, directory: Any) -> str:
  """The first line of an exception, or the line naming a file under `directory` if one does."""
  text = f"{type(e).__name__}: {e}"
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  named = [ln for ln in lines if str(directory) in ln]
  line = (named or lines or [type(e).__name__])[0]
  return line if len(line) <= 300 else line[:297] + "..."


def to_json(obj: Any) -> Any:
  """ConfigDicts / numpy scalars -> plain JSON types."""
  if hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if isinstance(obj, dict):
    return {str(k): to_json(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return [to_json(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs of `tree`, with `shardings` attached if given."""
  if shardings is None:
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _remove_when_settled(tmp: Any, seconds: float = 30.0, quiet: float = 1.0) -> None:
  """Removes a failed write's temporary directory; Orbax's writer threads may still be adding
  files for a moment after the failure surfaced (longer on a busy machine), so removal is
  retried until the directory has stayed gone for `quiet` seconds."""
  deadline = time.time() + seconds
  gone_since, last_error = None, None
  while time.time() < deadline:
    try:
      if tmp.exists():
        gone_since = None
        tmp.rmtree() if tmp.is_dir() else tmp.unlink()
      gone_since = gone_since or time.time()
      if time.time() - gone_since >= quiet:
        return
    except FileNotFoundError:
      pass
    except OSError as e:
      last_error = e
    time.sleep(0.05)
  logging.warning("could not remove the failed write's %s (%s)", tmp, last_error or "it reappears")


class CheckpointManager:
  """Periodic/final training checkpoints with keep-last-N (+ keep-every-M) and resume.

  `save` is asynchronous when `async_save`; `wait()` blocks until writes are durable (called
  before exit). The Orbax preemption hook makes `should_save(step)` true when the job is being
  preempted on TPU, so the loop saves exactly then.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    max_to_keep: int = 3,
    keep_every: int = 0,
    save_every: int = 1,
    async_save: bool = True,
  ):
    self.workdir = user_path(workdir)
    self.directory = self.workdir / "checkpoints"
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      keep_period=keep_every or None,
      save_interval_steps=max(1, save_every),
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._unconfirmed = False  # a save was issued and its write not yet seen to succeed
    self._mngr = ocp.CheckpointManager(
      self.directory, options=options, item_names=(*ITEMS, "config", "data")
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def reload(self) -> None:
    """Re-reads the step list from disk (after steps were set aside)."""
    self._mngr.reload()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def reached_preemption(self, step: int) -> bool:
    """True on every process once JAX's preemption sync (TPU maintenance events) fired."""
    return self._mngr.reached_preemption(step)

  def should_save(self, step: int) -> bool:
    """True at the periodic interval and when a preemption has been signalled."""
    return self._mngr.should_save(step) or self._mngr.reached_preemption(step)

  def save(
    self, step: int, state: Any, *, config: Any = None, data_state: Any = None, force: bool = False
  ) -> bool:
    """Saves a TrainState-like object with fields params, ema_params and the rest as `train`."""
    params, ema_params, train = split_state(state)
    items = dict(
      params=ocp.args.StandardSave(params),
      ema_params=ocp.args.StandardSave(ema_params),
      train=ocp.args.StandardSave(train),
      config=ocp.args.JsonSave(to_json(config) if config is not None else {}),
      data=ocp.args.JsonSave(to_json(data_state) if data_state is not None else {}),
    )
    saved = self._mngr.save(step, args=ocp.args.Composite(**items), force=force)
    self._unconfirmed = self._unconfirmed or saved
    if saved:
      logging.info("Checkpoint for step %d being written to %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings) -> (state, data_state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    params, ema_params, train = split_state(abstract_state)
    restored = self._mngr.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(params),
        ema_params=ocp.args.StandardRestore(ema_params),
        train=ocp.args.StandardRestore(train),
        data=ocp.args.JsonRestore(),
      ),
    )
    state = merge_state(
      abstract_state, restored["params"], restored["ema_params"], restored["train"]
    )
    return state, dict(restored["data"] or {})

  def restore_params(self, abstract_params: Any, *, ema: bool = True, step: int | None = None):
    """Restores only the (EMA) params item, e.g. for evaluation."""
    step = self.latest_step() if step is None else step
    item = "ema_params" if ema else "params"
    out = self._mngr.restore(
      step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)})
    )
    return out[item]

  def restore_good(
    self, abstract_state: Any, step: int | None = None, accept: Any = None
  ) -> tuple[Any, dict, int]:
    """The newest restorable checkpoint at or before `step` -> (state, data_state, its step).

    A step that fails to restore (truncated or missing files) or that `accept(state)` rejects
    (e.g. non-finite values) is logged with its step and file, and the next older one is tried.
    Nothing is deleted; newer steps than the one restored are moved to `<workdir>/{SET_ASIDE}/`
    so that training can write those step numbers again.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointRestoreError(
          f"ckpt.restore_step={step}: no such checkpoint in {self.directory}; "
          f"available steps: {sorted(steps)}"
        )
      steps = [s for s in steps if s <= step]
    failures = []
    for s in steps:
      try:
        state, data_state = self.restore(abstract_state, s)
        problem = None if accept is None else accept(state)
      except Exception as e:  # noqa: BLE001 -- any failure of one step means: try the previous
        problem = _short_error(e, self.directory)
      if problem is None:
        if failures or (step is not None and step != max(self.all_steps())):
          self.set_aside([n for n in self.all_steps() if n > s])
        return state, data_state, s
      failures.append(f"step {s}: {problem}")
      logging.error(
        "checkpoint step %d in %s cannot be used (%s); falling back to the previous one",
        s,
        self.directory,
        problem,
      )
    raise CheckpointRestoreError(
      f"no checkpoint in {self.directory} could be restored ({'; '.join(failures)}). Nothing was "
      "deleted; start a new --workdir, or repair/remove the damaged step directories"
    )

  def set_aside(self, steps: list[int]) -> None:
    """Moves step directories to `<workdir>/checkpoints_set_aside/` (process 0), then reloads."""
    if steps and jax.process_index() == 0:
      dest = self.workdir / SET_ASIDE
      dest.mkdir(parents=True, exist_ok=True)
      for n in sorted(steps):
        target = dest / f"{n}.{time.strftime('%Y%m%d-%H%M%S')}"
        (self.directory / str(n)).rename(target)
        logging.warning("moved newer checkpoint step %d out of the way to %s", n, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("softvq_jax set_aside")
    self.reload()

  def check_for_errors(self) -> None:
    """Raises CheckpointWriteError if an asynchronous save has failed (call once per step; only
    does work while a save is not yet confirmed)."""
    if not self._unconfirmed:
      return
    try:
      self._mngr.check_for_errors()
      if not self._mngr.is_saving_in_progress():
        self._mngr.wait_until_finished()  # a no-op unless the finished save failed
        self._unconfirmed = False
    except Exception as e:  # noqa: BLE001
      raise self._write_error(e) from e

  def _write_error(self, e: BaseException) -> CheckpointWriteError:
    """One clear message for a failed save; removes the failed write's temporary directory."""
    try:  # let the write's other threads stop before removing what they wrote
      self._mngr.wait_until_finished()
    except Exception:  # noqa: BLE001 -- the same failure, reported below
      pass
    for tmp in self.directory.glob(f"*{_TMP_SUFFIX}*") if self.directory.exists() else []:
      if jax.process_index() == 0:
        _remove_when_settled(tmp)
    try:  # local disks only (shutil on a gs:// path would look for a local folder "gs:")
      if is_uri(self.directory):
        raise ValueError
      free = f"{shutil.disk_usage(os.fspath(self.directory)).free / 2**30:.2f} GiB free there"
    except (OSError, ValueError):
      free = "free space unknown"
    self.reload()
    last = self.latest_step()
    kept = f"the last committed checkpoint is step {last}" if last is not None else "none saved"
    return CheckpointWriteError(
      f"writing a checkpoint to {self.directory} failed ({_short_error(e, self.directory)}; "
      f"{free}); {kept}. Free space or fix permissions, then rerun the same command to resume"
    )

  def wait(self) -> None:
    """Blocks until every write is committed; a failed write raises CheckpointWriteError."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_error(e) from e

  def close(self) -> None:
    self.wait()
    self._mngr.close()


def split_state(state: Any) -> tuple[Any, Any, dict]:
  """TrainState -> (params, ema_params, everything else as a dict)."""
  fields = dict(state.__dict__) if not isinstance(state, dict) else dict(state)
  params = fields.pop("params")
  ema_params = fields.pop("ema_params")
  return params, ema_params, fields


def merge_state(template: Any, params: Any, ema_params: Any, train: dict) -> Any:
  """Inverse of split_state, rebuilding the template's type."""
  if isinstance(template, dict):
    return dict(train, params=params, ema_params=ema_params)
  return template.replace(params=params, ema_params=ema_params, **train)


def read_checkpoint_config(workdir: str | os.PathLike, step: int | None = None) -> dict:
  """The config JSON saved with a training checkpoint (latest step by default)."""
  mngr = ocp.CheckpointManager(
    user_path(workdir) / "checkpoints", item_names=(*ITEMS, "config", "data")
  )
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  return dict(mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


# ---------------------------------------------------------------------------------------------
# Exported models: DIR/params (Orbax pytree) + DIR/config.json.


def save_model(out_dir: str | os.PathLike, params: Any, config: Any, *, overwrite: bool = False):
  """Writes params + config.json into `out_dir`, local or gs://, so that it appears complete.

  Local: built in a temporary sibling folder, then renamed into place. gs:// (folders cannot be
  renamed there): written in place, config.json last, so `load_model` (which needs both) never
  takes a half-written model; an overwritten model is removed first.
  """
  out = user_path(out_dir)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
  config_text = json.dumps(to_json(config), indent=2, sort_keys=True)
  ckptr = ocp.StandardCheckpointer()
  if is_uri(out):
    if out.exists():
      out.rmtree()
    ckptr.save(out / "params", jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
    (out / "config.json").write_text(config_text)
    logging.info("Saved model to %s", out)
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    ckptr.save(tmp / "params", jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
    (tmp / "config.json").write_text(config_text)
    replace_dir(tmp, out)
  finally:
    tmp.rmtree(missing_ok=True)
  logging.info("Saved model to %s", out)
  return out


def load_model(model_dir: str | os.PathLike, shardings: Any = None) -> tuple[Any, dict]:
  """Reads (params, config dict) written by `save_model`; arrays land on `shardings` if given."""
  d = user_path(model_dir)
  cfg_path, params_path = d / "config.json", d / "params"
  if not cfg_path.is_file() or not params_path.exists():
    raise FileNotFoundError(
      f"{d} is not an exported softvq_jax model (needs config.json and params/); create one with "
      "`python -m softvq_jax.convert ...` or `python -m softvq_jax.export --workdir ...`"
    )
  config = json.loads(cfg_path.read_text())
  ckptr = ocp.StandardCheckpointer()
  if shardings is None:
    meta = ckptr.metadata(params_path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), tree
    )
  else:
    target = shardings
  params = ckptr.restore(params_path, target)
  return params, config
