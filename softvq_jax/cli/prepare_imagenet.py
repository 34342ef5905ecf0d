"""Prepares ImageNet (or another manual-download TFDS dataset) as array_record, offline.

  python -m softvq_jax.data.prepare_imagenet --manual_dir=/data/imagenet_tars --data_dir=/data/tfds

`manual_dir` holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar. Equivalent to
`tfds build imagenet2012 --file_format=array_record ...`, whose CLI (TFDS 4.9.10) also needs
apache-beam installed; this entry point needs only the pinned requirements.
"""

from absl import flags

from softvq_jax.data.sources import imagenet
from softvq_jax.utils import cli

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
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


def main(argv):
  del argv
  builder = imagenet.prepare(_NAME.value, _DATA.value, _MANUAL.value, overwrite=_OVERWRITE.value)
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(f"prepared {builder.info.full_name} at {builder.data_dir}: {splits}")


if __name__ == "__main__":
  cli.run(main, FLAGS)
