"""Where models run: CPU autocast precision (bf16 where the CPU computes it natively, fp32
elsewhere) and the fingerprint of frozen weights that keys the feature cache. The one place
a device and an inference runtime are chosen; ``prefetched`` overlaps preparing inputs
with running them."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

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


def weights_fingerprint(label: str, modules: list[nn.Module]) -> str:
    """A short hash of ``label`` and the (first 4 KiB of each) tensor of ``modules``."""
    digest = hashlib.sha256(label.encode())
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()[:20]


def prefetched(items: Iterator, prepare: Callable, ahead: int = 2) -> Iterator:
    """``prepare(item)`` for each item, computed up to ``ahead`` items in advance in one
    background thread (which also runs the iterator); errors surface in order."""
    done = object()

    def next_prepared():  # one worker thread: the iterator is advanced in order
        item = next(items, done)
        return done if item is done else prepare(item)

    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as worker:
        pending = [worker.submit(next_prepared) for _ in range(ahead)]
        while True:
            result = pending.pop(0).result()
            if result is done:
                return
            pending.append(worker.submit(next_prepared))
            yield result
