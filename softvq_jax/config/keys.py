"""Every config key with one line of help, and the resolved config as text (`--print_config`).

`KEY_HELP` maps each dotted leaf key of every recipe (configs/tokenizer_*.py, configs/sit_*.py)
to its help: what it does, units, the choices and the registry they come from, what 0 or ""
means, the recipes' defaults. The table itself is text in config/key_help.py (data only), parsed
here once. `describe(config, defaults=...)` renders a config as aligned `key = value  # help`
lines grouped by top-level section; given the recipe's un-overridden config as `defaults`
(`recipe_defaults("configs/tokenizer_b.py:quick")`), values that differ are marked with `*` and
the recipe's value. Nothing here imports jax, so `main.py --print_config` answers at once.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

from softvq_jax.config.key_help import TEXT

_ENTRY = re.compile(r"([A-Za-z_][\w.]*): (\S.*)")
HELP_FILE = "softvq_jax/config/key_help.py"
LEGEND = (
  "# key = value  # help. In the help, T: / G: = tokenizer / generator (SiT, DiT) recipes,\n"
  "# (values) = the recipes' defaults, :quick = with the quick argument. A leading '*' marks a\n"
  "# value that differs from this recipe's, shown as [recipe: value]."
)


def parse_help(text: str) -> dict[str, str]:
  """`key: help` lines (continuations indented, `#` lines are titles) -> {key: one-line help}.

  A line in neither form, or a key given twice, raises ValueError (a table typo fails at import).
  """
  out: dict[str, str] = {}
  key = None
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip() or line.startswith("#"):
      key = None
    elif line[0].isspace():
      if key is None:
        raise ValueError(f"{HELP_FILE} line {n}: continuation without a key: {line.strip()!r}")
      out[key] += " " + line.strip()
    else:
      m = _ENTRY.fullmatch(line.rstrip())
      if not m:
        raise ValueError(f"{HELP_FILE} line {n}: expected 'key: help', got {line!r}")
      if m[1] in out:
        raise ValueError(f"{HELP_FILE} line {n}: {m[1]!r} is given twice")
      key, out[m[1]] = m[1], m[2]
  return out


KEY_HELP: dict[str, str] = parse_help(TEXT)


def leaves(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every leaf of a ConfigDict or nested mapping."""
  for key, value in config.items():
    if hasattr(value, "items"):  # ConfigDict or dict
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def recipe_defaults(spec: str) -> Any:
  """The config of `path[:arg]` without command-line overrides, loaded as `--config` loads it
  (ml_collections calls `get_config(arg)` when the spec has a colon, `get_config()` otherwise)."""
  if "://" in spec:  # ml_collections' --config imports a local module, so this does too
    raise FileNotFoundError(
      f"config file {spec!r}: configs are local Python files (copy it next to the code)"
    )
  path, *arg = spec.split(":", 1)
  module_spec = importlib.util.spec_from_file_location("recipe_config", path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*arg)


def describe(config: Any, defaults: Any = None, title: str = "") -> str:
  """The config as `key = value  # help` lines, one section per top-level key.

  Sections and keys follow the order of KEY_HELP (top-level keys first); a key without help says
  so. `defaults`: the recipe's config; each value that differs from it (or is not in it) gets a
  leading `*` and `[recipe: <value>]` before its help.
  """
  flat = dict(leaves(config))
  base = None if defaults is None else dict(leaves(defaults))
  order = {k: i for i, k in enumerate(KEY_HELP)}
  sections: dict[str, list[str]] = {"": []}
  for key in sorted(flat, key=lambda k: (order.get(k, len(order)), k)):
    sections.setdefault(key.rpartition(".")[0].split(".")[0], []).append(key)
  lines = [f"# {title}"] if title else []
  lines.append(LEGEND)
  for section, names in sections.items():
    if not names:
      continue
    rows = []
    for key in names:
      changed = base is not None and (key not in base or base[key] != flat[key])
      note = ""
      if changed:
        note = f"[recipe: {repr(base[key])}] " if key in base else "[not in the recipe] "
      text = KEY_HELP.get(key, f"(no help: add it to {HELP_FILE})")
      rows.append(("* " if changed else "  ", f"{key} = {repr(flat[key])}", note + text))
    width = min(max(len(left) for _, left, _ in rows), 60)
    lines += ["", f"# {section or 'run (top level)'}"]
    lines += [f"{mark}{left.ljust(width)}  # {text}" for mark, left, text in rows]
  return "\n".join(lines)
