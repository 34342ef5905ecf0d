"""Generator evaluation: sample N images, write ADM's `.npz`, compute gFID/sFID/IS/precision/recall.

Samples come from `softvq_jax.sampling.generate` (noise -> sampler with CFG -> tokenizer decode ->
uint8), in parts of `part_size` images: each part is saved (`parts/part_#####.npz`), its Inception
features are streamed into the running statistics, and the state is saved, so an interrupted
50k-sample run resumes at the next part with the same images (sample i always uses the key
fold_in(key(seed), i)). At the end the parts are assembled into one ADM sample batch
`samples_{N}x{S}x{S}x3.npz` (`arr_0` uint8 NHWC, `arr_1` labels) that OpenAI's evaluator reads, and
the metrics are computed against an ADM reference batch (`VIRTUAL_imagenet256_labeled.npz`:
precomputed mu/sigma for FID/sFID as ADM uses them; its images for precision/recall).
Several processes each generate a contiguous share of the sample indices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from softvq_jax.evaluation import adm_npz, common, features
from softvq_jax.utils.paths import is_uri, user_path

FeatureFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def sample_labels(num: int, classes: str = "", num_classes: int = 1000) -> np.ndarray:
  """Labels of the N samples: the chosen classes cycled (50 per class for 50k ImageNet)."""
  from softvq_jax.sampling.generate import parse_classes

  cls = parse_classes(classes, num_classes)
  return cls[np.arange(num) % len(cls)]


def process_range(num: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[lo, hi) of the sample indices this process generates (contiguous shares)."""
  per = -(-num // process_count)
  return min(num, process_index * per), min(num, (process_index + 1) * per)


def reference_features(
  ref: adm_npz.ReferenceBatch,
  feature_fn: FeatureFn,
  out_dir: epath.Path,
  batch_size: int,
  need_rows: bool,
) -> features.FeatureAccumulator | None:
  """The reference images' features (resumable, cached in out_dir/reference_features.npz).

  Needed for precision/recall (ADM recomputes the reference pool activations from its images)
  and when the reference has no precomputed statistics; None if neither applies.
  """
  if ref.num_images == 0 or not (need_rows or not ref.has_statistics):
    return None
  acc = features.FeatureAccumulator(("pool", "spatial"), ("pool",) if need_rows else ())
  print(f"reference batch: {ref.num_images} images through the feature network", flush=True)
  return features.extract_features(
    feature_fn,
    lambda start: ref.iter_images(batch_size, start),
    acc,
    state_path=out_dir / "reference_features.npz",
    save_every=20,
  )


def _in_memory(acc: features.FeatureAccumulator) -> features.FeatureAccumulator:
  """A copy of a (possibly memmap-backed) accumulator with its rows in memory."""
  sd = acc.state_dict()
  for k in acc.keep:
    sd[f"rows/{k}"] = np.asarray(acc.rows(k)) if acc.count else np.zeros((0, 0), np.float32)
  out = features.FeatureAccumulator(acc.stats, acc.keep)
  out.load_state_dict(sd)
  return out


def generate_and_extract(
  make_batches: Callable[[int], Iterator[np.ndarray]],
  labels: np.ndarray,
  lo: int,
  hi: int,
  feature_fn: FeatureFn,
  acc: features.FeatureAccumulator,
  parts_dir: epath.Path,
  *,
  part_size: int,
  progress: common.Progress | None = None,
) -> list[epath.Path]:
  """Samples [lo, hi) part by part: part file, features, state; resumes after the last state.

  make_batches(start) yields uint8 (b, S, S, 3) batches of the samples start, start + 1, ...,
  hi - 1 in order (one sampling pipeline, compiled once, for the whole run). Returns the part
  files in order.
  """
  state_path = parts_dir / f"features_{lo:08d}_{hi:08d}.npz"
  if state_path.is_file():
    acc.load(state_path)
    if acc.count:
      print(f"resuming generation after {acc.count} samples ({state_path})", flush=True)
  starts = list(range(lo, hi, part_size))
  parts = [parts_dir / f"part_{s:08d}_{min(s + part_size, hi):08d}.npz" for s in starts]
  if lo + acc.count < hi and lo + acc.count not in starts:
    raise RuntimeError(
      f"{state_path} holds {acc.count} samples, not at a part boundary of part_size "
      f"{part_size}; rerun with the part_size of the interrupted run or delete {parts_dir}"
    )
  batches: Iterator[np.ndarray] | None = None
  pending: list[np.ndarray] = []
  for start, path in zip(starts, parts):
    end = min(start + part_size, hi)
    if acc.count >= end - lo:
      continue  # done before the interruption
    if batches is None:
      batches = iter(make_batches(start))
    while sum(len(b) for b in pending) < end - start:
      pending.append(np.asarray(next(batches)))
    rows = np.concatenate(pending)
    images, rest = rows[: end - start], rows[end - start :]
    pending = [rest] if len(rest) else []
    adm_npz.save_samples_npz(path, images, labels[start:end])
    acc.update(feature_fn(images))
    acc.save(state_path)
    if progress is not None:
      progress.update(acc.count * jax.process_count())
  return parts


def assemble_npz(
  parts: list[epath.Path], path: epath.Path, num: int, image_shape: tuple[int, int, int]
) -> epath.Path:
  """Streams the part files into one ADM sample batch (arr_0 images, arr_1 labels)."""
  with adm_npz.SampleNpzWriter(path, num, image_shape, with_labels=True) as w:
    for part in parts:
      with epath.Path(part).open("rb") as f, np.load(f, allow_pickle=False) as d:
        w.write(d["arr_0"], d["arr_1"])
  return path


def evaluate_sample_stream(
  make_batches: Callable[[int, int], Iterator[np.ndarray]],
  labels: np.ndarray,
  image_size: int,
  out_dir: str | os.PathLike,
  *,
  part_size: int = 1000,
  batch_size: int = 64,
  ref_batch: str | None = None,
  inception_path: str | None = None,
  inception_random_init: bool = False,
  precision_recall: bool = True,
  keep_parts: bool = False,
  feature_fn: FeatureFn | None = None,
  info: Mapping[str, Any] | None = None,
  log_every_s: float = 10.0,
) -> dict[str, Any]:
  """The sampler-independent core: parts, features, the ADM `.npz`, metrics, summary.json.

  make_batches(start, stop) yields uint8 (b, S, S, 3) batches of the samples start .. stop - 1
  (whose labels are labels[start:stop]) in order. `info` (sampler settings etc.) is added to the
  summary. `feature_fn` replaces the Inception (tests; the reference statistics' dimensions are
  then not checked against ADM's 2048 / 2023).
  """
  out_dir = user_path(out_dir)
  pi, pc = jax.process_index(), jax.process_count()
  num_samples = len(labels)
  if feature_fn is None:
    inc_params, comparable = common.inception_params(inception_path, inception_random_init)
    feature_fn = common.inception_feature_fn(inc_params)
  else:
    comparable = False
  ref = None
  if ref_batch:
    ref = adm_npz.load_reference_batch(ref_batch, dims=None if not comparable else (2048, 2023))
  skipped = _skipped(ref, precision_recall)
  common.note_skipped(skipped)
  fid_warning = None
  if ref is not None:
    fid_warning = common.fid_sample_warning(num_samples, None if not comparable else 2048)
    common.warn(fid_warning)
  lo, hi = process_range(num_samples, pi, pc)
  parts_dir = out_dir / "parts"
  parts_dir.mkdir(parents=True, exist_ok=True)
  keep = ("logits", "pool") if precision_recall and ref is not None else ("logits",)
  # kept rows: a memmap next to the parts locally; in memory (saved with the state) on gs://
  rows_dir = None if is_uri(out_dir) else parts_dir / f"rows_{lo:08d}_{hi:08d}"
  acc = features.FeatureAccumulator(
    ("pool", "spatial"), keep, memmap_dir=rows_dir, capacity=hi - lo
  )
  progress = common.Progress(num_samples, "samples", every_s=log_every_s)
  size = image_size
  npz_path = out_dir / f"samples_{num_samples}x{size}x{size}x3.npz"
  state_path = parts_dir / f"features_{lo:08d}_{hi:08d}.npz"
  if _complete(npz_path, num_samples) and not state_path.is_file():
    parts = _features_from_npz(npz_path, lo, hi, feature_fn, acc, batch_size, progress)
  else:
    parts = generate_and_extract(
      lambda start: make_batches(start, hi),
      labels,
      lo,
      hi,
      feature_fn,
      acc,
      parts_dir,
      part_size=part_size,
      progress=progress,
    )
  progress.update(acc.count * pc, force=True)
  samples_per_s = progress.rate()

  merged = features.merge_across_processes(_in_memory(acc))
  ref_acc = None
  if ref is not None:
    ref_acc = reference_features(ref, feature_fn, out_dir, batch_size, "pool" in keep)
  ref_stats = (
    {k: getattr(ref, k) for k in adm_npz.STAT_KEYS} if ref and ref.has_statistics else None
  )
  result = features.adm_metrics(merged, ref_acc, ref_stats)

  all_parts = sorted(parts_dir.glob("part_*.npz")) if pc > 1 else parts
  if pi == 0 and _complete(npz_path, num_samples):
    print(f"{npz_path} is already complete", flush=True)
  elif pi == 0:
    if pc > 1 and len(all_parts) != len(_expected_parts(num_samples, pc, part_size)):
      print(
        f"not assembling {npz_path.name}: process 0 sees {len(all_parts)} part files (the "
        "processes need a shared out_dir); the parts stay in place",
        flush=True,
      )
    else:
      assemble_npz(all_parts, npz_path, num_samples, (size, size, 3))
      if not keep_parts:
        for p in all_parts:
          p.unlink()
  summary: dict[str, Any] = {
    "num_samples": num_samples,
    **{
      k: result[k] for k in ("fid", "sfid", "inception_score", "precision", "recall") if k in result
    },
    "npz": str(npz_path),
    "reference": str(ref_batch) if ref_batch else None,
    **dict(info or {}),
    "image_size": size,
    "batch_size": batch_size,
    "samples_per_second": samples_per_s,
    "seconds": progress.elapsed(),
    "devices": common.device_description(),
    "inception_weights": str(inception_path) if comparable else "random-init or replaced",
    "comparable": comparable,
  }
  if not comparable:
    summary["warning"] = common.RANDOM_INIT_WARNING
  if fid_warning:
    summary["fid_warning"] = fid_warning
  if skipped:
    summary["skipped"] = skipped
  if pi == 0:
    common.write_json(out_dir / "summary.json", summary)
  _remove_state(npz_path, num_samples, state_path, rows_dir, out_dir, parts_dir)
  return common.plain(summary)


def _skipped(ref, precision_recall: bool) -> dict[str, str]:
  """The metrics this run does not compute, and why (FID needs the ADM reference batch)."""
  if ref is None:
    why = "no ADM reference batch (--ref_batch)"
    return {"fid": why, "sfid": why, "precision/recall": why}
  if not precision_recall:
    return {"precision/recall": "not requested"}
  return {}


def _features_from_npz(npz_path, lo, hi, feature_fn, acc, batch_size, progress) -> list:
  """A finished run's samples, read back from its complete `.npz` instead of sampled again."""
  print(f"{npz_path.name} is complete: features from it, no sampling", flush=True)
  for batch in adm_npz.iter_npz_batches(npz_path, batch_size, start=lo):
    batch = batch[: hi - lo - acc.count]
    if not len(batch):
      break
    acc.update(feature_fn(np.asarray(batch)))
    progress.update(acc.count * jax.process_count())
  return []


def _remove_state(npz_path, num, state_path, rows_dir, out_dir, parts_dir) -> None:
  """Once the `.npz` is complete, the resume state goes (features, rows, reference features);
  the samples `.npz`, summary.json and kept part files stay."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("softvq_jax generation evaluation finished")
  if not _complete(npz_path, num):
    return  # the parts are still needed (not assembled): keep everything for a rerun
  common.remove_state(state_path, rows_dir)
  if jax.process_index() == 0:
    common.remove_state(out_dir / "reference_features.npz")
    if parts_dir.is_dir() and not any(parts_dir.iterdir()):
      parts_dir.rmdir()


def evaluate_generation(
  generator: Any,
  out_dir: str | os.PathLike,
  *,
  settings: Any = None,
  tokenizer: Any = None,
  num_samples: int = 50_000,
  classes: str = "",
  batch_size: int = 64,
  seed: int = 0,
  **kw,
) -> dict[str, Any]:
  """Samples `num_samples` images with a SiT/DiT, writes the ADM `.npz` and summary.json.

  generator: a generator model dir / training workdir (`generate.load_generator`, with
    `tokenizer` overriding the recorded one) or a loaded `generate.Generator`.
  settings: a `generate.SamplerSettings` (sampler, steps, CFG scale and interval).
  classes: "" (all, cycled: 50 per class for 50k), "0-9", "1,5,7".
  Other keywords (ref_batch, inception_path, part_size, ...): `evaluate_sample_stream`. Without
  a reference batch only IS is computed (plus the .npz).
  """
  from softvq_jax.sampling import generate as gen_lib

  gen = generator
  if not isinstance(generator, gen_lib.Generator):
    gen = gen_lib.load_generator(generator, tokenizer)
  if gen.tokenizer is None:
    raise ValueError("generation evaluation decodes images: pass the tokenizer (--tokenizer)")
  settings = settings or gen_lib.SamplerSettings()
  labels = sample_labels(num_samples, classes, gen.model.num_classes)

  def make_batches(start: int, stop: int) -> Iterator[np.ndarray]:
    it = gen_lib.generate(
      gen, labels[start:stop], settings, batch_size=batch_size, seed=seed, start_index=start
    )
    return (images for images, _ in it)

  print(
    f"generation evaluation: {num_samples} samples at {gen.image_size}px, {settings}, batch "
    f"{batch_size}, {common.device_description()}",
    flush=True,
  )
  info = {
    "sampler": settings.sampler,
    "steps": settings.steps,
    "cfg_scale": settings.cfg_scale,
    "cfg_interval": list(settings.cfg_interval),
    "heun": settings.heun,
    "path": settings.path,
    "seed": seed,
    "classes": classes or "all",
  }
  return evaluate_sample_stream(
    make_batches, labels, gen.image_size, out_dir, batch_size=batch_size, info=info, **kw
  )


def _complete(path: epath.Path, num: int) -> bool:
  if not path.is_file():
    return False
  shape, dtype = adm_npz.npz_array_info(path)
  return shape[0] == num and dtype == np.uint8


def _expected_parts(num: int, pc: int, part_size: int) -> list[tuple[int, int]]:
  out = []
  for p in range(pc):
    lo, hi = process_range(num, p, pc)
    out += [(s, min(s + part_size, hi)) for s in range(lo, hi, part_size)]
  return out
