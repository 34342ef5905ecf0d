"""Every user path goes through `etils.epath` (local or gs://), never pathlib/open/os.path/shutil.

A real run on a workdir whose path holds a marker folder name: tokenizer training (2 tiny steps),
`export` (model dir and reference safetensors), `reconstruct`, a tokenizer evaluation, a latent
cache and an ADM batch. Meanwhile pathlib.Path construction, builtins.open and the file-system
functions of os, os.path, shutil and safetensors record every call given a marker path whose
nearest project frame (walking out from the call) is softvq_jax code; calls made through etils
(epath's local backend uses exactly these functions) or through a library that handles gs://
itself (Orbax, TensorFlow, ArrayRecord, ...) are the libraries' business. Code like that passed a
gs:// path would have treated it as a local folder named "gs:".
"""

import builtins
import io
import os
import pathlib
import shutil
import sys
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_tokenizer_config

MARKER = "u5er_path_m4rker"
PACKAGE = os.sep + "softvq_jax" + os.sep
# Libraries that take gs:// paths themselves: a marker path reaching os/open from them is fine.
PATH_AWARE = ("etils", "orbax", "tensorstore", "tensorflow", "tensorboard", "clu", "array_record")
# Local-only branches, each reached only after an is_uri() check (their gs:// branch uses epath).
LOCAL_ONLY = {
  ("utils/files.py", "*"),  # atomic_open & co.: tmp file + rename on a local disk
  ("utils/images.py", "save_png"),  # returns a pathlib.Path for a local path
  ("utils/cli.py", "require_inputs"),  # skips URIs
  ("utils/cli.py", "_unloadable_config"),  # --config files are local Python modules
  ("training/workdir.py", "_write"),  # O_EXCL lock file on a local disk
  ("checkpointing.py", "_write_error"),  # shutil.disk_usage of a local disk
}
THIS = os.path.abspath(__file__)


def _has_marker(args, kwargs) -> bool:
  for a in (*args, *kwargs.values()):
    if isinstance(a, (str, bytes, os.PathLike)):
      try:
        s = os.fsdecode(a)
      except TypeError:
        continue
      if MARKER in s:
        return True
  return False


def _culprit() -> str | None:
  """'file:line in function' of the project code that made the current call, or None if it
  came through a path-aware library, an allowed local-only branch or this test."""
  f = sys._getframe(2)
  while f is not None:
    name = f.f_code.co_filename
    if f.f_code.co_filename == THIS:
      return None
    parts = name.split(os.sep)
    if any(lib in parts for lib in PATH_AWARE):
      return None
    if PACKAGE in name:
      rel = name.split(PACKAGE, 1)[1].replace(os.sep, "/")
      fn = f.f_code.co_name
      if (rel, fn) in LOCAL_ONLY or (rel, "*") in LOCAL_ONLY:
        return None
      return f"softvq_jax/{rel}:{f.f_lineno} in {fn}"
    f = f.f_back
  return None


@contextmanager
def forbid_marker_paths():
  """Records (culprit, call) for each marker path handed to a non-epath file API by project
  code; yields the list."""
  found: list[tuple[str, str]] = []
  saved = []

  def patch(owner, name, label=None):
    orig = getattr(owner, name)

    def guard(*args, **kwargs):
      if _has_marker(args, kwargs):
        where = _culprit()
        if where:
          found.append((where, f"{label or name}{args[:2]!r}"))
      return orig(*args, **kwargs)

    saved.append((owner, name, orig))
    setattr(owner, name, guard)

  def patch_new(cls):
    orig = cls.__new__

    def new(c, *args, **kwargs):
      if _has_marker(args, kwargs):
        where = _culprit()
        if where:
          found.append((where, f"pathlib.Path{args!r}"))
      return orig(c, *args, **kwargs)

    saved.append((cls, "__new__", orig))
    cls.__new__ = new

  patch(builtins, "open", "open")
  patch(io, "open", "io.open")
  for name in ("exists", "isfile", "isdir", "expanduser", "abspath", "realpath", "getsize"):
    patch(os.path, name, f"os.path.{name}")
  for name in (
    "open",
    "stat",
    "listdir",
    "scandir",
    "makedirs",
    "mkdir",
    "remove",
    "unlink",
    "rmdir",
    "rename",
    "replace",
    "chmod",
  ):
    patch(os, name, f"os.{name}")
  for name in ("rmtree", "copy", "copyfile", "copytree", "move", "disk_usage"):
    patch(shutil, name, f"shutil.{name}")
  import safetensors.numpy

  for name in ("load_file", "save_file"):  # Rust opens these files: no Python open() to see
    patch(safetensors.numpy, name, f"safetensors.numpy.{name}")
  patch_new(pathlib.Path)
  try:
    yield found
  finally:
    for owner, name, orig in reversed(saved):
      setattr(owner, name, orig)


def _config():
  c = tiny_tokenizer_config()
  c.batch_size, c.total_steps = 8, 2
  c.optim.warmup_steps = 1
  c.log_every = c.eval_every = c.image_every = 2
  c.ckpt.save_every, c.ckpt.async_save = 2, False
  c.eval.batch_size, c.data.eval_crops = 4, 1
  c.loss.disc.weight = 0.0
  return c


def _exit_code(run, argv) -> int:
  with pytest.raises(SystemExit) as e:
    run(argv)
  return e.value.code


def test_user_paths_go_through_epath(tmp_path):
  from softvq_jax.cli import export as export_cli
  from softvq_jax.cli import reconstruct as reconstruct_cli
  from softvq_jax.data import latents
  from softvq_jax.evaluation import adm_npz, common, tokenizer_eval
  from softvq_jax.training import loop
  from softvq_jax.training.tokenizer import TokenizerTask
  from softvq_jax.weights.io import load_state_dict

  root = tmp_path / MARKER
  root.mkdir()
  photo = root / "photo.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(photo)
  run, model, d = str(root / "run"), str(root / "model"), str(root)

  with forbid_marker_paths() as found:
    loop.train(TokenizerTask, _config(), run)
    args = [f"--workdir={run}", f"--out={model}", "--stats_images=8"]
    assert _exit_code(export_cli.run, args) == 0
    args = [f"--workdir={run}", f"--out={d}/ref/model.safetensors", "--format=reference"]
    assert _exit_code(export_cli.run, [*args, "--stats_images=0"]) == 0
    sd = load_state_dict(f"{d}/ref/model.safetensors")
    assert _exit_code(reconstruct_cli.run, [f"--model={model}", str(photo), f"{d}/recs"]) == 0
    summary = tokenizer_eval.evaluate_tokenizer(
      model,
      f"{d}/eval",
      data_cfg=_config().data,
      num_images=2,
      crops=1,
      batch_size=2,
      feature_fn=common.tiny_feature_fn(),
      save_npz=True,
    )
    ref = adm_npz.load_reference_batch(f"{d}/eval/reconstructions.npz", dims=None)
    z = np.zeros((4, 2, 8, 4), np.float32)
    info = latents.write_cache(f"{d}/cache", z, np.arange(4), examples_per_shard=2)
    rows = latents.LatentSource(f"{d}/cache").read([0, 3])[0]

  assert not found, "user paths handled without epath:\n" + "\n".join(
    f"  {where}: {call}" for where, call in dict(found).items()
  )
  # The run really wrote through those paths.
  assert (root / "run" / "checkpoints").is_dir() and (root / "model" / "config.json").is_file()
  assert "quantize.embedding" in sd and (root / "recs" / "photo.png").is_file()
  assert summary["num_images"] == 2 and ref.num_images == 2
  assert info["num_examples"] == 4 and rows.shape == (2, 8, 4)
