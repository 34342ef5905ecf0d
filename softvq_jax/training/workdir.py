"""One trainer per workdir (a lock file) and resume compatibility (saved vs new config).

The lock `<workdir>/trainer.lock` holds the pid, host and start time of the trainer (process 0)
and a heartbeat refreshed every minute. It is stale, and taken over with a warning, when its pid
is gone on this host, or when its heartbeat is older than `STALE_AFTER_S` (another host).
A resume compares the checkpoint's config with the new one before anything is written:
architecture keys must match; schedule, logging, data and mesh keys may change (logged).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from absl import logging
from etils import epath

from softvq_jax.utils.errors import UserError

LOCK_NAME = "trainer.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0

# Keys that define the model and its state: a resume with any of them changed is refused.
ARCHITECTURE = (
  "trainer",
  "variant",
  "model.",
  "quantizer.",
  "optim.name",
  "loss.disc.name",
  "loss.disc.n_layers",
  "loss.disc.ndf",
  "loss.disc.dino_variant",
  "loss.align.mode",
  "loss.align.proj_dim",
  "loss.align.teacher_variant",
  "loss.align.teacher_patch_size",
)


class WorkdirInUse(UserError):
  """Another trainer holds the workdir's lock."""


class ResumeRefused(UserError):
  """The workdir holds a checkpoint of a different model; nothing was written."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Exclusive ownership of a workdir by one trainer (held by process 0 only)."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK_NAME
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._info: dict | None = None

  def _write(self, info: dict, exclusive: bool) -> bool:
    text = json.dumps(info)
    if exclusive and "://" not in str(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if exclusive and self.path.exists():  # object stores: best effort, no atomic create
      return False
    if "://" in str(self.path):
      self.path.write_text(text)
    else:  # atomic replace: a reader never sees a half-written lock
      tmp = self.path.parent / f".{LOCK_NAME}.{os.getpid()}.tmp"
      tmp.write_text(text)
      os.replace(tmp, self.path)
    return True

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # unreadable: treated as stale below

  def _stale(self, holder: dict) -> bool:
    if not holder:
      return True
    if holder.get("host") == socket.gethostname():
      return holder.get("pid") == os.getpid() or not _alive(int(holder.get("pid", -1)))
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S

  def acquire(self) -> None:
    now = time.time()
    info = dict(pid=os.getpid(), host=socket.gethostname(), since=now, heartbeat=now)
    for _ in range(3):
      if self._write(info, exclusive=True):
        break
      holder = self._holder()
      if holder is None:
        continue  # released meanwhile
      if not self._stale(holder):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        raise WorkdirInUse(
          f"workdir {self.path.parent} in use by pid {holder.get('pid')} on host "
          f"{holder.get('host')} since {since} (lock {self.path}; delete it only if that "
          "trainer is gone)"
        )
      logging.warning("taking over the stale lock %s (was %s)", self.path, holder)
      self.path.unlink(missing_ok=True)
    else:
      raise WorkdirInUse(f"could not take the lock {self.path}; another trainer is starting")
    self._info = info
    self._thread = threading.Thread(target=self._beat, name="softvq_lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._info["heartbeat"] = time.time()
        self._write(self._info, exclusive=False)
      except OSError as e:
        logging.warning("could not refresh the workdir lock %s: %s", self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    holder = self._holder()
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
      self.path.unlink(missing_ok=True)
    self._info = None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {"a.b.c": leaf}."""
  out = {}
  for k, v in (tree or {}).items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
  """(architecture changes, other changes) between two JSON configs, as 'key: old -> new'."""
  a, b = flatten(old), flatten(new)
  fatal, allowed = [], []
  for key in sorted(set(a) | set(b)):
    if a.get(key, "<unset>") == b.get(key, "<unset>"):
      continue
    line = f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
    is_arch = any(key == p or (p.endswith(".") and key.startswith(p)) for p in ARCHITECTURE)
    (fatal if is_arch else allowed).append(line)
  return fatal, allowed


def check_resume(old: dict, new: dict, workdir: Any, step: int) -> list[str]:
  """Refuses (ResumeRefused) a resume that changes the model; returns the allowed changes."""
  fatal, allowed = config_changes(old, new)
  if fatal:
    raise ResumeRefused(
      f"{workdir} holds a checkpoint (step {step}) of a different model: "
      + "; ".join(fatal)
      + ". Use a new --workdir, or set those keys back to resume; nothing was changed on disk"
    )
  return allowed
