"""Latent caches: encode a dataset once with a tokenizer, then train generators from the cache.

format.py  the record bytes, dtypes, file names, plan.json and cache_info.json (`cache_info`,
           `decode_records`)
writer.py  the multi-process, resumable, atomic writer (`encode_dataset` with an injected
           `encode_fn`, `write_cache` from arrays)
reader.py  `LatentSource`, `LatentTrainData`, `LatentEvalData`
The tokenizer's encode function and the online encoder (no cache) are in
`softvq_jax.training.online_latents`: data/ holds no model code.
"""

from softvq_jax.data.latents.format import (
  CACHE_COMMAND,
  DTYPES,
  FORMAT_VERSION,
  INCOMPLETE_SUFFIX,
  INFO_FILE,
  PLAN_FILE,
  WRITER_OPTIONS,
  CacheConflictError,
  IncompleteCacheError,
  cache_info,
  decode_records,
  decode_variants,
  encode_records,
  np_dtype,
  shard_name,
  stats_name,
)
from softvq_jax.data.latents.reader import (
  LatentEvalData,
  LatentSource,
  LatentTrainData,
  flip_bits,
  padded_chunks,
)
from softvq_jax.data.latents.writer import (
  CenterCrops,
  encode_dataset,
  finalize,
  process_shards,
  shard_ranges,
  write_cache,
)

__all__ = [
  "CACHE_COMMAND",
  "DTYPES",
  "FORMAT_VERSION",
  "INCOMPLETE_SUFFIX",
  "INFO_FILE",
  "PLAN_FILE",
  "WRITER_OPTIONS",
  "CacheConflictError",
  "CenterCrops",
  "IncompleteCacheError",
  "LatentEvalData",
  "LatentSource",
  "LatentTrainData",
  "cache_info",
  "decode_records",
  "decode_variants",
  "encode_dataset",
  "encode_records",
  "finalize",
  "flip_bits",
  "np_dtype",
  "padded_chunks",
  "process_shards",
  "shard_name",
  "shard_ranges",
  "stats_name",
  "write_cache",
]
