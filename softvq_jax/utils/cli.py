"""Command-line entry points with their own absl FlagValues.

Each command (`evaluate`, `export`, `data.cache_latents`, `data.prepare_imagenet`) defines its
flags in its own `FlagValues`, so importing several of them into one process (a notebook, the test
suite) never collides on shared names such as --workdir or --out, and one command's required
flags are not checked when another runs. absl's own flags (--verbosity, --help) stay global.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags


def run(main: Callable[[list[str]], object], own: flags.FlagValues, argv=None) -> None:
  """app.run(main) parsing `own` first, then absl's global flags from what is left."""

  def parse(args: Sequence[str]) -> list[str]:
    try:
      rest = own(list(args), known_only=True)
    except flags.Error as e:  # as absl reports its own flag errors: message, exit 1
      sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
      sys.stderr.write("Known flags:\n" + own.main_module_help() + "\n")
      sys.exit(1)
    return flags.FLAGS(rest)

  app.run(main, argv=argv, flags_parser=parse)


def parse(own: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """Parses a full command line (program name first) into `own`, e.g. to call main() in tests."""
  own.unparse_flags()
  return own(list(argv))


def hide_accelerators_from_tf() -> None:
  """tf.data runs on CPU only: keep TensorFlow away from GPU/TPU memory."""
  try:
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):
    pass
