"""Loading torch files from shared work dirs: tensors and plain containers only, never code."""

from __future__ import annotations

import pickle
from pathlib import Path

from fusion_model.errors import BadInputError


class UnsafeFileError(BadInputError):
    """A torch file that is corrupt or holds more than tensors and plain data."""


def load_tensors(path: str | Path, what: str):
    """``torch.load(path, weights_only=True)`` with a named error for a file that would
    need arbitrary unpickling (refused) or that is truncated or corrupt."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"{what} {path} holds objects other than tensors and plain "
                              "data; refusing to unpickle it (it may run code). Delete it "
                              "if you did not put it there") from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise UnsafeFileError(f"{what} {path} is truncated or corrupt ({exc}); delete it "
                              "to start afresh") from exc
