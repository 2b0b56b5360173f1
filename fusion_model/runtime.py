"""Where models run: the ``Runtime`` of a run (engine, precision, device, distributed
backend), resolved once (``fusion_model.engines.resolve_runtime``) and passed down; autocast
precision (bf16 where the CPU computes it natively, fp32 elsewhere); the fingerprint of
frozen weights that keys the feature cache; ``prefetched`` overlaps preparing inputs with
running them."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


@dataclass(frozen=True)
class Runtime:
    """Where one run computes, every choice resolved (no ``auto`` left): the engine that
    runs frozen encoders and trained towers (``torch`` or ``openvino``), the autocast
    precision (``bf16`` or ``fp32``), the torch device, and the ``torch.distributed``
    backend that takes that device's tensors (gloo on the CPU, NCCL on CUDA)."""

    engine: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    distributed: str = "gloo"
    compile: bool = False  # torch.compile the frozen graphs (on CUDA only)

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    @property
    def decode_processes(self) -> int:
        """Photo-decoding processes that feed this device: every core for a GPU; none on
        the CPU, where threads beside the encoder measured fastest (RESULTS.md)."""
        return (os.cpu_count() or 1) if self.device_type == "cuda" else 0

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on this runtime's device: as it is on the CPU; on CUDA copied from
        pinned memory without blocking (the copy overlaps the work queued before it)."""
        if self.device_type == "cpu" or tensor.device.type != "cpu":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a named error for a CUDA
    device that is not there."""
    from fusion_model.errors import BadInputError

    if not DEVICE.fullmatch(device):
        raise BadInputError(f"runtime.device={device!r}: use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise BadInputError(f"runtime.device={device}: no such CUDA device here "
                                f"({torch.cuda.device_count()} visible); use "
                                "runtime.device=auto or cpu")
    return device


def process_device(device: str) -> str:
    """Under torchrun each process takes its own GPU: ``cuda`` -> ``cuda:$LOCAL_RANK``
    (a named ``cuda:N`` stays as it is; so does the CPU)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``bf16`` or ``fp32``: ``auto`` is bf16 where the device computes it natively."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16() else "fp32"


@functools.cache
def native_bf16() -> bool:
    """True when oneDNN runs bf16 on this CPU (AVX-512 or AMX). On AVX2-only CPUs bf16 is
    emulated and a training step is several times slower than in fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def uses_bf16(precision: str) -> bool:
    """``bf16``: always; ``auto``: where native; ``fp32``: never."""
    return precision == "bf16" or (precision == "auto" and native_bf16())


def autocast(precision: str, device_type: str = "cpu"):
    """Autocast for a precision setting (``auto`` resolved for the CPU): the reference
    path of a model's own methods; a run uses ``Runtime.autocast``."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=uses_bf16(precision))


def weights_fingerprint(label: str, modules: list[nn.Module]) -> str:
    """A short hash of ``label`` and the (first 4 KiB of each) tensor of ``modules``."""
    digest = hashlib.sha256(label.encode())
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy()
                          .tobytes()[:4096])
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
