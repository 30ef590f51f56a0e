"""The report's comparison of compression with quantization, when a sweep scored its runs quantized
(`embtables sweep --dtypes fp32,int8,int4`): every run ordered by bytes with the Pareto front marked, so a reader sees
at each size whether a compressed fp32 table, a quantized full table, or both combined loses the least AUC."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from embtables.stores.quantized_store import DTYPES, FP32


def dtype_of(method: str) -> str:
    """The dtype of an aggregated line: its label's suffix ("qr int8" -> "int8"), else fp32."""
    last = method.rsplit(" ", 1)[-1]
    return last if last in DTYPES else FP32


def quantized_section(agg: pd.DataFrame, front: pd.DataFrame, label: Callable[[str, str], str]) -> list[str]:
    """The section's lines; none when no run was scored quantized.

    Args:
        agg: the aggregated lines (`report.aggregate`), quantized ones labelled "<method> <dtype>".
        front: the Pareto front of `agg` on bytes (`report.pareto`).
        label: the report's label of (method, options).
    """
    if not any(dtype_of(m) != FP32 for m in agg["method"]):
        return []
    lines = ["## Compression against quantization", "",
             "Every run by bytes: fp32 runs as trained, and each run's best checkpoint scored with its tables quantized "
             "after training (fp16, or int8/int4 with a row-wise fp16 scale and bias, FBGEMM's inference kernels; no "
             "training in those dtypes). \"front\" marks the Pareto front: no other run has fewer bytes and a higher "
             "AUC.", "",
             "| bytes | of full | run | budget asked | dtype | test AUC | gap to full | front |",
             "|---|---|---|---|---|---|---|---|"]
    on_front = set(front.index)
    for i, r in agg.sort_values("bytes").iterrows():
        lines.append(_row(i, r, on_front, label))
    return lines + [""]


def _row(i: Any, r: Any, on_front: set, label: Callable[[str, str], str]) -> str:
    dtype = dtype_of(r["method"])
    method = r["method"] if dtype == FP32 else r["method"].rsplit(" ", 1)[0]
    return (f"| {r['bytes']:,.0f} | {r['bytes'] / r['full_bytes']:.4g} | {label(method, r['options'])} | "
            f"{r['budget']:g} | {dtype} | {r['auc']:.4f} ({r['auc_min']:.4f}..{r['auc_max']:.4f}) | "
            f"{r['gap_to_full']:+.4f} | {'front' if i in on_front else ''} |")
