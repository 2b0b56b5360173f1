"""The one photo decoder: EXIF orientation, 16-bit and float modes, transparency, the
pixel cap, and re-encoding for the service; plus the inputs around photos that used to be
accepted silently (a photo-less catalog for a fusion head, locations the index would cut)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_model.cli import build_parser
from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.errors import CatalogError
from fusion_model.photos import ImageDecodeError, decode_image, open_photo, reencode
from fusion_model.training.trainer import NoPhotosError, check_photos_for_head


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_16_bit_png_keeps_its_shades_instead_of_turning_white():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = png(Image.fromarray(ramp))
    pixels = decode_image(data, 64)
    assert pixels.shape == (64, 64, 3)
    assert pixels.min() < 10 and pixels.max() > 245 and 100 < pixels.mean() < 155


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (80, 40), "white")
    image.paste((255, 0, 0), (0, 0, 40, 40))  # red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    upright = open_photo(buffer.getvalue())
    assert upright.size == (40, 80)
    top, bottom = np.asarray(upright)[5, 20], np.asarray(upright)[75, 20]
    assert top[0] > 200 and top[1] < 80 and bottom.min() > 200  # red went to the top


def test_transparency_is_composited_onto_white():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    pixels = decode_image(png(image), 32)
    assert pixels.min() == 255


def test_reencoding_keeps_only_pixels():
    data = png(Image.new("RGB", (20, 20), "blue")) + b"<script>alert(1)</script>"
    fresh, media_type = reencode(open_photo(data))
    assert media_type == "image/jpeg" and b"<script>" not in fresh
    assert Image.open(io.BytesIO(fresh)).size == (20, 20)
    with pytest.raises(ImageDecodeError):
        open_photo(b"<html><script>alert(1)</script></html>")


def catalog_without(tmp_path, images: list[str | None]):
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(len(images))],
                             "title": ["shirt"] * len(images), "description": "",
                             "image": images})
    (tmp_path / "c").mkdir()
    products.to_csv(tmp_path / "c" / "products.csv", index=False)
    return load_catalog(str(tmp_path / "c"))


def test_a_fusion_head_on_a_catalog_without_photos_is_refused(tmp_path):
    catalog = catalog_without(tmp_path, [None, None, None])
    with pytest.raises(NoPhotosError, match="model.fusion=text_only"):
        check_photos_for_head(catalog, load_config("tiny"))
    check_photos_for_head(catalog, load_config("tiny", ["model.fusion=text_only"]))


def test_an_image_location_the_index_would_cut_is_refused(tmp_path):
    long_name = "a" * 600 + ".jpg"
    with pytest.raises(CatalogError, match=r"row 2: an image location may be at most 512"):
        catalog_without(tmp_path, ["images/p0.jpg", f"images/{long_name}"])


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_serve_refuses_a_follow_interval_that_is_not_a_finite_number(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--follow-interval", value])
    assert "follow-interval" in capsys.readouterr().err
