"""The tokenizer evaluation command's library: load a tokenizer, evaluate a split, write results.

`evaluate_tokenizer` (behind `python -m softvq_jax.evaluate`) wires the data, the Inception and
LPIPS weights and the resumable loop of `reconstruction.py` together and writes `summary.json`,
the comparison grid and optionally the reconstructions as an ADM `.npz`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from softvq_jax.evaluation import common
from softvq_jax.evaluation.reconstruction import (
  ReconstructionState,
  RoundTrip,
  make_reconstruct_fn,
  run_reconstruction,
  summarize,
  tokenizer_round_trip,
)
from softvq_jax.utils.paths import user_path


def lpips_components(vgg_path: str | None, lin_path: str | None):
  """(lpips_fn, params) from the LPIPS weight files, or (None, None) without them.

  lin_path: the LPIPS heads (vgg.pth) or a full LPIPS state dict; vgg_path: the VGG16 trunk
  (may be empty when the lin file holds the trunk too).
  """
  if not vgg_path and not lin_path:
    return None, None
  if not lin_path:
    raise ValueError("LPIPS needs --lpips_lin (the LPIPS heads) besides --lpips_vgg")
  from softvq_jax.objectives.perceptual import lpips
  from softvq_jax.weights.lpips import load_lpips_params

  return lpips, load_lpips_params(vgg_path, lin_path)


def eval_data_config(data_cfg, split: str, crops: int):
  """A copy of a `data` config section set up for evaluation of `split` with `crops` views."""
  import ml_collections

  cfg = ml_collections.ConfigDict(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else data_cfg)
  cfg.eval_split = split
  cfg.eval_crops = crops
  return cfg


def local_share(num_images: int, process_index: int, process_count: int) -> int:
  """How many of the first `num_images` strided items (EvalData order) this process holds."""
  return len(range(process_index, num_images, process_count))


def evaluate_tokenizer(
  model: str | os.PathLike | Any,
  out_dir: str | os.PathLike,
  *,
  data_cfg: Any = None,
  split: str = "validation",
  num_images: int = 0,
  crops: int = 1,
  batch_size: int = 32,
  inception_path: str | None = None,
  inception_random_init: bool = False,
  ref_stats: str | None = None,
  lpips_vgg: str | None = None,
  lpips_lin: str | None = None,
  precision_recall: bool = False,
  grid_images: int = 16,
  save_npz: bool = False,
  save_every: int = 50,
  resume: bool = True,
  ema: bool = True,
  step: int | None = None,
  round_trip: RoundTrip | None = None,
  feature_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
  log_every_s: float = 10.0,
) -> dict[str, Any]:
  """Evaluates a tokenizer on a split; writes summary.json and PNG grids to `out_dir`.

  model: an exported model dir or a training workdir (`pretrained.load_tokenizer`, EMA params by
    default), or an already loaded `pretrained.PretrainedTokenizer`.
  data_cfg: a `data` config section (photos/folder/imagenet); defaults to the tokenizer's own.
  num_images: the first N images of the split (0: all), ADM center crop (`crops` > 1 adds fixed
    random crops, for tiny sets such as the bundled photos).
  round_trip: replaces encode -> decode (tests: an identity round trip gives rFID ~ 0).
  feature_fn: replaces the Inception (tests: a cheap stand-in with small feature dimensions, as
    scipy's sqrtm of a 2048 x 2048 matrix takes minutes on a small CPU).
  Returns the summary dict (also written to out_dir/summary.json).
  """
  import ml_collections

  from softvq_jax import data
  from softvq_jax.evaluation import adm_npz
  from softvq_jax.utils import images as image_utils
  from softvq_jax.weights import pretrained

  out_dir = user_path(out_dir)
  pi, pc = jax.process_index(), jax.process_count()
  comparable, inc_params = False, None
  if feature_fn is None and (inception_path or not inception_random_init):
    # first: a missing weight file fails before any other work (loading the file is quick)
    inc_params, comparable = common.inception_params(inception_path, inception_random_init)
  tok = model if isinstance(model, pretrained.PretrainedTokenizer) else None
  if tok is None:
    tok = pretrained.load_tokenizer(model, ema=ema, step=step)
  if data_cfg is None:
    if "data" not in tok.config:
      raise ValueError(
        f"{model}: the tokenizer's config has no `data` section; pass a config whose data section "
        "names the dataset (--config=configs/tokenizer_b.py --config.data.name=imagenet ...) or "
        "--data=photos"
      )
    data_cfg = ml_collections.ConfigDict(tok.config["data"])
  image_size = int(tok.config["model"]["image_size"])
  if data_cfg.get("name") != "imagenet" and split != "validation":
    print(
      f"note: --split={split!r} selects TFDS splits (data.name=imagenet) only; evaluating the "
      f"held-out images of data.name={data_cfg.get('name')!r}",
      flush=True,
    )
  eval_data = data.build_eval_data(
    eval_data_config(data_cfg, split, crops),
    image_size=image_size,
    batch_size=batch_size,
    process_index=pi,
    process_count=pc,
  )
  total = eval_data.num_examples if not num_images else min(num_images, eval_data.num_examples)
  local = local_share(total, pi, pc)
  fid_warning = common.fid_sample_warning(
    total, common.INCEPTION_POOL_DIM if feature_fn is None else None
  )
  common.warn(fid_warning)
  skipped = _skipped(ref_stats, lpips_lin, precision_recall)
  common.note_skipped(skipped)
  if feature_fn is None:  # random Inception weights: built after the cheap checks above
    if inc_params is None:
      inc_params, comparable = common.inception_params(inception_path, inception_random_init)
    feature_fn = common.inception_feature_fn(inc_params)

  lp_fn, lp_params = lpips_components(lpips_vgg, lpips_lin)
  q = tok.config.get("quantizer", {})  # code counts are filled only if encode returns indices
  reconstruct_fn = make_reconstruct_fn(
    round_trip or tokenizer_round_trip(tok), tok.params, lpips_fn=lp_fn, lpips_params=lp_params
  )
  state = ReconstructionState(
    precision_recall, int(q.get("num_codebooks", 1)), int(q.get("codebook_size", 0))
  )
  suffix = f".p{pi}" if pc > 1 else ""
  state_path = out_dir / f"eval_state{suffix}.npz" if resume else None
  if state_path is not None and pi == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
  writer = None
  if save_npz:
    if state_path is not None and state_path.is_file():
      state_path.unlink()  # the npz is streamed in one pass; a resumed run would leave a gap
    writer = adm_npz.SampleNpzWriter(
      out_dir / f"reconstructions{suffix}.npz", local, (image_size, image_size, 3)
    )
  progress = common.Progress(total, every_s=log_every_s)
  print(
    f"tokenizer evaluation: {total} images of split {split!r} at {image_size}px, batch "
    f"{batch_size}, {common.device_description()}",
    flush=True,
  )
  try:
    run_reconstruction(
      reconstruct_fn,
      feature_fn,
      eval_data.iterator(),
      state,
      max_images=local,
      grid_images=grid_images,
      state_path=state_path,
      save_every=save_every,
      progress=progress,
      on_batch=(lambda o, r: writer.write(r)) if writer is not None else None,
    )
    if writer is not None:
      writer.close()
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  progress.update(state.count * pc, force=True)
  summary = summarize(state, reference_stats=common.reference_statistics(ref_stats))
  summary.update(
    model=str(model)
    if not isinstance(model, pretrained.PretrainedTokenizer)
    else "<in-memory tokenizer>",
    split=split,
    image_size=image_size,
    crops=crops,
    inception_weights=(
      str(inception_path) if inception_path and comparable else "random-init or replaced"
    ),
    comparable=comparable,
    protocol=(
      "ADM center crop; originals and reconstructions as uint8 clamp(127.5x+128) (truncated); "
      "FID Inception (pt_inception-2015-12-05, TF1 resize to 299); PSNR/SSIM on uint8, data "
      "range 255"
    ),
    devices=common.device_description(),
    seconds=progress.elapsed(),
    images_per_second=progress.rate(),
  )
  if not comparable:
    summary["warning"] = common.RANDOM_INIT_WARNING
  if fid_warning:
    summary["fid_warning"] = fid_warning
  if skipped:
    summary["skipped"] = skipped
  if pi == 0:
    common.write_json(out_dir / "summary.json", summary)
    if len(state.grid_original):
      image_utils.save_png(
        out_dir / "reconstructions.png",
        image_utils.side_by_side(state.grid_original, state.grid_reconstruction, ncols=4),
      )
  common.remove_state(state_path)  # finished: only the results stay
  return common.plain(summary)


def _skipped(ref_stats, lpips_lin, precision_recall) -> dict[str, str]:
  """The optional metrics this run does not compute, and why."""
  out = {}
  if not ref_stats:
    out["fid_vs_reference"] = "no reference statistics (--ref_stats)"
  if not lpips_lin:
    out["lpips"] = "no LPIPS weights (--lpips_lin)"
  if not precision_recall:
    out["precision/recall"] = "not requested (--precision_recall)"
  return out
