"""Inference engines: OpenVINO agrees with the PyTorch reference, converts once per weights,
and retrieves the same products."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fusion_model import engines
from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.data.retrieval import data_for
from fusion_model.engines import (
    FrozenTowers,
    export_towers,
    resolve_engine,
    resolve_runtime,
    towers_for,
)
from fusion_model.errors import FusionModelError
from fusion_model.evaluation.evaluator import Evaluator
from fusion_model.features import image_bottom_features, text_bottom_features
from fusion_model.inference import embed_catalog
from fusion_model.models.image import EfficientNetEncoder
from fusion_model.models.towers import TwoTower, load_model
from fusion_model.runtime import Runtime
from fusion_model.training.trainer import train

pytest.importorskip("openvino")

QUERIES = ["red cotton shirt for men", "blue jeans", "shirt",
           "a long query about floral printed summer dresses for women in size m"]
TEXTS = ["red shirt", "blue denim jeans with a long description of the wash and the fit",
         "floral dress", "shoes without a photo"]


def photos(size: int, count: int = 3) -> list[np.ndarray | None]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)] \
        + [None]


def tiny_model(tmp_path, *overrides: str) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                         *overrides])).eval()


def frozen_towers(model, engine: str) -> FrozenTowers:
    """The model's towers on ``engine``, its config's runtime otherwise."""
    return FrozenTowers(model, resolve_runtime(model.config, engine))


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(1), b.flatten(1)).min())


def test_engine_resolution_and_named_errors(monkeypatch):
    assert resolve_engine("auto") == "openvino"
    assert resolve_engine("torch") == "torch"
    with pytest.raises(FusionModelError, match="runtime.engine='onnx'"):
        resolve_engine("onnx")
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert resolve_engine("auto") == "torch"
    with pytest.raises(FusionModelError, match="openvino package is not installed"):
        resolve_engine("openvino")


@pytest.mark.parametrize("precision,floor", [("fp32", 0.999), ("bf16", 0.99)])
def test_towers_agree_with_pytorch(tmp_path, precision, floor):
    model = tiny_model(tmp_path, f"train.precision={precision}")
    reference, converted = frozen_towers(model, "torch"), frozen_towers(model, "openvino")
    assert min_cosine(converted.embed_queries(QUERIES),
                      reference.embed_queries(QUERIES)) >= floor
    single = QUERIES[:1]  # a batch of one traces differently in attention
    assert min_cosine(converted.embed_queries(single),
                      reference.embed_queries(single)) >= floor
    images = photos(model.image.image_size)
    assert min_cosine(converted.embed_products(TEXTS, images),
                      reference.embed_products(TEXTS, images)) >= floor
    assert min_cosine(converted.embed_products(TEXTS[:1], images[:1]),
                      reference.embed_products(TEXTS[:1], images[:1])) >= floor
    # several chunks, sorted by text length and cut to each chunk's longest text
    texts = [f"{text}{' and more' * (i % 7)}" for i, text in enumerate(TEXTS * 10)]
    assert min_cosine(converted.embed_products(texts, images * 10),
                      reference.embed_products(texts, images * 10)) >= floor


def test_a_model_with_a_late_branch_converts_whole(tmp_path):
    """The converted towers carry the late-fusion branch (model.late_mix): its mix of
    vectors, twice and a half as wide, agrees with PyTorch's."""
    from fusion_model.models.towers import LateBranch

    model = tiny_model(tmp_path, "train.precision=fp32")
    late = tiny_model(tmp_path, "train.precision=fp32", "model.fusion=late_fusion")
    model.attach_late_branch(LateBranch.of(late), 0.4)
    reference, converted = frozen_towers(model, "torch"), frozen_towers(model, "openvino")
    assert converted.embedding_dim == model.embedding_dim == 16 + 32
    queries = converted.embed_queries(QUERIES)
    assert queries.shape[1] == 48
    assert min_cosine(queries, reference.embed_queries(QUERIES)) >= 0.999
    images = photos(model.image.image_size)
    assert min_cosine(converted.embed_products(TEXTS, images),
                      reference.embed_products(TEXTS, images)) >= 0.999


def test_a_query_tower_compiled_for_two_streams_is_safe_from_two_threads(tmp_path):
    """The search service encodes two batches at once: each thread gets its own infer
    request, and every answer equals the PyTorch reference for its own queries."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_model(tmp_path, "train.precision=fp32")
    reference = frozen_towers(model, "torch")
    served = frozen_towers(model, "openvino")
    served.encode_queries_concurrently(2)
    assert served.query_tower().compiled.get_property("NUM_STREAMS") == 2
    batches = [QUERIES[i % 4:] + QUERIES[:i % 4] for i in range(40)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(served.embed_queries, batches))
    for batch, answer in zip(batches, answers):
        assert min_cosine(answer, reference.embed_queries(batch)) >= 0.999


def test_concurrent_first_calls_compile_a_tower_once(tmp_path, monkeypatch):
    """The service's batch threads may all reach a new champion's encoder at once: one
    compiles, the others wait for it and get the same compiled tower."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    compiled = []
    original = FrozenTowers._frozen

    def slow_frozen(self, *args, **kwargs):
        compiled.append(args[2])
        time.sleep(0.2)  # a compilation takes long enough for the others to arrive
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FrozenTowers, "_frozen", slow_frozen)
    towers = frozen_towers(tiny_model(tmp_path), "openvino")
    start = threading.Barrier(4)

    def first_call(_):
        start.wait()
        return towers.query_tower()

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(first_call, range(4)))
    assert compiled == ["query-tower"] and all(tower is got[0] for tower in got)


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_product_batches_come_back_in_order_and_agree(tmp_path, engine):
    """The pipelined path (catalog embedding) gives each batch the vectors the one-call
    path gives it, in order, empty and one-product batches included."""
    model = tiny_model(tmp_path, "train.precision=fp32")
    images = photos(model.image.image_size)
    batches = [(TEXTS, images), ([], []), (TEXTS[:1], images[:1]), (TEXTS[::-1], images[::-1]),
               (TEXTS[1:], images[1:])]
    reference = frozen_towers(model, "torch")
    got = list(frozen_towers(model, engine).embed_product_batches(iter(batches)))
    assert [len(vectors) for vectors in got] == [len(texts) for texts, _ in batches]
    for (texts, batch_images), vectors in zip(batches, got):
        if texts:
            assert min_cosine(vectors, reference.embed_products(texts, batch_images)) >= 0.999


def test_an_error_while_preparing_a_batch_reaches_the_caller(tmp_path):
    model = tiny_model(tmp_path, "train.precision=fp32")
    images = photos(model.image.image_size)

    def batches():
        yield TEXTS, images
        raise ValueError("photo 7 is unreadable")

    embedded = frozen_towers(model, "openvino").embed_product_batches(batches())
    with pytest.raises(ValueError, match="photo 7"):
        list(embedded)


def test_packaged_encoders_agree_with_pytorch(tmp_path):
    """The default product tower (MiniLM + EfficientNet-Lite0 with colour tokens)."""
    torch.manual_seed(0)
    model = TwoTower(load_config("default", [f"train.cache_dir={tmp_path}",
                                             "train.precision=fp32"])).eval()
    images = photos(224)
    reference = frozen_towers(model, "torch").embed_products(TEXTS, images)
    assert min_cosine(frozen_towers(model, "openvino").embed_products(TEXTS, images),
                      reference) >= 0.999


def test_a_conversion_is_cached_by_weights(tmp_path, monkeypatch):
    model = tiny_model(tmp_path)
    first = frozen_towers(model, "openvino").embed_queries(QUERIES)
    calls = []
    convert = engines.convert_graph
    monkeypatch.setattr(engines, "convert_graph",
                        lambda *args: calls.append(args[2]) or convert(*args))
    again = frozen_towers(tiny_model(tmp_path), "openvino").embed_queries(QUERIES)
    assert not calls and torch.allclose(first, again)
    changed = tiny_model(tmp_path)
    with torch.no_grad():
        changed.query_head.proj.weight.mul_(2)
    frozen_towers(changed, "openvino").embed_queries(QUERIES)
    assert len(calls) == 1 and calls[0].startswith("query-tower-")


def test_exported_towers_load_without_converting(tmp_path, monkeypatch):
    model = tiny_model(tmp_path, "runtime.engine=openvino")
    carried = export_towers(model, tmp_path / "export")
    assert set(carried) == {"query-tower", "product-tower"}
    expected = frozen_towers(model, "torch").embed_queries(QUERIES)
    monkeypatch.setattr(engines, "engine_cache_root", lambda _: tmp_path / "empty")
    monkeypatch.setattr(engines, "convert_graph", pytest.fail)
    towers = towers_for(tiny_model(tmp_path), "openvino", carried=carried["query-tower"])
    assert min_cosine(towers.embed_queries(QUERIES), expected) >= 0.999
    assert export_towers(tiny_model(tmp_path, "runtime.engine=torch"), tmp_path / "t") == {}


def test_feature_cache_fill_agrees_across_engines(tmp_path):
    encoder = EfficientNetEncoder(colour_tokens=True)
    uris = []
    for i, image in enumerate(photos(64)[:3]):
        from PIL import Image

        path = tmp_path / f"p{i}.png"
        Image.fromarray(image).save(path)
        uris.append(str(path))
    by_engine = {engine: image_bottom_features(encoder, [*uris, None],
                                               str(tmp_path / engine), Runtime(engine, "fp32"))
                 for engine in ("torch", "openvino")}
    torch_features, ov_features = by_engine["torch"], by_engine["openvino"]
    assert torch.equal(torch_features["present"][:], ov_features["present"][:])
    assert min_cosine(ov_features["features"][:3].float(),
                      torch_features["features"][:3].float()) >= 0.999
    model = tiny_model(tmp_path)
    text = {engine: text_bottom_features(model.text, TEXTS, 16, str(tmp_path / engine),
                                         Runtime(engine, "fp32"), progress=False)
            for engine in ("torch", "openvino")}
    assert torch.equal(text["torch"]["mask"][:], text["openvino"]["mask"][:])
    real = text["torch"]["mask"][:]
    assert min_cosine(text["openvino"]["hidden"][:][real].float(),
                      text["torch"]["hidden"][:][real].float()) >= 0.999


def test_the_feature_cache_prepares_batches_ahead_in_order(tmp_path):
    """``prepare`` runs ahead in a background thread across shards; ``compute`` gets each
    batch's prepared inputs in order; an error while preparing reaches the caller and
    stores nothing for the failed shard."""
    from fusion_model.features import FeatureCache

    keys = [f"k{i}" for i in range(2100)]  # two shards (2,048 keys each at most)
    seen = []

    def prepare(indices):
        return [i * 10 for i in indices]

    def compute(prepared):
        seen.append(prepared)
        return {"value": torch.tensor(prepared, dtype=torch.float32)}

    got = FeatureCache(tmp_path, "demo", "v1").get(keys, compute, 100, "demo", False, prepare)
    assert torch.equal(got["value"][:], torch.arange(2100, dtype=torch.float32) * 10)
    assert [batch[0] for batch in seen] == [i * 10 for i in [*range(0, 2048, 100),
                                                              *range(2048, 2100, 100)]]

    def failing(indices):
        if 150 in indices:
            raise ValueError("photo 150 is unreadable")
        return indices

    broken = FeatureCache(tmp_path, "demo", "v2")
    with pytest.raises(ValueError, match="photo 150"):
        broken.get(keys, compute, 100, "demo", False, failing)
    assert not list(broken.dir.glob("shard-*"))


def test_top10_retrieval_overlaps_on_the_synthetic_catalog(synthetic_catalog, tmp_path):
    catalog = load_catalog(str(synthetic_catalog))
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}"])
    model = load_model(train(catalog, config, tmp_path / "run", progress=False).model_dir)
    config = model.config.for_catalog(catalog.max_grade)
    evaluator = Evaluator.for_split(catalog, config, data_for(catalog, config), "test")
    top = {}
    for engine in ("torch", "openvino"):
        products = embed_catalog(model, catalog, progress=False, engine=engine)
        queries = towers_for(model, engine).embed_queries(evaluator.query_texts)
        top[engine] = (queries @ products.T).topk(10, dim=1).indices.tolist()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top["torch"],
                                                                 top["openvino"])])
    assert overlap >= 0.98


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_products_sharing_a_text_encode_it_once_and_get_their_own_vectors(tmp_path, engine):
    """Colour variants share a title: the product tower runs each distinct text of a call
    once, and every product still gets the vector it gets alone."""
    model = tiny_model(tmp_path, "train.precision=fp32")
    images = photos(model.image.image_size, 5)[:5]
    texts = ["red shirt", "blue jeans", "red shirt", "red shirt", "blue jeans"]
    towers = frozen_towers(model, engine)
    together = towers.embed_products(texts, images)
    alone = torch.cat([model.embed_products([text], [image])
                       for text, image in zip(texts, images)])
    assert min_cosine(together, alone) >= 0.999
    assert min_cosine(together[[0]], together[[2]]) < 0.999  # same text, other photo
    (positions, inputs), = towers._product_chunks(texts, images)
    assert inputs["input_ids"].shape[0] == 2
    assert [texts[i] for i in positions.tolist()] == sorted(texts, key=lambda t: (-len(t), t))


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_catalog_vectors_come_back_in_catalog_order(synthetic_catalog, tmp_path, engine):
    """embed_catalog batches products in the order of their texts (shared texts together)
    and must hand the vectors back in catalog order."""
    import dataclasses

    from fusion_model.features import load_images, product_text

    catalog = load_catalog(str(synthetic_catalog))
    products = catalog.products.head(40).copy()
    products["title"] = [products["title"].iloc[i % 12] for i in range(40)]  # variants
    products["description"] = ""
    catalog = dataclasses.replace(catalog, products=products)
    model = tiny_model(tmp_path, "train.precision=fp32")
    texts = [product_text(t, d) for t, d in zip(products["title"], products["description"])]
    assert texts != sorted(texts) and len(set(texts)) < len(texts)
    images = load_images(products["image_uri"].tolist(), model.image.image_size)
    reference = model.embed_products(texts, images)
    got = embed_catalog(model, catalog, batch_size=8, progress=False, engine=engine)
    assert min_cosine(got, reference) >= 0.999


def test_converting_a_tower_prints_nothing_of_the_libraries(tmp_path, caplog):
    """Conversion reads every attribute of the Hugging Face modules; their deprecation
    warnings and loss-type notice are noise in a user's log."""
    import logging
    import warnings

    model = tiny_model(tmp_path)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        frozen_towers(model, "openvino").product_tower()
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    assert not [r for r in caplog.records if r.name.startswith("transformers")]
    assert any("converted product-tower" in r.getMessage() for r in caplog.records)



def test_the_runtime_is_resolved_once_with_every_choice_made(monkeypatch):
    from fusion_model.config import load_config
    from fusion_model.runtime import native_bf16

    runtime = resolve_runtime(load_config("default"))
    assert runtime == Runtime("openvino", "bf16" if native_bf16() else "fp32", "cpu", "gloo")
    assert resolve_runtime(load_config("default", ["runtime.device=auto"])).device == "cpu"
    assert resolve_runtime(load_config("default"), "torch").engine == "torch"
    with pytest.raises(FusionModelError, match="no such CUDA device"):
        resolve_runtime(load_config("default", ["runtime.device=cuda"]))
    # a CUDA host: auto picks the GPU, PyTorch runs there (OpenVINO is the CPU engine) and
    # processes join NCCL; the CPU stays gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: True)
    gpu = resolve_runtime(load_config("default", ["runtime.device=auto"]))
    assert gpu == Runtime("torch", "bf16", "cuda", "nccl")
    assert resolve_runtime(load_config("default", ["runtime.device=cuda:1"])).device == "cuda:1"
    with pytest.raises(FusionModelError, match="runs on cpu, not cuda"):
        resolve_runtime(load_config("default", ["runtime.device=cuda",
                                                "runtime.engine=openvino"]))
    assert resolve_runtime(load_config("default", ["runtime.device=cpu"])).distributed == "gloo"
    # under torchrun each process takes its own GPU (LOCAL_RANK); named devices stay
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_runtime(load_config("default", ["runtime.device=cuda"])).device == "cuda:1"
    assert resolve_runtime(load_config("default", ["runtime.device=cuda:0"])).device == "cuda:0"
    assert resolve_runtime(load_config("default", ["runtime.device=cpu"])).device == "cpu"


def test_batches_reach_the_runtime_device_as_they_are_on_the_cpu():
    batch = torch.arange(6).reshape(2, 3)
    moved = Runtime(device="cpu").put(batch)
    assert moved.device.type == "cpu" and torch.equal(moved, batch)


def test_engines_register_themselves_by_name():
    assert set(engines.ENGINES) == {"torch", "openvino"}
    with pytest.raises(ValueError, match="registered twice"):
        type("Again", (engines.Engine,), {}, name="torch")


def test_embed_catalog_honours_the_engine_on_the_cached_path(tmp_path, synthetic_catalog,
                                                             monkeypatch):
    """The engine argument used to be ignored when features came from the cache."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.inference import embed_catalog

    model = tiny_model(tmp_path)  # runtime.engine torch
    catalog = load_catalog(str(synthetic_catalog))
    used = []

    def openvino_asked(*args, **kwargs):
        used.append(args[2])  # the graph key
        raise RuntimeError("stop")

    monkeypatch.setattr(engines, "openvino_frozen", openvino_asked)
    with pytest.raises(RuntimeError, match="stop"):
        embed_catalog(model, catalog, str(tmp_path / "cache"), progress=False,
                      engine="openvino")
    assert used and used[0].startswith("text-bottom")  # the asked-for engine was used


def test_a_model_trained_on_a_gpu_loads_and_runs_on_a_host_without_one(tmp_path):
    from fusion_model.models.towers import load_model

    trained = tiny_model(tmp_path, "runtime.device=cuda:3")
    trained.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config.runtime.device == "auto"
    assert resolve_runtime(loaded.config).device == "cpu"
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name


def test_photos_decode_the_same_in_worker_processes_as_in_threads(tmp_path):
    """A GPU runtime decodes in processes (threads on the CPU); the pixels are the same and
    a broken photo is still named."""
    from PIL import Image

    from fusion_model.features import load_images
    from fusion_model.photos import ImageDecodeError

    uris = []
    for i in range(5):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (40 + i, 30), (40 * i, 100, 200)).save(path)
        uris.append(str(path))
    threads = load_images([*uris, None], 32, workers=2)
    processes = load_images([*uris, None], 32, processes=2)
    assert processes[-1] is None and all(np.array_equal(a, b) for a, b in
                                         zip(threads[:-1], processes[:-1]))
    (tmp_path / "broken.png").write_bytes(b"not a photo")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        load_images([str(tmp_path / "broken.png")], 32, processes=2)
    assert Runtime(device="cpu").decode_processes == 0
    assert Runtime(device="cuda").decode_processes >= 1


def test_compile_is_a_cuda_option_that_the_cpu_ignores(monkeypatch):
    from fusion_model.config import load_config
    from fusion_model.engines import torch_frozen

    runtime = resolve_runtime(load_config("tiny", ["runtime.compile=true"]), "torch")
    assert runtime.compile and runtime.device == "cpu"
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled on the CPU"))
    run = torch_frozen(torch.nn.Linear(3, 2), runtime)
    assert run({"input": torch.ones(4, 3)}).shape == (4, 2)
