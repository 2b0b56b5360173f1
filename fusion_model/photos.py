"""Photo decoding shared by training, indexing, validation, the gallery and the service.

One decoder for every reader of a photo: the decompression-bomb guard (read from the
header before any pixel is decoded), the EXIF orientation applied (phones store a
rotated photo plus a tag), and 16-bit and float modes scaled to 8 bits (Pillow's
``convert("RGB")`` clips a 16-bit value to 255, so a 16-bit PNG came out white).
``reencode`` turns a decoded photo into fresh JPEG or PNG bytes: the service sends only
these, never the stored file, so nothing but pixels reaches a browser.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from fusion_model.errors import BadInputError

# The same bound as validation's ``max_image_pixels``.
MAX_IMAGE_PIXELS = 40_000_000
# Part of the photo feature caches' keys: bump it whenever decoding gives other pixels,
# so that features cached by an older decoder are not mixed with fresh ones.
# 2: EXIF orientation, 16-bit scaling, transparency onto white.
DECODER_REVISION = 2
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageDecodeError(BadInputError):
    """A photo cannot be decoded (empty, undecodable, truncated or too many pixels)."""

    def __init__(self, uri: str, reason: str, product_id: str | None = None):
        self.uri, self.reason, self.product_id = uri, reason, product_id
        who = f"product {product_id}: " if product_id else ""
        super().__init__(f"{who}{uri}: cannot use this photo ({reason}); fix or remove the "
                         "image reference (`fusion-model validate` lists every bad photo)")

    def __reduce__(self):  # raised in a decoding process, re-raised in the caller
        return type(self), (self.uri, self.reason, self.product_id)


def open_photo(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, uri: str = "<bytes>",
               draft: int | None = None) -> Image.Image:
    """Photo bytes -> an upright RGB (or RGBA, when it has transparency) image, fully
    decoded. ``draft``: a side length to let JPEG decode at a reduced scale.
    ImageDecodeError for empty, undecodable or truncated data, and for headers declaring
    more than ``max_pixels`` pixels."""
    if not data:
        raise ImageDecodeError(uri, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(uri, f"{width}x{height} exceeds {max_pixels:,} "
                                                "pixels")
                if draft:
                    image.draft("RGB", (draft, draft))
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(uri, f"decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise ImageDecodeError(uri, f"{type(exc).__name__}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB (RGBA when the photo has transparency), high bit depths scaled down."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255 \
            else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round()
                                .astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def decode_image(data: bytes, size: int, max_pixels: int = MAX_IMAGE_PIXELS,
                 uri: str = "<bytes>") -> np.ndarray:
    """Photo bytes -> (size, size, 3) uint8 RGB, resized with bilinear filtering
    (transparency composited onto white, as a shop shows it)."""
    image = open_photo(data, max_pixels, uri, draft=size)
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    return np.asarray(image.resize((size, size), Image.BILINEAR))


def reencode(image: Image.Image, max_side: int | None = None) -> tuple[bytes, str]:
    """(bytes, media type) of a decoded photo written anew: PNG when it has transparency,
    else JPEG; ``max_side`` shrinks it first (aspect kept)."""
    if max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    if image.mode == "RGBA":
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), "image/png"
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"
