"""FLOPs of a compiled step and model FLOP utilisation (MFU) against a per-chip peak table.

`compiled_flops` reads XLA's cost analysis of a compiled executable. For an SPMD-partitioned
(`jax.jit` with shardings) executable that is the cost of the module one device runs, so the
figure is **per device**; `tflops_per_device = flops * steps_per_sec / 1e12` needs no division by
the device count. It counts what XLA compiled (rematerialised recomputation included), i.e.
hardware FLOPs, and a `while` body (a `lax.scan`, e.g. gradient accumulation) is counted once.

`PEAK_TFLOPS` are dense bf16 peaks per chip (= per JAX device on TPU v4 and later and on GPUs),
from the vendors' data sheets; `peak_tflops(device_kind)` matches a `jax.Device.device_kind`.
"""

from __future__ import annotations

from typing import Any

# (device_kind prefix, dense bf16 TFLOP/s per device); the first matching prefix wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
  ("TPU v4 lite", 137.5),  # v4i
  ("TPU v4", 275.0),
  ("TPU v5 lite", 197.0),  # v5e
  ("TPU v5e", 197.0),
  ("TPU v5p", 459.0),
  ("TPU v5", 459.0),  # v5p reports "TPU v5"
  ("TPU v6 lite", 918.0),  # v6e (Trillium)
  ("TPU v6e", 918.0),
  ("NVIDIA H100 PCIe", 756.0),
  ("NVIDIA H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
  ("NVIDIA H200", 989.0),
  ("NVIDIA A100", 312.0),  # "NVIDIA A100-SXM4-80GB", "-40GB", "NVIDIA A100-PCIE-40GB"
)


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak TFLOP/s of one device: `override` if > 0, else from the table; None if unknown."""
  if override and override > 0:
    return float(override)
  kind = (device_kind or "").strip()
  for prefix, peak in PEAK_TFLOPS:
    if kind.lower().startswith(prefix.lower()):
      return peak
  return None


def compiled_flops(compiled: Any) -> float | None:
  """Per-device FLOPs of one call of a `jax.stages.Compiled`, or None if XLA gives none.

  `cost_analysis()` is a dict in current JAX, a list of per-module dicts in older versions (or
  None on some backends); a list is summed.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return None
  if cost is None:
    return None
  if isinstance(cost, dict):
    cost = [cost]
  total = sum(float(c.get("flops", 0.0) or 0.0) for c in cost if c)
  return total if total > 0 else None


def utilisation(flops: float | None, steps_per_sec: float, peak: float | None) -> dict[str, float]:
  """{"perf/tflops_per_device", "perf/mfu"} of per-device `flops` at `steps_per_sec`.

  Without FLOPs: {}; without a peak: TFLOP/s only.
  """
  if not flops:
    return {}
  tflops = flops * steps_per_sec / 1e12
  out = {"perf/tflops_per_device": tflops}
  if peak:
    out["perf/mfu"] = tflops / peak
  return out
