"""Features: what training, inference, the pyfunc models and indexing all read products as.

Product text, photo decoding (with the decompression-bomb guard), parallel photo loading,
and the frozen-encoder features cached on disk by content hash and encoder fingerprint.

The frozen lower layers of both encoders never change during training, so their outputs
are computed once per (item content, encoder fingerprint) and stored under
``<cache_dir>/<namespace>/<fingerprint>/``. A second run over the same catalog reads them
back instead of re-encoding; a changed image or title is a new key and only it is encoded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fusion_model import engines, storage
from fusion_model.data.retrieval import product_text
from fusion_model.photos import DECODER_REVISION, ImageDecodeError, decode_image
from fusion_model.progress import progress_bar
from fusion_model.runtime import Runtime, prefetched
from fusion_model.tensor_files import load_tensors

log = logging.getLogger(__name__)
__all__ = ["FeatureCache", "ImageDecodeError", "decode_image", "load_images", "product_text"]

Batch = dict[str, torch.Tensor]


class FeatureCache:
    """Shards of tensors keyed by item key, under one directory per encoder fingerprint."""

    def __init__(self, root: str | Path, namespace: str, fingerprint: str):
        self.dir = Path(root).expanduser() / namespace / fingerprint
        self.stats = {"hits": 0, "computed": 0}

    def _index(self) -> dict[str, tuple[str, int]]:
        index: dict[str, tuple[str, int]] = {}
        for meta in sorted(self.dir.glob("shard-*.json")):
            keys = json.loads(meta.read_text())
            index.update({k: (meta.with_suffix(".pt").name, i) for i, k in enumerate(keys)})
        return index

    def get(self, keys: list[str], compute: Callable[..., Batch], batch_size: int,
            desc: str, progress: bool = True,
            prepare: Callable[[list[int]], object] | None = None) -> Batch:
        """Features for every key, computing (in batches) and storing only missing ones.
        ``compute`` takes a batch's indices, or with ``prepare`` what ``prepare`` made of
        them: the next batches are prepared (photos read and decoded, say) in a background
        thread while ``compute`` runs."""
        index = self._index()
        missing = [i for i, k in enumerate(keys) if k not in index]
        unique_missing = list({keys[i]: i for i in missing}.values())
        self.stats = {"hits": len(keys) - len(missing), "computed": len(unique_missing)}
        if unique_missing:
            self._compute_and_store(keys, unique_missing, compute, batch_size, desc, progress,
                                    prepare)
            index = self._index()
        return self._gather(keys, index)

    def _compute_and_store(self, keys, todo, compute, batch_size, desc, progress,
                           prepare=None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        shard_size = max(batch_size, 2048)
        shards = [todo[start:start + shard_size] for start in range(0, len(todo), shard_size)]
        batches = [[chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
                   for chunk in shards]
        everything = iter([batch for shard in batches for batch in shard])
        inputs = prefetched(everything, prepare) if prepare else everything
        bar = progress_bar(total=len(todo), desc=desc, unit="item", show=progress)
        for chunk, shard_batches in zip(shards, batches):
            parts = []
            for batch in shard_batches:
                parts.append(compute(next(inputs)))
                bar.update(len(batch))
            shard = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
            name = f"shard-{uuid.uuid4().hex[:12]}"
            torch.save(shard, self.dir / f"{name}.pt")
            # the key list is written last: a shard without it is ignored (crash-safe)
            (self.dir / f"{name}.json").write_text(json.dumps([keys[i] for i in chunk]))
        bar.close()

    def _gather(self, keys: list[str], index: dict[str, tuple[str, int]]) -> Batch:
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = index[key]
            by_shard.setdefault(shard, []).append((position, row))
        out: Batch = {}
        for shard, pairs in by_shard.items():
            data = load_tensors(self.dir / shard, "feature cache shard")
            positions = torch.tensor([p for p, _ in pairs])
            rows = torch.tensor([r for _, r in pairs])
            for name, tensor in data.items():
                if name not in out:
                    out[name] = torch.empty((len(keys), *tensor.shape[1:]), dtype=tensor.dtype)
                out[name][positions] = tensor[rows]
        return out


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def photos_named_by_product(products) -> Iterator[None]:
    """Re-raise an ImageDecodeError naming the product whose photo failed."""
    try:
        yield
    except ImageDecodeError as exc:
        owners = products.loc[products["image_uri"] == exc.uri, "product_id"]
        if exc.product_id or owners.empty:
            raise
        raise ImageDecodeError(exc.uri, exc.reason, str(owners.iloc[0])) from exc


def load_images(uris: list[str | None], size: int, workers: int = 8) -> list[np.ndarray | None]:
    """Decode images in parallel threads; ``None`` for products without a photo."""

    def load(uri: str | None) -> np.ndarray | None:
        return None if uri is None else decode_image(storage.read_bytes(uri), size, uri=uri)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(load, uris))


def text_bottom_features(encoder, texts: list[str], max_length: int, cache_root: str,
                         runtime: Runtime, batch_size: int = 128,
                         desc: str = "text features", progress: bool = True) -> Batch:
    """{"hidden": (N, max_length, D) bf16, "mask": (N, max_length) bool} via the cache;
    missing items are encoded on the runtime's engine and device (fusion_model.engines)."""
    cache = FeatureCache(cache_root, "text", f"{encoder.fingerprint()}-{max_length}")
    bottom = functools.cache(lambda: engines.text_bottom(encoder, runtime, cache_root))

    def compute(indices: list[int]) -> Batch:
        batch = dict(encoder.tokenize([texts[i] for i in indices], max_length))
        hidden, mask = bottom()(batch), batch["attention_mask"].bool()
        pad = max_length - hidden.shape[1]
        hidden = torch.nn.functional.pad(hidden.float(), (0, 0, 0, pad)).to(torch.bfloat16)
        return {"hidden": hidden, "mask": torch.nn.functional.pad(mask, (0, pad))}

    features = cache.get([text_key(t) for t in texts], compute, batch_size, desc, progress)
    log.info("%s: %d cached, %d computed", desc, cache.stats["hits"], cache.stats["computed"])
    return features


def image_bottom_features(encoder, uris: list[str | None], cache_root: str, runtime: Runtime,
                          batch_size: int = 16, progress: bool = True) -> Batch:
    """{"features": (N, ...) bf16, "present": (N,) bool}; products without photo get zeros.
    Missing photos are encoded on the runtime's engine and device (fusion_model.engines)."""
    with_photo = [i for i, u in enumerate(uris) if u is not None]
    tags = storage.content_tags([uris[i] for i in with_photo])
    keys = [tags[uris[i]] for i in with_photo]
    cached = _cached_bottoms(encoder, [uris[i] for i in with_photo], keys, cache_root,
                             runtime, batch_size, progress) if with_photo else None
    shape = cached.shape[1:] if cached is not None else _empty_shape(encoder)
    features = torch.zeros((len(uris), *shape), dtype=torch.bfloat16)
    present = torch.zeros(len(uris), dtype=torch.bool)
    if with_photo:
        features[with_photo] = cached
        present[with_photo] = True
    return {"features": features, "present": present}


def _cached_bottoms(encoder, uris: list[str], keys: list[str], cache_root: str,
                    runtime: Runtime, batch_size: int, progress: bool) -> torch.Tensor:
    """Bottom features of photos; colour histograms (when the encoder adds them) are cached
    apart from the CNN maps, so switching them on does not re-run the CNN. A photo is
    decoded once: histograms of photos the CNN pass decodes are kept for the colour pass."""
    colour = getattr(encoder, "colour_tokens", False)
    fingerprint = encoder.fingerprint(colour=False) if colour else encoder.fingerprint()
    cache = FeatureCache(cache_root, "image", f"{fingerprint}-d{DECODER_REVISION}")
    bottom = functools.cache(lambda: engines.image_bottom(encoder, runtime, cache_root))
    histograms_seen: dict[str, torch.Tensor] = {}
    channels_last = runtime.engine == "torch"  # a converted graph takes NCHW

    def prepare(indices: list[int], workers: int = 1) -> tuple[list[int], torch.Tensor]:
        return indices, encoder.preprocess(load_images([uris[i] for i in indices],
                                                       encoder.image_size, workers),
                                           channels_last)

    def compute(prepared: tuple[list[int], torch.Tensor]) -> Batch:
        indices, pixels = prepared
        features = bottom()({"pixels": pixels})
        if colour:
            histograms = encoder.colour_bottom(pixels, tuple(features.shape[-2:]))
            histograms_seen.update(zip([keys[i] for i in indices], histograms))
        return {"features": features.to(torch.bfloat16).contiguous()}

    if channels_last:  # torch: decoding beside its threads stalls them; decode first
        features = cache.get(keys, lambda indices: compute(prepare(indices, workers=8)),
                             batch_size, "image features", progress)["features"]
    else:  # OpenVINO: the next photos decode in one thread while it runs (RESULTS.md)
        features = cache.get(keys, compute, batch_size, "image features", progress,
                             prepare)["features"]
    log.info("image features: %d cached, %d computed", cache.stats["hits"],
             cache.stats["computed"])
    if not colour:
        return features
    grid = tuple(features.shape[-2:])
    colours = FeatureCache(cache_root, "colour",
                           f"{encoder.fingerprint(colour=True)}-d{DECODER_REVISION}")

    def compute_colour(indices: list[int]) -> Batch:
        if all(keys[i] in histograms_seen for i in indices):
            return {"colour": torch.stack([histograms_seen[keys[i]] for i in indices])}
        arrays = load_images([uris[i] for i in indices], encoder.image_size)
        return {"colour": encoder.colour_bottom(encoder.preprocess(arrays), grid)}

    histograms = colours.get(keys, compute_colour, 64, "colour histograms", progress)["colour"]
    return torch.cat([features, histograms.to(torch.bfloat16)], dim=1)


def _empty_shape(encoder) -> tuple[int, ...]:
    probe = np.zeros((encoder.image_size, encoder.image_size, 3), dtype=np.uint8)
    with torch.no_grad():
        return tuple(encoder.bottom(encoder.preprocess([probe])).shape[1:])


def image_batch(features: torch.Tensor, index) -> torch.Tensor:
    """Cached image features for ``index`` as float; CNN maps in channels_last layout."""
    batch = features[index].float()
    if batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch
