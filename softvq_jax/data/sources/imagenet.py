"""ImageNet (or any TFDS image dataset) as a random-access `ImageSource` over array_record files.

`TfdsImageSource` wraps `builder.as_data_source(split)` of a dataset prepared with
`file_format="array_record"`, so the generic pipeline (pipeline.py) gives exact resume,
determinism and per-process disjointness unchanged: a process reads only the global indices of
its own slice of each batch. Records are parsed without TFDS's image decoding; JPEGs are decoded
here with PIL (sources.decode; grayscale/CMYK/palette -> RGB later in preprocess.to_rgb), and
undecodable bytes raise `BadImage`, which the pipeline skips and counts. A dataset prepared as
tfrecord (no random access) is read by data/streams.py instead (`reader`: data.reader=auto
picks by what is on disk), or refused here with the command that converts it in place.
"""

from __future__ import annotations

import functools
import os

from absl import logging
from PIL import Image

from softvq_jax.data.pipeline import BadImage
from softvq_jax.data.sources.decode import decode_image  # noqa: F401 (re-exported)

DEFAULT_NAME = "imagenet2012"
RANDOM_ACCESS_FORMAT = "array_record"
READERS = ("auto", RANDOM_ACCESS_FORMAT, "tfrecord")  # data.reader


class DatasetNotReady(FileNotFoundError):
  """The TFDS dataset is missing or in a format without random access; says how to fix it."""


def _prepare_command(name: str, data_dir: str, overwrite: bool = False) -> str:
  return (
    f"python -m softvq_jax.data.prepare_imagenet --name={name} --manual_dir=/path/to/tars "
    f"--data_dir={data_dir or '~/tensorflow_datasets'}" + (" --overwrite" if overwrite else "")
  )


def prepare(name: str, data_dir: str, manual_dir: str, overwrite: bool = False):
  """Runs the TFDS builder over the tars in `manual_dir`, writing array_record; the builder."""
  import tensorflow_datasets as tfds

  data_dir = os.path.expanduser(data_dir) if data_dir else None
  existing = tfds.builder(name, data_dir=data_dir)
  if existing.is_prepared():
    if not overwrite:
      _check_random_access(existing, "")
      logging.info("%s is already prepared at %s", name, existing.data_dir)
      return existing
    logging.info("Deleting the prepared %s at %s", name, existing.data_dir)
    from etils import epath  # local and gs:// paths alike

    epath.Path(existing.data_dir).rmtree()
  builder = tfds.builder(name, data_dir=data_dir, file_format=RANDOM_ACCESS_FORMAT)
  logging.info("Preparing %s from manual_dir=%s into %s", name, manual_dir, builder.data_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
  )
  return builder


def load_builder(
  name: str = DEFAULT_NAME,
  data_dir: str = "",
  manual_dir: str = "",
  process_count: int = 1,
):
  """The prepared TFDS builder; prepares it from `manual_dir` when missing (single process only)."""
  import tensorflow_datasets as tfds

  data_dir = os.path.expanduser(data_dir) if data_dir else None
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  where = f"{builder.data_dir} (data.data_dir={data_dir or ''!r})"
  if not manual_dir:
    raise DatasetNotReady(
      f"TFDS dataset {name!r} is not prepared at {where}. Prepare it once with\n  "
      f"{_prepare_command(name, data_dir or '')}\n(the directory of the tars goes in "
      "--manual_dir; see the README), or set --config.data.manual_dir=/path/to/tars to prepare it "
      "on the first (single-process) run."
    )
  if process_count > 1:
    raise DatasetNotReady(
      f"TFDS dataset {name!r} is not prepared at {where}; a multi-process run does not prepare "
      f"it. Run once, on one machine:\n  {_prepare_command(name, data_dir or '')}"
    )
  return prepare(name, data_dir or "", manual_dir)


def _root(builder) -> str:
  """The data_dir a builder was loaded from (its data_dir is <root>/<name>[/<config>]/<version>)."""
  depth = 3 if builder.builder_config else 2
  path = str(builder.data_dir)
  for _ in range(depth):
    path = os.path.dirname(path)
  return path


def format_name(file_format) -> str:
  """A TFDS FileFormat (or its string) -> "array_record", "tfrecord", ..."""
  return str(getattr(file_format, "value", file_format))


def stored_formats(builder) -> set[str]:
  """The file formats a prepared dataset has on disk (from its dataset_info)."""
  formats = {format_name(f) for f in builder.info.available_file_formats()}
  if builder.info.file_format:
    formats.add(format_name(builder.info.file_format))
  return formats


def is_remote(data_dir: str) -> bool:
  """gs://, s3://, ...: paths the array_record reader (POSIX files) cannot open."""
  return "://" in str(data_dir)


def choose_reader(formats: set[str], data_dir: str) -> str:
  """data.reader=auto: array_record on local (or mounted) disk, else tfrecord; see `reader`."""
  if RANDOM_ACCESS_FORMAT in formats and not is_remote(data_dir):
    return RANDOM_ACCESS_FORMAT
  if "tfrecord" in formats:
    return "tfrecord"
  if RANDOM_ACCESS_FORMAT in formats:
    raise DatasetNotReady(
      f"data.data_dir={data_dir!r} holds the dataset as {RANDOM_ACCESS_FORMAT}, which is read "
      "from local (POSIX) paths only. Either prepare it as tfrecord (the TFDS default) and read "
      "it from the bucket with data.reader=tfrecord (or auto), or copy it to local disk / mount "
      "the bucket (gcsfuse) and set data.data_dir to that path (see the README, Data)."
    )
  return RANDOM_ACCESS_FORMAT  # other formats: _check_random_access says how to convert


def reader(data_cfg, process_count: int = 1) -> str:
  """The ImageNet reader of a `data` config: "array_record" (random access) or "tfrecord".

  data.reader=auto (the default) looks at the prepared dataset (loading, or preparing from
  manual_dir, its builder); a config without the key (written before it existed) keeps
  array_record. data.file_format, when set, must agree.
  """
  requested = data_cfg.get("reader", RANDOM_ACCESS_FORMAT) or "auto"
  file_format = data_cfg.get("file_format", "") or ""
  if requested not in READERS:
    raise DatasetNotReady(f"data.reader={requested!r}; choose one of {READERS}")
  if requested == "auto" and file_format in READERS[1:]:
    return file_format
  if requested != "auto":
    if file_format and file_format != requested and requested == "tfrecord":
      raise DatasetNotReady(
        f"data.reader='tfrecord' reads tfrecord files, not data.file_format={file_format!r}; "
        "leave data.file_format empty"
      )
    return requested
  data_dir = data_cfg.get("data_dir", "")
  name = data_cfg.get("tfds_name", DEFAULT_NAME) or DEFAULT_NAME
  builder = load_builder(name, data_dir, data_cfg.get("manual_dir", ""), process_count)
  return choose_reader(stored_formats(builder), str(builder.data_dir))


def _check_random_access(builder, file_format: str) -> str:
  formats = stored_formats(builder)
  if file_format and file_format != RANDOM_ACCESS_FORMAT:
    raise DatasetNotReady(
      f"data.file_format={file_format!r}: the input pipeline needs random access; use "
      f"{RANDOM_ACCESS_FORMAT!r} (or leave data.file_format empty)."
    )
  if RANDOM_ACCESS_FORMAT not in formats:
    raise DatasetNotReady(
      f"TFDS dataset {builder.info.full_name!r} at {builder.data_dir} is stored as "
      f"{sorted(formats)}, which has no random access; the pipeline (exact resume, per-process "
      f"shards) needs {RANDOM_ACCESS_FORMAT}. Either re-prepare it from the tars:\n  "
      f"{_prepare_command(builder.name, _root(builder), overwrite=True)}\n"
      "or convert it in place (keeps the tfrecords; needs `pip install apache-beam`):\n  "
      f"tfds convert_format --dataset_version_dir={builder.data_dir} "
      f"--out_file_format={RANDOM_ACCESS_FORMAT} --num_workers=8\n"
      + (
        "or train and evaluate on the tfrecords as they are with data.reader=tfrecord (tf.data "
        "streams; latent caching and latents_online need random access)"
        if "tfrecord" in formats
        else ""
      )
    )
  return RANDOM_ACCESS_FORMAT


def _raise_open_file_limit(want: int = 65536) -> None:
  """Lifts the soft limit on open files (often 1024) towards the hard one: one fd per shard."""
  try:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
      resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
  except (ImportError, ValueError, OSError) as e:  # not POSIX, or not permitted
    logging.warning("could not raise the open-file limit: %s", e)


def check_split(builder, name: str, split: str) -> None:
  """DatasetNotReady unless the prepared dataset has `split` (slices such as train[:10%] pass)."""
  if split.isidentifier() and split not in builder.info.splits:
    raise DatasetNotReady(
      f"split {split!r} is not in the prepared {name!r} at {builder.data_dir} "
      f"(it has {sorted(builder.info.splits)}); set data.train_split / data.eval_split"
    )


def split_sources(cls, data_cfg, process_count: int = 1, **kw):
  """(train, eval) `cls` sources (one per split) for the `data` config block."""
  kw.update(
    name=data_cfg.get("tfds_name", DEFAULT_NAME) or DEFAULT_NAME,
    data_dir=data_cfg.get("data_dir", ""),
    manual_dir=data_cfg.get("manual_dir", ""),
    process_count=process_count,
  )
  train = cls(split=data_cfg.get("train_split", "train"), **kw)
  return train, cls(split=data_cfg.get("eval_split", "validation"), **kw)


class TfdsImageSource:
  """Random access to (PIL image, label) of one split of a prepared TFDS image dataset.

  The dataset is opened (and checked, or prepared from `manual_dir`) on first use, so building
  the (train, eval) pair touches only the split that is actually read.
  """

  def __init__(
    self,
    name: str = DEFAULT_NAME,
    split: str = "train",
    data_dir: str = "",
    manual_dir: str = "",
    file_format: str = "",
    process_count: int = 1,
    image_key: str = "image",
    label_key: str = "label",
  ):
    self.name, self.split, self.data_dir, self.manual_dir = name, split, data_dir, manual_dir
    self.file_format, self.process_count = file_format, process_count
    self.image_key, self.label_key = image_key, label_key

  @functools.cached_property
  def builder(self):
    return load_builder(self.name, self.data_dir, self.manual_dir, self.process_count)

  @functools.cached_property
  def _records(self):
    import tensorflow_datasets as tfds

    fmt = _check_random_access(self.builder, self.file_format)
    check_split(self.builder, self.name, self.split)
    _raise_open_file_limit()  # readers are opened lazily, one per shard file (~1100 for ImageNet)
    records = self.builder.as_data_source(
      split=self.split,
      file_format=fmt,
      deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE,
    )
    try:
      if len(records):
        records[0]  # fail here, clearly, if the files cannot be read (e.g. gs:// paths)
    except Exception as e:
      raise DatasetNotReady(
        f"cannot read the {fmt} files of {self.name!r} under {self.builder.data_dir}: "
        f"{type(e).__name__}: {e}\narray_record reads local (POSIX) paths: copy the prepared "
        "dataset to local disk or mount the bucket (gcsfuse) and set data.data_dir to it."
      ) from e
    return records

  @property
  def num_classes(self) -> int:
    return self.builder.info.features[self.label_key].num_classes

  def __len__(self) -> int:
    return len(self._records)

  def record(self, index: int) -> dict:
    """The raw features of example `index`: image bytes, label, file_name (when present)."""
    feature = self._records[index].features.feature
    out = {
      "image": feature[self.image_key].bytes_list.value[0],
      "label": int(feature[self.label_key].int64_list.value[0]),
    }
    if "file_name" in feature:
      out["file_name"] = feature["file_name"].bytes_list.value[0].decode()
    return out

  @property
  def location(self) -> str:
    """Where the data is, for error messages."""
    return f"data.data_dir={self.data_dir!r}, TFDS {self.name!r} split {self.split!r}"

  def load(self, index: int, draft: int | None = None) -> tuple[Image.Image, int]:
    """(image, label) of example `index`; `draft`: see sources.decode (data.jpeg_draft)."""
    try:
      rec = self.record(index)
    except Exception as e:  # a damaged record: skipped and counted like an undecodable image
      raise BadImage(f"{self.name}/{self.split}[{index}]: {type(e).__name__}: {e}") from e
    name = rec.get("file_name", f"{self.name}/{self.split}[{index}]")
    return decode_image(rec["image"], name, draft), rec["label"]


def imagenet_sources(data_cfg, process_count: int = 1):
  """(train, eval) TfdsImageSources for the `data` config block."""
  fmt = data_cfg.get("file_format", "")
  return split_sources(TfdsImageSource, data_cfg, process_count, file_format=fmt)
