"""Console output a person reads: this package's INFO lines, everyone's warnings and errors.

At the default verbosity, INFO records from other libraries (Orbax option dumps and thread
notes, clu, TensorFlow's Python side) are dropped; `--verbosity=1` (or more) brings them back.
TensorFlow's C++ banners are silenced before TensorFlow is imported (TF_CPP_MIN_LOG_LEVEL; the
oneDNN notice only goes with TF_ENABLE_ONEDNN_OPTS=0, harmless here: TF only reads data).
"""

from __future__ import annotations

import logging
import os

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _OwnInfoOnly(logging.Filter):
  """Keeps WARNING+ from anyone (other libraries' without their tracebacks: the error that
  matters is reported by this package once), INFO and below only from files of this package."""

  def filter(self, record: logging.LogRecord) -> bool:
    own = record.pathname.startswith(_PACKAGE_DIR)
    if not own and record.exc_info:
      record.exc_info, record.exc_text = None, None
    return own or record.levelno >= logging.WARNING


_FILTER = _OwnInfoOnly()


def quiet_env() -> None:
  """Before TensorFlow/JAX are imported: no TF C++ INFO banners (oneDNN, cpu features)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def configure(verbosity: int) -> None:
  """After absl parsed its flags: filter the absl handler unless --verbosity >= 1."""
  from absl import logging as absl_logging

  handler = absl_logging.get_absl_handler()
  if verbosity >= 1:
    handler.removeFilter(_FILTER)
  else:
    handler.addFilter(_FILTER)
