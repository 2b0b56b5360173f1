"""Image integrity: exists, decodes fully, big enough, not a decompression bomb, RGB-able."""

from __future__ import annotations

import io
import warnings

import pandas as pd
from PIL import Image

from fusion_model import storage
from fusion_model.errors import StorageError, UnsupportedURIError
from fusion_model.progress import progress_bar

STATUSES = ("ok", "no_image", "not_found", "unsupported_uri", "empty_file", "undecodable",
            "truncated", "too_small", "too_many_pixels", "unsupported_mode")


def check_image(data: bytes, min_side: int, max_pixels: int) -> tuple[str, str]:
    """(status, detail) for one image's bytes; the header is read before any decoding."""
    if not data:
        return "empty_file", "zero bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return "too_many_pixels", f"{width}x{height} exceeds {max_pixels:,} pixels"
            if min(width, height) < min_side:
                return "too_small", f"{width}x{height} is below {min_side}px"
            image.load()
            image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return "too_many_pixels", str(exc)
    except OSError as exc:
        status = "truncated" if "truncated" in str(exc).lower() else "undecodable"
        return status, str(exc)
    except ValueError as exc:
        return "unsupported_mode", str(exc)
    return "ok", f"{image.format} {width}x{height} {image.mode}"


def check_images(products: pd.DataFrame, min_side: int, max_pixels: int, workers: int = 8,
                 progress: bool = True) -> pd.DataFrame:
    """One row per product (same order): product_id, image_uri, status, detail."""

    def check(uri: str | None) -> tuple[str, str]:
        if not isinstance(uri, str):
            return "no_image", "no image referenced"
        try:
            data = storage.read_bytes(uri)
        except UnsupportedURIError as exc:
            return "unsupported_uri", str(exc)
        except StorageError as exc:
            return "not_found", str(exc)
        return check_image(data, min_side, max_pixels)

    uris = products["image_uri"].tolist()
    results = list(progress_bar(storage.parallel_map_iter(check, uris, workers),
                                total=len(uris), desc="check images", unit="img",
                                show=progress))
    return pd.DataFrame({"product_id": products["product_id"].astype(str).to_numpy(),
                         "image_uri": uris, "status": [s for s, _ in results],
                         "detail": [d for _, d in results]})
