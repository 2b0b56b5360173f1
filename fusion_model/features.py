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
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch

from fusion_model import engines, storage
from fusion_model.data.retrieval import product_text
from fusion_model.feature_store import Column, ConcatColumn, FeatureCache, Table, TensorColumn
from fusion_model.photos import DECODER_REVISION, ImageDecodeError, decode_image
from fusion_model.runtime import Runtime

log = logging.getLogger(__name__)
MIRRORED = ":mirrored"  # cache-key suffix of a photo's left-right mirror image
HISTOGRAMS_KEPT = 8192   # colour histograms kept from the CNN pass (bounded memory)
__all__ = ["Column", "FeatureCache", "ImageDecodeError", "Table", "decode_image",
           "load_images", "product_text"]

Batch = dict[str, torch.Tensor]


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


def load_images(uris: list[str | None], size: int, workers: int = 8,
                processes: int = 0) -> list[np.ndarray | None]:
    """Decode images in ``workers`` parallel threads, or with ``processes`` in that many
    worker processes (what keeps a GPU fed: decoding in threads shares one interpreter with
    the loop that drives the device); ``None`` for products without a photo."""
    jobs = [(uri, size) for uri in uris]
    if processes:
        chunk = max(1, len(jobs) // (4 * processes))
        return list(decode_processes(processes).map(_load_one, jobs, chunksize=chunk))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_load_one, jobs))


def _load_one(job: tuple[str | None, int]) -> np.ndarray | None:
    uri, size = job
    return None if uri is None else decode_image(storage.read_bytes(uri), size, uri=uri)


@functools.cache
def decode_processes(count: int) -> ProcessPoolExecutor:
    """A pool of ``count`` decoding processes, started once per process (forkserver: the
    children never inherit a CUDA context)."""
    return ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("forkserver"))


def text_bottom_features(encoder, texts: list[str], max_length: int, cache_root: str,
                         runtime: Runtime, batch_size: int = 128,
                         desc: str = "text features", progress: bool = True) -> Table:
    """Columns {"hidden": (N, max_length, D) bf16, "mask": (N, max_length) bool} read from
    the cache; missing items are encoded on the runtime's engine and device
    (fusion_model.engines)."""
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
                          batch_size: int = 16, progress: bool = True,
                          mirrored: bool = False) -> Table:
    """Columns {"features": (N, ...) bf16, "present": (N,) bool} read from the cache;
    products without photo read as zeros. Missing photos are encoded on the runtime's
    engine and device (fusion_model.engines). ``mirrored``: of the photos flipped
    left-right (a training augmentation; cached apart from the photos as they are)."""
    keys = storage.content_tag_list(uris)  # None where no photo
    if mirrored:
        keys = [None if k is None else f"{k}{MIRRORED}" for k in keys]
    features = _cached_bottoms(encoder, uris, keys, cache_root, runtime, batch_size, progress,
                               mirrored)
    present = torch.tensor([u is not None for u in uris], dtype=torch.bool)
    return {"features": features, "present": TensorColumn(present)}


def _cached_bottoms(encoder, uris: list[str | None], keys: list[str | None], cache_root: str,
                    runtime: Runtime, batch_size: int, progress: bool,
                    mirrored: bool = False) -> Column:
    """Bottom features of photos (zeros where the key is None); colour histograms (when
    the encoder adds them) are cached apart from the CNN maps, so switching them on does
    not re-run the CNN. Histograms of up to ``HISTOGRAMS_KEPT`` photos the CNN pass decodes
    are kept for the colour pass; the colour pass decodes the others again."""
    colour = getattr(encoder, "colour_tokens", False)
    fingerprint = encoder.fingerprint(colour=False) if colour else encoder.fingerprint()
    cache = FeatureCache(cache_root, "image", f"{fingerprint}-d{DECODER_REVISION}")
    bottom = functools.cache(lambda: engines.image_bottom(encoder, runtime, cache_root))
    histograms_seen: dict[str, torch.Tensor] = {}
    channels_last = runtime.engine == "torch"  # a converted graph takes NCHW

    def decode(indices: list[int], workers: int = 8, processes: int = 0) -> list:
        arrays = load_images([uris[i] for i in indices], encoder.image_size, workers, processes)
        if not mirrored:
            return arrays
        return [None if a is None else np.ascontiguousarray(a[:, ::-1]) for a in arrays]

    def prepare(indices: list[int], workers: int = 1) -> tuple[list[int], torch.Tensor]:
        return indices, encoder.preprocess(decode(indices, workers, runtime.decode_processes),
                                           channels_last)

    def compute(prepared: tuple[list[int], torch.Tensor]) -> Batch:
        indices, pixels = prepared
        features = bottom()({"pixels": pixels})
        if colour and len(histograms_seen) < HISTOGRAMS_KEPT:
            histograms = encoder.colour_bottom(pixels, tuple(features.shape[-2:]))
            histograms_seen.update(zip([keys[i] for i in indices], histograms))
        return {"features": features.to(torch.bfloat16).contiguous()}

    if all(k is None for k in keys):  # no photo at all: zeros of the full shape
        return cache.columns([], np.full(len(keys), -1), np.zeros(len(keys), np.int64),
                             {"features": (_empty_shape(encoder), torch.bfloat16)})["features"]
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
        return {"colour": encoder.colour_bottom(encoder.preprocess(decode(indices)), grid)}

    histograms = colours.get(keys, compute_colour, 64, "colour histograms", progress)["colour"]
    histograms_seen.clear()
    return ConcatColumn([features, histograms])


def _empty_shape(encoder) -> tuple[int, ...]:
    probe = np.zeros((encoder.image_size, encoder.image_size, 3), dtype=np.uint8)
    with torch.no_grad():
        return tuple(encoder.bottom(encoder.preprocess([probe])).shape[1:])


def image_batch(features: Column | torch.Tensor, index) -> torch.Tensor:
    """Cached image features for ``index`` as float; CNN maps in channels_last layout."""
    batch = features[index].float()
    if batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch
