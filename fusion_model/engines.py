"""Inference engines for everything that runs frozen: the encoder bottoms that fill the
feature cache, and a trained model's query and product towers.

``torch`` runs the modules as they are (the reference). ``openvino`` converts each one
once with ``ov.convert_model`` (dynamic batch and sequence length), keeps the IR on disk
keyed by the weights' fingerprint, and compiles it for the CPU (bf16 inference precision
where the CPU computes bf16 natively, f32 elsewhere: ``train.precision`` decides, as for
torch autocast). ``auto`` picks OpenVINO when it is installed and the device is the CPU,
PyTorch on CUDA. Engines register themselves by name (``Engine`` subclasses), as product
heads and index backends do; ``resolve_runtime`` resolves a config's engine, precision,
device and distributed backend once into the ``Runtime`` that every caller passes down.

A registered model directory can carry its towers' IR (``export_towers``), so serving
loads them instead of converting on every start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion_model.config import ConfigError
from fusion_model.errors import BadInputError
from fusion_model.models.text import distinct_rows
from fusion_model.named import Named
from fusion_model.runtime import (
    Runtime,
    prefetched,
    process_device,
    resolve_device,
    resolve_precision,
    weights_fingerprint,
)

log = logging.getLogger(__name__)

ENGINE_DIR = "engines"                  # under the model directory and the cache root
IR_FILE = "model.xml"
PRODUCT_CHUNK = 16                      # products per call of the product tower

Inputs = dict[str, torch.Tensor]
Frozen = Callable[[Inputs], torch.Tensor]


ENGINES: dict[str, type[Engine]] = {}


class Engine(Named):
    """An inference engine for frozen graphs; subclasses register under their name."""

    registry = ENGINES
    kind = "engine"
    devices: tuple[str, ...] = ("cpu",)  # device types it runs on

    @staticmethod
    def available() -> bool:
        return True


class TorchEngine(Engine, name="torch"):
    """The modules as they are, under the run's autocast: the reference, on any device."""

    devices = ("cpu", "cuda")


class OpenVinoEngine(Engine, name="openvino"):
    """Graphs converted to OpenVINO IR and compiled for the CPU."""

    @staticmethod
    def available() -> bool:
        return openvino_available()


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def check_engine_name(engine: str) -> None:
    """A named error unless ``engine`` is ``auto`` or a registered engine."""
    if engine != "auto" and engine not in ENGINES:
        raise ConfigError(f"runtime.engine={engine!r}: choose one of auto, "
                          f"{', '.join(ENGINES)}")


def resolve_engine(engine: str, device: str = "cpu") -> str:
    """``auto`` -> ``openvino`` when installed and the device is the CPU, else ``torch``; a
    named error for an engine that is missing or does not run on ``device``."""
    check_engine_name(engine)
    device_type = torch.device(device).type
    if engine == "auto":
        return "openvino" if device_type == "cpu" and openvino_available() else "torch"
    chosen = ENGINES[engine]
    if not chosen.available():
        raise BadInputError(f"runtime.engine={engine}: the {engine} package is not "
                            f"installed; install it or use runtime.engine=torch")
    if device_type not in chosen.devices:
        raise BadInputError(f"runtime.engine={engine} runs on {', '.join(chosen.devices)}, "
                            f"not {device}; use runtime.engine=torch (or auto) there")
    return engine


def resolve_runtime(config, engine: str | None = None) -> Runtime:
    """The ``Runtime`` of ``config`` (a RunConfig): every ``auto`` resolved, once; ``engine``
    overrides ``runtime.engine``."""
    device = process_device(resolve_device(config.runtime.device))
    return Runtime(engine=resolve_engine(engine or config.runtime.engine, device),
                   precision=resolve_precision(config.train.precision, device),
                   device=device,
                   distributed="nccl" if torch.device(device).type == "cuda" else "gloo",
                   compile=config.runtime.compile)


def engine_cache_root(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser() / ENGINE_DIR


# graphs: frozen modules with tensor-only inputs -------------------------------------------
class TextBottomGraph(nn.Module):
    """Token ids -> hidden states after the text encoder's frozen layers."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.encoder.bottom_from_ids(input_ids, attention_mask, token_type_ids)


class ImageBottomGraph(nn.Module):
    """Preprocessed pixels -> the image encoder's frozen feature map (CNN part only)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.forward_fn = getattr(encoder, "cnn_bottom", encoder.bottom)

    def forward(self, pixels):
        return self.forward_fn(pixels)


class QueryTowerGraph(nn.Module):
    """Query token ids -> query vectors (B, E)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.model.query_text.bottom_from_ids(input_ids, attention_mask,
                                                       token_type_ids)
        return self.model.queries_from_hidden(hidden, attention_mask.bool())


class ProductTowerGraph(nn.Module):
    """Token ids of the distinct texts (U, T), each product's row among them
    (``text_index``, B) (+ preprocessed pixels and which products have a photo) ->
    product vectors (B, E). Products that share a text (a catalog's colour and size
    variants) run the text encoder once."""

    revision = "text_index"  # part of the converted IR's cache key

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, text_index, token_type_ids=None,
                pixels=None, present=None):
        model = self.model
        mask = attention_mask.bool()
        hidden = model.text.bottom_from_ids(input_ids, attention_mask, token_type_ids)
        tokens = model.text.top(hidden, mask)[text_index]
        features = model.image.bottom(pixels) if model.image is not None else None
        if present is None:
            present = torch.zeros(text_index.shape[0], dtype=torch.bool,
                                  device=text_index.device)
        return model.products_from_features(tokens, mask[text_index], features, present)


# engines -----------------------------------------------------------------------------------
def torch_frozen(graph: nn.Module, runtime: Runtime) -> Frozen:
    """The reference: the module itself on the run's device, without gradients, under the
    run's autocast; inputs move to the device, the output comes back to the CPU."""
    graph.eval().to(runtime.device)
    forward = graph
    if runtime.compile and runtime.device_type == "cuda":  # kernels fused for the GPU
        forward = torch.compile(graph, dynamic=True)

    def run(inputs: Inputs) -> torch.Tensor:
        on_device = {name: runtime.put(tensor) for name, tensor in inputs.items()}
        with torch.no_grad(), runtime.autocast():
            return forward(**on_device).float().cpu()

    return run


@dataclass
class OpenVinoFrozen:
    """A compiled OpenVINO model called with the same named tensors as its graph. Safe to
    call from several threads: each has its own infer request (with ``streams`` > 1 the
    calls run in parallel, one stream each)."""

    compiled: object
    names: tuple[str, ...]
    _requests: threading.local = field(default_factory=threading.local, repr=False)

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return torch.from_numpy(np.asarray(request.infer(self.feed(inputs))[0])).float()

    def feed(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """The named tensors this model takes, as numpy arrays."""
        return {name: _numpy(inputs[name]) for name in self.names if name in inputs}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def openvino_frozen(graph: nn.Module, example: Inputs, key: str, cache_root: Path,
                    runtime: Runtime, carried: Path | None = None,
                    streams: int = 1) -> OpenVinoFrozen:
    """``graph`` through OpenVINO: the IR from ``carried`` (a model directory's engines
    folder) or the cache at ``cache_root/openvino/<key>``, else converted and stored.
    ``streams`` 1: each call uses every core (latency); more: that many calls at once,
    the cores shared out (throughput for concurrent callers); 0: as many as the CPU
    plugin finds best for throughput (pipelines of async requests)."""
    import openvino as ov

    ir = _find_ir(key, [carried, cache_root]) or convert_graph(graph, example, key,
                                                              cache_root)
    core = ov.Core()
    model = core.read_model(ir)
    hint = "bf16" if runtime.precision == "bf16" else "f32"
    performance = {"PERFORMANCE_HINT": "THROUGHPUT"} if streams == 0 else \
        {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else \
        {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(streams)}
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                 **performance})
    names = tuple(name for port in model.inputs for name in port.get_names())
    return OpenVinoFrozen(compiled, names)


def _find_ir(key: str, roots: list[Path | None]) -> Path | None:
    for root in roots:
        if root is not None and (root / "openvino" / key / IR_FILE).is_file():
            return root / "openvino" / key / IR_FILE
    return None


def convert_graph(graph: nn.Module, example: Inputs, key: str, cache_root: Path) -> Path:
    """Convert once and write the IR atomically (a directory renamed into place)."""
    import openvino as ov

    target = cache_root / "openvino" / key
    started = time.perf_counter()
    graph.eval()
    with torch.no_grad(), warnings.catch_warnings(), _library_warnings_silenced():
        # tracing warns about shape-dependent Python branches; the agreement tests cover
        # batches of one and of many (tests/unit/test_engines.py)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(graph, example_input=example)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    ov.save_model(converted, staging / IR_FILE, compress_to_fp16=False)
    try:
        os.rename(staging, target)
    except OSError:  # another process stored the same key first
        shutil.rmtree(staging, ignore_errors=True)
    log.info("openvino: converted %s in %.1f s", key, time.perf_counter() - started)
    return target / IR_FILE


@contextlib.contextmanager
def _library_warnings_silenced() -> Iterator[None]:
    """Conversion reads every attribute of the Hugging Face modules, which makes
    transformers warn about deprecated properties and an unset loss type: noise for
    people, about nothing the tower uses."""
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            yield
    finally:
        quiet.setLevel(level)


def architecture(config) -> str:
    """The settings a converted tower depends on besides its weights."""
    import hashlib
    import json

    sections = {name: config.to_dict()[name] for name in ("text", "image", "model")}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


def graph_key(kind: str, modules: list[nn.Module], label: str = "") -> str:
    """``kind`` + the weights' fingerprint (+ the openvino version and the graphs'
    ``revision``, so that an IR of an older graph is not taken for the current one)."""
    import openvino

    version = openvino.__version__.split("-")[0]
    revisions = "".join(f"|{module.revision}" for module in modules
                        if getattr(module, "revision", ""))
    return f"{kind}-{weights_fingerprint(f'{kind}|{label}|ov{version}{revisions}', modules)}"


def frozen(graph: nn.Module, example: Inputs, kind: str, runtime: Runtime,
           cache_dir: str, label: str = "", carried: Path | None = None,
           streams: int = 1) -> Frozen:
    """``graph`` on the runtime's engine, ready to call with named tensors (``streams``:
    see ``openvino_frozen``; PyTorch takes concurrent calls as they come)."""
    if runtime.engine == "torch":
        return torch_frozen(graph, runtime)
    key = graph_key(kind, [graph], label)
    return openvino_frozen(graph, example, key, engine_cache_root(cache_dir), runtime,
                           carried, streams)


# encoder bottoms (feature cache fill) ------------------------------------------------------
def text_bottom(encoder: nn.Module, runtime: Runtime, cache_dir: str) -> Frozen:
    example = dict(encoder.tokenize(["a red shirt", "blue"], 8))
    return frozen(TextBottomGraph(encoder), example, "text-bottom", runtime, cache_dir,
                  label=encoder.fingerprint())


def image_bottom(encoder: nn.Module, runtime: Runtime, cache_dir: str) -> Frozen:
    size = encoder.image_size
    example = {"pixels": torch.zeros(2, 3, size, size)}
    label = encoder.fingerprint(colour=False) if hasattr(encoder, "cnn_bottom") \
        else encoder.fingerprint()
    return frozen(ImageBottomGraph(encoder), example, "image-bottom", runtime, cache_dir,
                  label=label)


# trained towers (indexing, pyfunc models, search) ------------------------------------------
class FrozenTowers:
    """A trained model's query and product towers on one engine, for inference only.

    ``embed_queries`` and ``embed_products`` take what ``TwoTower``'s methods of the same
    names take and return the same vectors (within the engine's precision).
    """

    def __init__(self, model: nn.Module, runtime: Runtime, carried: Path | None = None):
        self.model = model.eval()
        self.runtime = runtime
        self.carried = carried
        self.query_streams = 1
        self._query: Frozen | None = None
        self._product: Frozen | None = None
        self._product_pipeline: OpenVinoFrozen | None = None
        self._compiling = threading.Lock()  # concurrent first calls compile once

    @property
    def engine(self) -> str:
        return self.runtime.engine

    @property
    def config(self):
        return self.model.config

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def image_size(self) -> int:
        return self.model.image.image_size if self.model.image is not None else 0

    def query_tower(self) -> Frozen:
        with self._compiling:
            if self._query is None:
                self._query = self._frozen(QueryTowerGraph(self.model),
                                           self._query_example(), "query-tower",
                                           self.query_streams)
            return self._query

    def encode_queries_concurrently(self, streams: int) -> None:
        """Compile the query tower for ``streams`` concurrent callers (``fusion-model
        serve --encoder-streams``). On 2 cores the encoder alone ran 1.4x the queries/s
        with 2 streams and 2 callers in batches of 8; inside the service, sharing the
        cores with Milvus, it measured within noise of 1 stream at 32 closed-loop clients
        and with 19-29% less CPU per search at 100-200 requests/s (benchmarks/RESULTS.md)."""
        if streams != self.query_streams:
            self.query_streams, self._query = streams, None

    def product_tower(self) -> Frozen:
        with self._compiling:
            if self._product is None:
                self._product = self._frozen(ProductTowerGraph(self.model),
                                             self._product_example(),
                                             "product-tower")
            return self._product

    def product_pipeline(self) -> OpenVinoFrozen:
        """The product tower compiled for throughput (several streams, the CPU plugin's
        choice: 2 on 2 cores), for ``embed_product_batches`` on OpenVINO."""
        with self._compiling:
            if self._product_pipeline is None:
                self._product_pipeline = self._frozen(
                    ProductTowerGraph(self.model), self._product_example(),
                    "product-tower", streams=0)
            return self._product_pipeline

    def _frozen(self, graph: nn.Module, example: Inputs, kind: str,
                streams: int = 1) -> Frozen:
        config = self.model.config
        return frozen(graph, example, kind, self.runtime, config.train.cache_dir,
                      label=architecture(config), carried=self.carried, streams=streams)

    def _query_example(self) -> Inputs:
        return dict(self.model.query_text.tokenize(["red shirt", "blue"],
                                                   self.config.text.query_max_length))

    def _product_example(self) -> Inputs:
        """Three products, two sharing a text, so that tracing sees a real gather."""
        return dict(self.model.text.tokenize(["a red cotton shirt", "blue"])) | \
            {"text_index": torch.tensor([0, 1, 1])} | self._image_inputs([None] * 3)

    def _image_inputs(self, images: list) -> Inputs:
        """``pixels`` (preprocessed, NCHW as the converted graph takes them) and
        ``present``."""
        image = self.model.image
        if image is None:
            return {}
        size = image.image_size
        filled = [img if img is not None else np.zeros((size, size, 3), np.uint8)
                  for img in images]
        return {"pixels": image.preprocess(filled, channels_last=False),
                "present": torch.tensor([img is not None for img in images])}

    @torch.no_grad()
    def embed_queries(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        if self.engine == "torch":
            return self.model.embed_queries(texts, batch_size)
        tower = self.query_tower()
        out = [tower(dict(self.model.query_text.tokenize(
            texts[start:start + batch_size], self.config.text.query_max_length)))
            for start in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    @torch.no_grad()
    def embed_products(self, texts: list[str], images: list[np.ndarray | None]
                       ) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self.embedding_dim)
        if self.engine == "torch":
            return self.model.embed_products(texts, images)
        tower = self.product_tower()
        out = torch.empty(len(texts), self.embedding_dim)
        for positions, inputs in self._product_chunks(texts, images):
            out[positions] = tower(inputs)
        return out

    def _product_chunks(self, texts: list[str], images: list[np.ndarray | None]
                        ) -> list[tuple[torch.Tensor, Inputs]]:
        """The product tower's calls for a batch: (positions in the batch, inputs), in
        chunks of similar text length, each cut to its own longest text (less padding),
        with each distinct text of a chunk once (identical texts are sorted together)."""
        tokens = dict(self.model.text.tokenize(texts))
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], texts[i]))
        right_padded = getattr(self.model.text.tokenizer, "padding_side", "right") == "right"
        full = tokens["attention_mask"].shape[1]
        chunks = []
        for start in range(0, len(order), PRODUCT_CHUNK):
            chunk = order[start:start + PRODUCT_CHUNK]
            rows, text_index = distinct_rows([texts[i] for i in chunk])
            distinct = [chunk[row] for row in rows]
            width = max(lengths[i] for i in distinct) if right_padded else full
            inputs = {name: ids[distinct, :width] for name, ids in tokens.items()}
            inputs["text_index"] = text_index
            chunks.append((torch.tensor(chunk), inputs | self._image_inputs(
                [images[i] for i in chunk])))
        return chunks

    def embed_product_batches(self, batches: Iterable[tuple[list[str], list]]
                              ) -> Iterator[torch.Tensor]:
        """The vectors of each (texts, images) batch of ``batches``, in order. A
        background thread takes the next batches (a lazy iterator decodes its photos
        there) and prepares their inputs while the tower runs. On OpenVINO the tower runs
        as a pipeline of throughput streams that goes on across batches: on 2 cores, end
        to end from files, +13% products/s over one two-thread call at a time, which
        stalls whenever decoding holds one of the cores (benchmarks/RESULTS.md)."""
        if self.engine == "torch":
            yield from (self.embed_products(texts, images)
                        for texts, images in prefetched(iter(batches), lambda b: b))
            return
        tower = self.product_pipeline()

        def prepare(batch: tuple[list[str], list]) -> tuple[int, list]:
            """(count, [(positions, numpy feed)]): what ``_pipelined`` runs."""
            texts, images = batch
            return len(texts), [(positions, tower.feed(inputs)) for positions, inputs
                                in (self._product_chunks(texts, images) if texts else [])]

        yield from _pipelined(tower, prefetched(iter(batches), prepare), self.embedding_dim)


@dataclass
class _Batch:
    out: torch.Tensor
    left: int


def _pipelined(tower: OpenVinoFrozen, prepared: Iterator[tuple[int, list]], dim: int
               ) -> Iterator[torch.Tensor]:
    """Run the chunks of each prepared batch on the tower's streams, one infer request per
    stream, started asynchronously and collected oldest first on this thread; a batch is
    handed out once its chunks are collected, while the next batch's run.

    No ``AsyncInferQueue`` callbacks: Python work on OpenVINO's threads deadlocked when the
    compiled model was freed (its stream threads waited for the GIL the freeing thread
    held), and torch work there made every later torch call in the process 1.7-1.9x
    slower (benchmarks/RESULTS.md)."""
    compiled = tower.compiled
    count = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    idle = deque(compiled.create_infer_request() for _ in range(max(count, 1)))
    running: deque = deque()  # (request, batch, positions), oldest first

    def collect_oldest() -> None:
        request, batch, positions = running.popleft()
        request.wait()
        batch.out[positions] = torch.from_numpy(
            np.array(request.get_output_tensor(0).data, dtype=np.float32))
        batch.left -= 1
        idle.append(request)

    previous: _Batch | None = None
    try:
        for size, chunks in prepared:
            batch = _Batch(torch.empty(size, dim), len(chunks))
            for positions, feed in chunks:
                if not idle:
                    collect_oldest()
                request = idle.popleft()
                request.start_async(feed)
                running.append((request, batch, positions))
            if previous is not None:
                yield _collected(previous, collect_oldest)
            previous = batch
        if previous is not None:
            yield _collected(previous, collect_oldest)
    finally:
        for request, _, _ in running:  # stopped early or failed: let the requests finish
            request.wait()


def _collected(batch: _Batch, collect_oldest: Callable[[], None]) -> torch.Tensor:
    while batch.left > 0:
        collect_oldest()
    return batch.out


def towers_for(model: nn.Module, engine: str | None = None,
               carried: Path | None = None) -> FrozenTowers:
    """The model's frozen towers on its config's runtime (``engine`` overrides
    ``runtime.engine``), kept on the model so that repeated calls convert and compile
    once."""
    runtime = resolve_runtime(model.config, engine)
    cached = model.__dict__.get("_frozen_towers")
    if cached is not None and cached.runtime == runtime:
        return cached
    towers = FrozenTowers(model, runtime, carried)
    model.__dict__["_frozen_towers"] = towers
    return towers


TOWERS = ("query-tower", "product-tower")


def export_towers(model: nn.Module, directory: str | Path) -> dict[str, Path]:
    """Write each tower's OpenVINO IR under ``directory/<tower>`` (what a registered model
    carries, passed back as ``carried``, so that serving compiles without converting);
    empty when the model's engine is not OpenVINO."""
    runtime = resolve_runtime(model.config)
    if runtime.engine != "openvino":
        return {}
    towers = FrozenTowers(model, runtime)
    towers.query_tower()
    towers.product_tower()
    root = engine_cache_root(model.config.train.cache_dir) / "openvino"
    written = {}
    for kind, graph in zip(TOWERS, (QueryTowerGraph(model), ProductTowerGraph(model))):
        key = graph_key(kind, [graph], architecture(model.config))
        target = Path(directory) / kind
        shutil.copytree(root / key, target / "openvino" / key, dirs_exist_ok=True)
        written[kind] = target
    return written
