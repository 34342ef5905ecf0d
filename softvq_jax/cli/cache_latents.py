"""Encode a dataset once with a tokenizer into a latent cache (the format: data/latents/format.py).

  python -m softvq_jax.data.cache_latents --tokenizer=exported/softvq_b64 \\
      --data=imagenet --split=train --out=caches/imagenet_b64_train
  python -m softvq_jax.data.cache_latents --tokenizer=runs/quick \\
      --config=configs/tokenizer_b.py:quick --split=train --out=caches/photos

The dataset comes from `--data` (photos|folder|imagenet, with --data_path/--eval_path/--data_dir/
--manual_dir as the tokenizer configs' data.* keys), else from `--config`'s data section, else from
the tokenizer's own training config. On several hosts run the same command on every host (after
jax.distributed initialises): each encodes its block of shards to a shared filesystem. The
tokenizer's encode function comes from training/online_latents.py; the writer (data/latents/)
holds no model code.
"""

from __future__ import annotations

import jax
from absl import flags, logging
from ml_collections import ConfigDict, config_flags

from softvq_jax import data
from softvq_jax.cli import inputs
from softvq_jax.config import defaults
from softvq_jax.data import latents
from softvq_jax.training import online_latents
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError
from softvq_jax.utils.paths import user_path
from softvq_jax.weights import pretrained

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
_TOKENIZER = flags.DEFINE_string(
  "tokenizer", None, "Exported tokenizer dir or training workdir.", flag_values=FLAGS
)
_OUT = flags.DEFINE_string("out", None, "Output cache directory.", flag_values=FLAGS)
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config whose data section to encode.", flag_values=FLAGS
)
_DATA = flags.DEFINE_enum(
  "data", None, list(data.IMAGE_DATASETS), "Dataset (overrides --config).", flag_values=FLAGS
)
_DATA_PATH = flags.DEFINE_string(
  "data_path", None, "data.path (folder: the training images).", flag_values=FLAGS
)
_EVAL_PATH = flags.DEFINE_string(
  "eval_path", None, "data.eval_path (folder: held-out images).", flag_values=FLAGS
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "data.data_dir (TFDS data dir for imagenet).", flag_values=FLAGS
)
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", None, "data.manual_dir (ImageNet tars).", flag_values=FLAGS
)
_SPLIT = flags.DEFINE_enum(
  "split",
  "train",
  ["train", "eval", "validation", "val"],
  "Which source split to encode.",
  flag_values=FLAGS,
)
_BATCH = flags.DEFINE_integer(
  "batch", 64, "Images per encode step on this host (x2 with flips).", flag_values=FLAGS
)
_DTYPE = flags.DEFINE_enum(
  "dtype", "bfloat16", sorted(latents.DTYPES), "Stored latent dtype.", flag_values=FLAGS
)
_SHARD = flags.DEFINE_integer(
  "examples_per_shard", 10_000, "Examples per ArrayRecord shard.", flag_values=FLAGS
)
_WORKERS = flags.DEFINE_integer(
  "workers", None, "Image decoding threads (default: CPU count).", flag_values=FLAGS
)
_MAX = flags.DEFINE_integer(
  "max_examples", None, "Encode only the first N examples.", flag_values=FLAGS
)
_STEP = flags.DEFINE_integer(
  "step", None, "Checkpoint step of a training workdir (latest).", flag_values=FLAGS
)
_RAW = flags.DEFINE_bool(
  "raw", False, "Use the raw params of a workdir instead of the EMA ones.", flag_values=FLAGS
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Re-create an existing cache.", flag_values=FLAGS
)
flags.mark_flags_as_required(["tokenizer", "out"], flag_values=FLAGS)


def data_config(tokenizer_config: dict) -> ConfigDict:
  """The data section to encode: --data (+ path flags) > --config > the tokenizer's config."""
  base = defaults.tokenizer_config("B").data  # every key the image sources read
  if _DATA.value is None and _CONFIG.value is not None:
    base.update(_CONFIG.value.data)
  elif _DATA.value is None and "data" in tokenizer_config:
    base.update(ConfigDict(tokenizer_config["data"]))
  elif _DATA.value is None:
    raise UserError("the tokenizer has no data config: pass --data=photos|folder|imagenet")
  else:
    base.name = _DATA.value
  for flag, key in (
    (_DATA_PATH, "path"),
    (_EVAL_PATH, "eval_path"),
    (_DATA_DIR, "data_dir"),
    (_MANUAL_DIR, "manual_dir"),
  ):
    if flag.value is not None:
      base[key] = flag.value
  if base.name not in data.IMAGE_DATASETS:
    raise UserError(
      f"cannot encode data.name={base.name!r}; use one of {list(data.IMAGE_DATASETS)}"
    )
  return base


def check_inputs() -> None:
  """The tokenizer and the dataset paths the flags name, before the tokenizer is loaded."""
  cli.require_inputs(
    [
      ("--tokenizer", _TOKENIZER.value, "dir"),
      ("--data_path", _DATA_PATH.value, "dir"),
      ("--eval_path", _EVAL_PATH.value, "dir"),
      ("--manual_dir", _MANUAL_DIR.value, "dir"),
    ]
  )
  hint = "latent caches are made with a tokenizer (the generator trains on them)"
  inputs.require(_TOKENIZER.value, "tokenizer", "--tokenizer", hint)
  out = user_path(_OUT.value)  # local or gs://
  if (out / "cache_info.json").is_file() and not _OVERWRITE.value:
    raise UserError(f"--out={out} is a complete latent cache already; pass --overwrite to redo it")
  if out.exists() and not (out / "cache_info.json").is_file() and not _OVERWRITE.value:
    raise UserError(f"--out={out} exists and is not a latent cache; choose another --out")


def main(argv):
  del argv  # cli.run refuses positional arguments
  check_inputs()
  tokenizer_path = str(user_path(_TOKENIZER.value))  # recorded in the cache: absolute or a URI
  tok = pretrained.load_tokenizer(tokenizer_path, ema=not _RAW.value, step=_STEP.value)
  cfg = data_config(tok.config)
  split = "train" if _SPLIT.value == "train" else "eval"
  source = data.source(cfg, split, jax.process_count())
  logging.info(
    "encoding %d %s/%s examples at %dpx on %d local device(s)",
    len(source),
    cfg.name,
    _SPLIT.value,
    tok.config["model"]["image_size"],
    jax.local_device_count(),
  )
  try:
    info = _encode(tok, source, cfg, tokenizer_path, split)
  except (FileExistsError, latents.CacheConflictError) as e:
    raise UserError(str(e)) from None
  if info is None:
    print(f"process {jax.process_index()}: shards written; process 0 finalizes {_OUT.value}")
    return
  print(
    f"latent cache {info['path']}: {info['num_examples']} examples x 2 (flip) x "
    f"{info['num_tokens']} x {info['dim']} {info['dtype']} ({info['num_skipped']} skipped); "
    f"vq_mean={info['vq_mean']:.6g} vq_std={info['vq_std']:.6g}"
  )


def _encode(tok, source, cfg, tokenizer_path, split):
  return online_latents.encode_with_tokenizer(
    tok,
    source,
    _OUT.value,
    tokenizer_path=tokenizer_path,
    dataset=cfg.name,
    split=split,
    batch_size=_BATCH.value,
    dtype=_DTYPE.value,
    examples_per_shard=_SHARD.value,
    max_examples=_MAX.value,
    overwrite=_OVERWRITE.value,
    num_workers=_WORKERS.value,
  )


def run(argv=None) -> None:
  """`python -m softvq_jax.data.cache_latents` on `argv` (default sys.argv[1:], no program name):
  exits 0, or 2 with one line on a user error (utils/cli.py). Tests call it in-process."""
  cli.run(main, FLAGS, None if argv is None else ["cache_latents", *argv])


if __name__ == "__main__":
  run()
