"""Nothing lost: stop signals, divergence, damaged checkpoints, failed writes, locks, resumes."""

import errno
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath
from recovery_helpers import (
  abstract_state,
  all_finite,
  hooked_task,
  leaves_equal,
  state_of,
  tiny_config,
)

from softvq_jax import checkpointing
from softvq_jax.training import guards, loop, signals
from softvq_jax.training import workdir as workdir_lib
from softvq_jax.training.tokenizer import TokenizerTask
from softvq_jax.training.train_state import TrainState

ROOT = pathlib.Path(__file__).parents[1]


def _cfg(**kw):
  base = {"total_steps": 6, "log_every": 1, "eval_every": 100, "image_every": 100}
  base.update(kw)
  return tiny_config(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run with checkpoints at steps 1 (Orbax's initial save), 2 and 4."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  config = _cfg(total_steps=4, **{"ckpt.keep": 5})
  loop.train(TokenizerTask, config, str(workdir))
  assert checkpointing.CheckpointManager(workdir).all_steps() == [1, 2, 4]
  return workdir, config


def _copy(trained, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(trained[0], dst)
  return dst


# --- stop signals -------------------------------------------------------------------------------


def test_sigterm_saves_that_step_and_the_rerun_resumes_exactly(trained, tmp_path):
  straight_dir, config = trained
  k = random.Random().randint(2, 3)

  def hook(step, batch):
    if step == k:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  workdir = tmp_path / "stopped"
  with pytest.raises(signals.TrainingStopped) as info:
    loop.train(hooked_task(hook), config, str(workdir))
  assert (info.value.step, info.value.exit_code) == (k, 0), k
  assert f"saved step {k}" in str(info.value) and "rerun the same command" in str(info.value)
  assert checkpointing.CheckpointManager(workdir).latest_step() == k
  assert not (workdir / workdir_lib.LOCK_NAME).exists()  # released
  loop.train(TokenizerTask, config, str(workdir))
  straight, resumed = state_of(straight_dir, config), state_of(workdir, config)
  assert int(resumed.step) == 4 and leaves_equal(straight, resumed) == 0, f"stopped at {k}"


def test_stop_request_handlers():
  assert signals.TrainingStopped(signal.SIGINT, 3, "").exit_code == 130
  assert signals.TrainingStopped(signal.SIGTERM, 3, "").exit_code == 0
  before = signal.getsignal(signal.SIGTERM)
  with signals.StopRequest() as stop:
    assert stop.requested() is None
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested() == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C aborts
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGTERM) is before


# --- divergence ---------------------------------------------------------------------------------


def test_divergence_never_saves_a_nonfinite_state_and_recovery_works(tmp_path):
  """lr=1e30 with metrics checked only every 100 steps: the save-step check must catch it."""
  workdir = tmp_path / "run"
  bad = _cfg(total_steps=8, log_every=100, **{"optim.lr": 1e30, "ckpt.save_every": 2})
  with pytest.raises(guards.NonFiniteError) as info:
    loop.train(TokenizerTask, bad, str(workdir))
  steps = checkpointing.CheckpointManager(workdir).all_steps()
  assert steps and all(all_finite(state_of(workdir, bad, s)) for s in steps)
  assert f"the last good checkpoint is step {max(steps)}" in str(info.value)
  assert "restore_step" in str(info.value) and "optim.lr" in str(info.value)
  # The documented way on: back to the first checkpoint, with a sane learning rate.
  good = _cfg(total_steps=8, log_every=100, **{"ckpt.save_every": 2, "ckpt.restore_step": 1})
  loop.train(TokenizerTask, good, str(workdir))
  final = state_of(workdir, good)
  assert int(final.step) == 8 and all_finite(final)
  set_aside = [p.name.split(".")[0] for p in (workdir / checkpointing.SET_ASIDE).iterdir()]
  assert sorted(int(s) for s in set_aside) == [s for s in steps if s > 1]


def test_skip_step_drops_exactly_the_nonfinite_update():
  tx = optax.sgd(0.1)
  params = {"w": jnp.ones(3)}
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))

  def step(state, x):
    grads = {"w": state.params["w"] * x}
    updates, opt = tx.update(grads, state.opt_state, state.params)
    new = optax.apply_updates(state.params, updates)
    metrics = {"loss": jnp.sum(new["w"])}
    return state.replace(step=state.step + 1, params=new, opt_state=opt), metrics

  guarded = jax.jit(guards.skip_nonfinite(step))
  s1, m1 = guarded(state, 1.0)
  assert float(m1[guards.SKIPPED]) == 0.0 and not np.array_equal(s1.params["w"], np.ones(3))
  s2, m2 = guarded(s1, jnp.nan)
  assert float(m2[guards.SKIPPED]) == 1.0 and np.isnan(float(m2["loss"]))
  assert int(s2.step) == 2 and leaves_equal(s1.params, s2.params) == 0
  assert leaves_equal(s1.ema_params, s2.ema_params) == 0


def test_skip_step_policy_trains_through_a_nan_batch(tmp_path):
  def hook(step, batch):
    return {**batch, "image": batch["image"] * np.nan} if step == 3 else batch

  # float batches: a NaN image needs them (the step is compiled for the first batch's dtype)
  config = _cfg(total_steps=4, nan_policy="skip_step", **{"data.uint8_transfer": False})
  summary = loop.train(hooked_task(hook), config, str(tmp_path / "run"))
  assert summary["total_steps"] == 4 and all_finite(state_of(tmp_path / "run", config))


# --- damaged checkpoints ------------------------------------------------------------------------


def _truncate_largest_array_file(step_dir):
  files = [p for p in (step_dir / "params").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])


def _empty(step_dir):
  for child in step_dir.iterdir():
    shutil.rmtree(child) if child.is_dir() else child.unlink()


def _drop_item(step_dir):
  shutil.rmtree(step_dir / "train")


@pytest.mark.parametrize("damage", [_truncate_largest_array_file, _empty, _drop_item])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, damage, caplog):
  workdir = _copy(trained, tmp_path)
  damage(workdir / "checkpoints" / "4")
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
  mngr = checkpointing.CheckpointManager(workdir, async_save=False)
  with caplog.at_level("ERROR"):
    state, _, step = mngr.restore_good(abstract_state(trained[1]))
  assert step == 2 and int(state.step) == 2
  assert any("step 4" in r.getMessage() for r in caplog.records)
  after = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
  moved = [f.replace("checkpoints/4/", "") for f in before if f.startswith("checkpoints/4/")]
  assert len(after) == len(before), "nothing is deleted"
  aside = [a for a in after if a.startswith(checkpointing.SET_ASIDE)]
  assert all(any(a.endswith(m) for a in aside) for m in moved)
  assert mngr.all_steps() == [1, 2]


def test_training_resumes_past_a_damaged_checkpoint_and_restore_step_chooses(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  _truncate_largest_array_file(workdir / "checkpoints" / "4")
  loop.train(TokenizerTask, _cfg(total_steps=5, **{"ckpt.keep": 5}), str(workdir))
  assert checkpointing.CheckpointManager(workdir).latest_step() == 5
  history = [json.loads(line)["step"] for line in (workdir / "eval_history.jsonl").open()]
  assert history == [4, 5]  # the damaged run's eval at 4, then the resumed run's final one
  with pytest.raises(checkpointing.CheckpointRestoreError, match="restore_step=3"):
    mngr = checkpointing.CheckpointManager(workdir)
    mngr.restore_good(None, step=3)


# --- failed writes ------------------------------------------------------------------------------


def test_a_failed_save_stops_with_one_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  real_write = epath.Path.write_text

  def full_disk(self, *args, **kwargs):
    if "checkpoints/4.orbax-checkpoint-tmp" in str(self):
      raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return real_write(self, *args, **kwargs)

  monkeypatch.setattr(type(epath.Path(tmp_path)), "write_text", full_disk)
  config = _cfg(**{"ckpt.save_every": 2, "ckpt.async_save": True})
  with pytest.raises(checkpointing.CheckpointWriteError) as info:
    loop.train(TokenizerTask, config, str(workdir))
  message = str(info.value)
  assert "No space left" in message and "GiB free" in message and "step 2" in message
  assert len(message.splitlines()) == 1
  monkeypatch.undo()
  assert checkpointing.CheckpointManager(workdir).all_steps() == [1, 2]
  assert all_finite(state_of(workdir, config, 2))
  assert not list((workdir / "checkpoints").glob("*tmp*")), "the failed write's tmp dir is gone"


# --- one trainer per workdir, compatible resumes ------------------------------------------------


def _lock_file(workdir, **info):
  workdir.mkdir(parents=True, exist_ok=True)
  now = time.time()
  lock = dict(pid=os.getpid(), host=socket.gethostname(), since=now, heartbeat=now)
  lock.update(info)
  (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(lock))


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path):
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _lock_file(tmp_path / "a", pid=other.pid)
    with pytest.raises(workdir_lib.WorkdirInUse) as info:
      loop.train(TokenizerTask, _cfg(), str(tmp_path / "a"))
    assert f"in use by pid {other.pid} on host {socket.gethostname()} since" in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [workdir_lib.LOCK_NAME]
    # Another host with a fresh heartbeat: in use; with an old one: stale.
    _lock_file(tmp_path / "b", host="elsewhere", pid=1)
    with pytest.raises(workdir_lib.WorkdirInUse):
      workdir_lib.WorkdirLock(epath.Path(tmp_path / "b")).acquire()
  finally:
    other.kill()
    other.wait()
  dead = other.pid  # reaped: no such process any more
  for name, info in (("c", dict(pid=dead)), ("d", dict(host="elsewhere", heartbeat=0))):
    _lock_file(tmp_path / name, **info)
    lock = workdir_lib.WorkdirLock(epath.Path(tmp_path / name))
    lock.acquire()
    assert json.loads((tmp_path / name / workdir_lib.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / name / workdir_lib.LOCK_NAME).exists()


def test_a_different_model_is_refused_before_anything_is_written(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  bigger = _cfg(total_steps=6, **{"model.encoder.width": 64, "quantizer.tau": 0.5})
  with pytest.raises(workdir_lib.ResumeRefused) as info:
    loop.train(TokenizerTask, bigger, str(workdir))
  message = str(info.value)
  assert "model.encoder.width: 32 -> 64" in message and "quantizer.tau" in message
  assert "total_steps" not in message  # a schedule key may change
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before, "a refused resume changes nothing on disk"


def test_config_changes_classifies_keys():
  old = {"model": {"width": 1}, "optim": {"lr": 1.0, "name": "adamw"}, "total_steps": 5}
  new = {"model": {"width": 2}, "optim": {"lr": 0.5, "name": "adamw"}, "total_steps": 9}
  fatal, allowed = workdir_lib.config_changes(old, new)
  assert fatal == ["model.width: 1 -> 2"]
  assert allowed == ["optim.lr: 1.0 -> 0.5", "total_steps: 5 -> 9"]


# --- real processes: kill -9 mid-write, then SIGTERM ---------------------------------------------

_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from recovery_helpers import tiny_config


def get_config():
  return tiny_config(**{overrides!r})
"""


def _main(config_file, workdir, log):
  cmd = [sys.executable, "-m", "softvq_jax.main", f"--config={config_file}", f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=ROOT, stderr=log, stdout=log)


def test_kill_9_mid_write_and_sigterm_resume_exactly_with_gan_on_8_devices(tmp_path):
  overrides = {
    "total_steps": 6,
    "log_every": 1,
    "eval_every": 100,
    "image_every": 100,
    "ckpt.save_every": 1,
    "ckpt.async_save": True,
    "loss.disc.weight": 0.2,
    "loss.disc.start": 2,
  }
  config_file = tmp_path / "gan_config.py"
  config_file.write_text(_CONFIG_FILE.format(tests=str(ROOT / "tests"), overrides=overrides))
  workdir, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
  with open(tmp_path / "first.log", "w") as log:
    first = _main(config_file, workdir, log)
    mid_write, deadline = False, time.time() + 400
    while first.poll() is None and time.time() < deadline:
      writing = [p.name for p in ckpts.glob("*orbax-checkpoint-tmp*")] if ckpts.exists() else []
      if any(int(name.split(".")[0]) >= 3 for name in writing):
        mid_write = True
        break
      time.sleep(0.002)
    first.kill()  # SIGKILL: no handler runs
    first.wait()
  assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
  killed_at = checkpointing.CheckpointManager(workdir).latest_step()
  assert killed_at is not None and killed_at < 6

  with open(tmp_path / "second.log", "w") as log:
    second = _main(config_file, workdir, log)
    deadline = time.time() + 400
    while second.poll() is None and time.time() < deadline:
      text = (tmp_path / "second.log").read_text()
      if f"step {killed_at + 1}/6" in text:
        second.send_signal(signal.SIGTERM)
        break
      time.sleep(0.05)
    second.wait(timeout=300)
  text = (tmp_path / "second.log").read_text()
  assert second.returncode == 0, text[-3000:]
  saved = int(text.split("saved step ")[1].split()[0])
  assert saved > killed_at and checkpointing.CheckpointManager(workdir).latest_step() == saved
  assert "Traceback" not in text and "rerun the same command to resume" in text

  config = tiny_config(**overrides)
  loop.train(TokenizerTask, config, str(workdir))
  loop.train(TokenizerTask, config, str(tmp_path / "straight"))
  straight, resumed = state_of(tmp_path / "straight", config), state_of(workdir, config)
  assert int(resumed.step) == 6 and "disc" in resumed.extra
  differ = leaves_equal(straight, resumed)
  assert differ == 0, f"{differ} leaves differ (killed at {killed_at}, mid-write {mid_write})"


# --- skipped images -------------------------------------------------------------------------------


def test_skipped_images_are_counted_in_the_summary(tmp_path):
  from PIL import Image

  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / f"{i}.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  config = _cfg(total_steps=1, **{"data.name": "folder", "data.path": str(folder)})
  summary = loop.train(TokenizerTask, config, str(tmp_path / "run"))
  # batch 8 over 4 files (one broken): every epoch of the batch meets the broken file once
  assert summary["data_skipped"] >= 2, summary
