"""Refusing bad weight and config files, with errors that name the file and the key.

Every reader of a user-supplied file in this layer goes through here, so that a wrong file stops
the conversion instead of being converted into something subtly different:

- `FileDict`: a dict that remembers the file it was read from (`io.load_state_dict` and
  `read_config` return one), so an error about its content can name the file (`where(d)`).
- `float_tensor`: a leaf that becomes a float parameter must have a float dtype (an int32 or bool
  array is refused, not cast) and be finite (no NaN / Inf).
- `read_config`: JSON (or YAML) that must parse into a mapping; a syntax error names the file and
  the line.
- `check_known_keys`: an unknown key (`tua` for `tau`) is refused with the closest known keys, since
  a typo would otherwise convert with the default value.
- `check_types`: values of the wrong type (`"sixteen"` for an int, `"false"` for a bool) are refused
  naming the key.

The errors are `UserError`s (one or two lines in the CLI, exit status 2) that also subclass the
built-in exception a caller may already catch (KeyError / ValueError).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from softvq_jax.utils.errors import UserError


class WeightKeyError(UserError, KeyError):
  """Missing or unknown keys in a state dict / param tree (the message lists them)."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0]) if self.args else ""


class WeightValueError(UserError, ValueError):
  """A tensor of the wrong dtype, shape or value (NaN / Inf) in a weight file."""


class ReferenceConfigError(UserError, ValueError):
  """A reference config file that does not parse, has unknown keys or values of the wrong type."""


class FileDict(dict):
  """A dict read from a file: `source` is the file's path (shown in errors)."""

  source: str = ""

  @classmethod
  def of(cls, items: Mapping[str, Any], source: str | os.PathLike) -> FileDict:
    out = cls(items)
    out.source = str(source)
    return out


def where(obj: Any) -> str:
  """'<file>: ' for a FileDict (or any object with a `source`), else ''."""
  source = getattr(obj, "source", "")
  return f"{source}: " if source else ""


def keep_source(new: Mapping[str, Any], old: Any) -> Mapping[str, Any]:
  """`new` as a FileDict carrying `old`'s source (after a rename or prefix strip)."""
  source = getattr(old, "source", "")
  return FileDict.of(new, source) if source else new


def is_float_dtype(dtype: Any) -> bool:
  """float16/32/64 and bfloat16 (ml_dtypes), not ints, bools or complex numbers."""
  dtype = np.dtype(dtype)
  return dtype.kind == "f" or dtype.name == "bfloat16"


def float_tensor(value: Any, key: str, source: Any = None) -> np.ndarray:
  """`value` as a numpy array after checking it is a finite float tensor, else WeightValueError.

  `source` is the state dict it came from (its file is named) or a file name.
  """
  prefix = where(source) if not isinstance(source, str | os.PathLike) else f"{source}: "
  arr = np.asarray(value)
  if not is_float_dtype(arr.dtype):
    raise WeightValueError(
      f"{prefix}`{key}` has dtype {arr.dtype}; a float tensor is expected (a wrong or damaged "
      "file? it is not cast)"
    )
  finite = np.isfinite(arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr)
  if not finite.all():
    bad = int(arr.size - np.count_nonzero(finite))
    raise WeightValueError(
      f"{prefix}`{key}` holds {bad} non-finite value(s) (NaN/Inf) of {arr.size}; the weights "
      "are damaged (a diverged run or a broken download?)"
    )
  return arr


def integer_scalar(value: Any, key: str, source: Any = None) -> int:
  """A counter such as BatchNorm's `num_batches_tracked`: an integer-valued scalar or (1,) array."""
  arr = np.asarray(value)
  ok = arr.size == 1 and (
    arr.dtype.kind in "iu" or (is_float_dtype(arr.dtype) and float(arr.ravel()[0]).is_integer())
  )
  if not ok:
    raise WeightValueError(
      f"{where(source)}`{key}` must be an integer scalar, got dtype {arr.dtype} shape {arr.shape}"
    )
  return int(arr.ravel()[0])


def check_finite_tree(flat: Mapping[tuple[str, ...], Any], what: str) -> None:
  """Refuses NaN / Inf in a flattened param tree (exporting a model dir), naming the path."""
  for path, v in flat.items():
    float_tensor(v, "/".join(path), what)


def read_config(path: str | os.PathLike, what: str, flag: str | None = None) -> FileDict:
  """A JSON (`.yaml`/`.yml`: YAML) config file as a FileDict; refuses what does not parse into a
  mapping with an error naming the file (and the line for a syntax error)."""
  from softvq_jax.weights.io import require_file

  p = require_file(path, what, flag)
  try:
    text = p.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise ReferenceConfigError(f"{p}: {what} is not a text (UTF-8 JSON/YAML) file ({e})") from e
  if p.suffix.lower() in (".yaml", ".yml"):
    import yaml

    try:
      data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # carries its own line / column
      raise ReferenceConfigError(f"{p}: {what} is not valid YAML ({e})".replace("\n", " ")) from e
  else:
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ReferenceConfigError(
        f"{p}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
      ) from e
  if not isinstance(data, Mapping):
    raise ReferenceConfigError(
      f"{p}: {what} must hold an object (a mapping of fields), got {type(data).__name__}"
    )
  return FileDict.of(data, p)


def check_known_keys(config: Mapping[str, Any], known: Iterable[str], what: str) -> None:
  """ReferenceConfigError listing every key of `config` not in `known`, with close matches."""
  known = sorted(set(known))
  unknown = sorted(k for k in config if k not in known)
  if not unknown:
    return
  hints = []
  for k in unknown:
    close = difflib.get_close_matches(str(k), known, n=2, cutoff=0.6)
    hints.append(
      f"`{k}`" + (f" (did you mean {' or '.join(f'`{c}`' for c in close)}?)" if close else "")
    )
  raise ReferenceConfigError(
    f"{where(config)}unknown {what} key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
    "a misspelt key would silently take its default, so it is refused"
  )


# Value kinds of config fields: what `check_types` accepts for each.
def _is_int(v: Any) -> bool:
  return (
    isinstance(v, int | np.integer)
    and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer())
  )


def _is_float(v: Any) -> bool:
  number = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
  return number and math.isfinite(v)  # JSON's NaN / Infinity are refused too


KINDS = {
  "int": (_is_int, "an integer"),
  "float": (_is_float, "a finite number"),
  "bool": (lambda v: isinstance(v, bool | np.bool_), "true or false"),
  "str": (lambda v: isinstance(v, str), "a string"),
  "list": (lambda v: isinstance(v, list | tuple), "a list"),
  "dict": (lambda v: isinstance(v, Mapping), "an object"),
  "any": (lambda v: True, "anything"),
}


def check_types(config: Mapping[str, Any], kinds: Mapping[str, str], what: str) -> None:
  """ReferenceConfigError for the first key whose value is not of its kind (see KINDS)."""
  for key, value in config.items():
    kind = kinds.get(key, "any")
    ok, desc = KINDS[kind]
    if value is None and kind not in ("int", "float", "bool"):
      continue  # an unset optional string / list (the reference passes None on)
    if value is None or not ok(value):
      raise ReferenceConfigError(f"{where(config)}{what} key `{key}` must be {desc}, got {value!r}")
