"""CPU autocast precision: bf16 where the CPU computes it natively, fp32 elsewhere."""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def native_bf16() -> bool:
    """True when oneDNN runs bf16 on this CPU (AVX-512 or AMX). On AVX2-only CPUs bf16 is
    emulated and a training step is several times slower than in fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def uses_bf16(precision: str) -> bool:
    """``bf16``: always; ``auto``: where native; ``fp32``: never."""
    return precision == "bf16" or (precision == "auto" and native_bf16())


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16(precision))
