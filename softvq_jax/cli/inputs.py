"""What a model path given to a program holds, checked before anything heavy is built.

`describe(path)` tells a tokenizer from a generator, and an exported model dir from a training
workdir or a released Hugging Face folder, from the saved config alone (no params are read), so
that `evaluate`, `sample`, `export`, `reconstruct` and `cache_latents` refuse a wrong input in one
line (`UserError`) instead of a KeyError after minutes of set-up.
"""

from __future__ import annotations

import dataclasses
import json
import os

from etils import epath

from softvq_jax.utils.errors import UserError

ROLES = {"tokenizer": "tokenizer", "sit": "generator", "dit": "generator"}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """role: tokenizer | generator | discriminator | unknown; layout: model dir | workdir |
  released (a Hugging Face folder of the reference code); detail: e.g. sit, dit, softvq."""

  path: epath.Path
  role: str
  layout: str
  detail: str = ""

  def describe(self) -> str:
    what = f"{self.detail} {self.role}" if self.detail and self.detail != self.role else self.role
    return f"a {what} {self.layout}"


def _read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: unreadable config ({e})") from e


def _role_of(config: dict) -> tuple[str, str]:
  model = config.get("model", {}) if isinstance(config.get("model"), dict) else {}
  kind = str(model.get("kind", ""))
  if kind in ("sit", "dit"):
    return "generator", kind
  if kind == "dino_disc":
    return "discriminator", kind
  trainer = str(config.get("trainer", ""))
  if trainer in ROLES:
    return ROLES[trainer], trainer if ROLES[trainer] == "generator" else model.get("name", "")
  if "quantizer" in config:
    return "tokenizer", str(model.get("name", ""))
  return "unknown", ""


def describe(path: str | os.PathLike, flag: str = "--model") -> ModelInfo:
  """The kind of model at `path`; a UserError naming `flag` if it is none (or has no checkpoint)."""
  from softvq_jax.weights.io import expand_path

  p = expand_path(path)  # local (`~` expanded) or gs://
  shown = f"{flag}={path}"
  if not p.exists():
    raise UserError(f"missing input: {shown} (no such directory)")
  if (p / "config.json").is_file() and (p / "params").exists():
    role, detail = _role_of(_read_json(p / "config.json"))
    return ModelInfo(p, role, "model dir", detail)
  if (p / "checkpoints").is_dir():
    steps = [d for d in (p / "checkpoints").iterdir() if d.name.isdigit()]
    if not steps:
      raise UserError(
        f"{shown}: the training workdir has no checkpoint yet (checkpoints/ is empty)"
      )
    if (p / "config.json").is_file():
      config = _read_json(p / "config.json")
    else:
      from softvq_jax import checkpointing

      config = checkpointing.read_checkpoint_config(p)
    role, detail = _role_of(config)
    return ModelInfo(p, role, "workdir", detail)
  if (p / "config.json").is_file() and any(
    (p / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")
  ):
    text = (p / "config.json").read_bytes().decode("utf-8", "replace")
    return ModelInfo(p, "tokenizer" if "codebook" in text else "generator", "released")
  raise UserError(
    f"{shown} is neither an exported model dir (config.json + params/), a training workdir "
    "(checkpoints/) nor a released Hugging Face folder (config.json + model.safetensors)"
  )


def require(
  path: str | os.PathLike,
  role: str,
  flag: str = "--model",
  hint: str = "",
  *,
  released_ok: bool = False,
) -> ModelInfo:
  """`describe(path)`, refusing in one line anything that is not a `role` (tokenizer/generator),
  and a released Hugging Face folder unless the program converts those itself."""
  info = describe(path, flag)
  if info.layout == "released" and not released_ok:
    sub = "tokenizer" if info.role == "tokenizer" else "sit"
    raise UserError(
      f"{flag}={path} is a released Hugging Face folder: convert it once with `python -m "
      f"softvq_jax.convert {sub} --weights={path} --out=DIR` and pass {flag}=DIR"
    )
  if info.role not in (role, "unknown"):
    raise UserError(
      f"{flag}={path} is {info.describe()}, not a {role}" + (f"; {hint}" if hint else "")
    )
  return info
