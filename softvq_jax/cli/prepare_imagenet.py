"""Prepares ImageNet (or another manual-download TFDS dataset) as array_record, offline.

  python -m softvq_jax.data.prepare_imagenet --manual_dir=/data/imagenet_tars --data_dir=/data/tfds

`manual_dir` holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (both are checked before
TFDS starts). Equivalent to `tfds build imagenet2012 --file_format=array_record ...`, whose CLI
(TFDS 4.9.10) also needs apache-beam installed; this entry point needs only the pinned
requirements.
"""

from absl import flags

from softvq_jax.data.sources import imagenet
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_NAME = flags.DEFINE_string("name", imagenet.DEFAULT_NAME, "TFDS dataset name.", flag_values=FLAGS)
_MANUAL = flags.DEFINE_string(
  "manual_dir", None, "Directory of the downloaded tars.", flag_values=FLAGS
)
_DATA = flags.DEFINE_string(
  "data_dir", "", "TFDS data_dir to write ('' = TFDS default).", flag_values=FLAGS
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Delete an already prepared copy first.", flag_values=FLAGS
)
flags.mark_flags_as_required(["manual_dir"], flag_values=FLAGS)


def check_inputs(name: str, manual_dir: str) -> None:
  """The manual_dir exists and, for ImageNet, holds both tars (every missing one is named)."""
  cli.require_inputs([("--manual_dir", manual_dir, "dir")])
  if name == imagenet.DEFAULT_NAME:
    from softvq_jax.weights.io import expand_path

    d = expand_path(manual_dir)
    cli.require_inputs([("--manual_dir", str(d / t), "file") for t in IMAGENET_TARS])


def main(argv):
  del argv  # cli.run refuses positional arguments
  check_inputs(_NAME.value, _MANUAL.value)
  try:
    builder = imagenet.prepare(_NAME.value, _DATA.value, _MANUAL.value, overwrite=_OVERWRITE.value)
  except imagenet.DatasetNotReady as e:  # e.g. already prepared as tfrecord: says how to fix it
    raise UserError(str(e)) from e
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(f"prepared {builder.info.full_name} at {builder.data_dir}: {splits}")


def run(argv=None) -> None:
  """`python -m softvq_jax.data.prepare_imagenet` on `argv` (default sys.argv[1:], no program name):
  exits 0, or 2 with one line on a user error (utils/cli.py). Tests call it in-process."""
  cli.run(main, FLAGS, None if argv is None else ["prepare_imagenet", *argv])


if __name__ == "__main__":
  run()
