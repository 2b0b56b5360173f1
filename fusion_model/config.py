"""One frozen, validated config object per run: YAML + dotted ``key=value`` overrides.

``load_config("default", ["train.stage1.epochs=3", "model.fusion=concat"])`` reads the
packaged ``configs/default.yaml`` (``fast`` and ``tiny`` are packaged too; or a YAML file
path), applies the overrides, checks
every key and value, and returns a ``RunConfig``. Unknown keys, wrong types and bad
combinations fail here, before any work, with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fusion_model.errors import BadInputError

CONFIG_DIR = Path(__file__).parent / "configs"
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")  # fusion_model.runtime
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # fusion_model.runtime.resolve_device
TOKEN_ENV = "FUSION_MILVUS_TOKEN"


class ConfigError(BadInputError):
    """A config file or override is invalid."""


@dataclass(frozen=True)
class TextEncoderConfig:
    model: str = "minilm"            # "minilm" (packaged all-MiniLM-L6-v2), a path or hub name
    max_length: int = 48             # product text tokens
    query_max_length: int = 16       # query tokens
    trainable_layers: int = 2        # top transformer layers fine-tuned; lower ones cached


@dataclass(frozen=True)
class ImageEncoderConfig:
    model: str = "efficientnet-lite0"  # packaged EfficientNet-Lite0, or a transformers path
    image_size: int = 224
    trainable_blocks: int = 1          # top blocks fine-tuned in stage 2; lower ones cached
    colour_tokens: bool = False        # EfficientNet: add each region's colour histogram


@dataclass(frozen=True)
class ModelConfig:
    fusion: str = "fusion"           # a product head: fusion_model.models.heads.HEADS
    embed_dim: int = 256
    share_text_encoder: bool = True  # query and product towers share the text encoder
    fusion_heads: int = 4
    dropout: float = 0.1
    modality_dropout: float = 0.05   # chance to hide one modality of a product in training
    gated_fusion: bool = False       # fusion: zero-initialised tanh gates on cross-attention
    guided_pooling: bool = True      # fusion: photo regions pooled by the product's text
    late_mix: bool = False           # fusion: also train a late-fusion branch from the same
                                     # stage 1 and serve the score mix (1 - w) * network +
                                     # w * late fusion, w chosen on val (0: the network
                                     # alone); other heads ignore it
    late_mix_weight: float = 0.0     # the w training chose (written into the saved model's
                                     # config; the model has the branch when it is above 0)


@dataclass(frozen=True)
class StageConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3                 # heads, projections, fusion
    encoder_lr: float = 2e-5         # fine-tuned encoder layers
    new_layer_lr: float = 0.0        # stage 2: layers stage 1 did not train (image projection,
                                     # fusion network, query image half); 0 = ``lr``
    positives_per_query: int = 8     # positive products sampled per train query per epoch
    hard_negatives: int = 0          # mined hard negatives per query (0 = in-batch only)
    judged_negatives: int = 0        # per query in a batch, up to this many of its products
                                     # judged grade 0 (in a feedback snapshot: shown,
                                     # examined and not clicked) join the batch as negatives
    patience: int = 2                # epochs without val improvement before stopping
    schedule: str = "constant"       # learning rate: constant, or cosine decay to 0
    warmup: float = 0.0              # share of the stage's steps with linear warmup
    grad_clip: float = 0.0           # max gradient norm (0 = no clipping)
    weight_decay: float = 0.01
    anchor: float = 0.0              # L2 pull toward the stage's starting weights, divided
                                     # by the number of train queries: a prior that
                                     # weighs less as the data grows (0 = off)
    mix_epochs: int = 0              # stage 2, fusion network: first train only what a
                                     # weighted sum has (projections, the modality mix, image
                                     # blocks) this many epochs, the network's extra parts
                                     # held at their identity start; then ``epochs`` train
                                     # everything from the best of them (gated_fusion only;
                                     # other heads have no such phase and ignore it)
    photo_mirror: float = 0.0        # stage 2: share of the photos in a batch shown mirrored
                                     # left-right (their features cached once more; 0 = off)


@dataclass(frozen=True)
class TrainConfig:
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig)
    seed: int = 0
    min_positive_grade: int = 0      # judged grade that counts as a training positive
                                     # (0 = the catalog's highest grade present)
    precision: str = "auto"          # CPU autocast: bf16 where native (AVX-512/AMX), else
                                     # fp32 (emulated bf16 is ~7x slower on AVX2)
    threads: int = 0                 # torch threads (0 = torch's default)
    cache_dir: str = "~/.cache/fusion-model"
    domain_finetune: bool = True     # False = freeze the text encoder (zero-shot text)


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 50, 100)
    min_relevant_grade: int = 0      # grade that counts as relevant for recall and MRR
                                     # (0 = the catalog's highest grade present)
    primary_metric: str = "ndcg@10"  # used for early stopping and model selection
    bootstrap_samples: int = 1000
    # named query subsets reported per result: NAME=any:ATTR[,ATTR] | NAME=title_lacks:ATTR
    segments: tuple[str, ...] = ("visual_query=any:colour,pattern",
                                 "text_only_attribute=any:brand,material",
                                 "title_lacks_attribute=title_lacks:colour")


@dataclass(frozen=True)
class IndexConfig:
    backend: str = "milvus"             # a VectorIndex in fusion_model.index.base.BACKENDS
    uri: str = "runs/milvus.db"         # Milvus Lite file, or http://host:19530 for a server
    # Secret: never serialised (params, artifacts, saved model configs, the config hash);
    # "" reads $FUSION_MILVUS_TOKEN when a client opens.
    token: str = field(default="", repr=False, metadata={"secret": True})
    collection_prefix: str = "products"
    alias: str = "products_serving"     # what search and the gate read through
    index_type: str = "HNSW"            # FLAT, IVF_FLAT, IVF_SQ8, HNSW, HNSW_SQ
    metric: str = "IP"
    attribute_fields: tuple[str, ...] = ("category", "colour", "gender")
    batch_size: int = 512
    # Full builds by Milvus bulk import (a server, not Milvus Lite): a folder on the
    # server's disk (local storage) or s3://<Milvus's bucket>/<prefix>; "" inserts batches
    import_uri: str = ""
    import_rows: int = 50_000           # rows per import job (held in memory until sent)
    shards: int = 1                     # Milvus shards of a new collection (write paths)
    replicas: int = 1                   # in-memory replicas of the serving collection
    keep_collections: int = 3           # newest collections kept for rollback
    verify_samples: int = 50            # products that must retrieve themselves at rank 1
    max_delete_share: float = 0.05      # refresh refuses to delete a larger share of the
                                        # serving products unless deletions are allowed

    def resolved_token(self) -> str:
        """The Milvus token: ``index.token`` if given, else ``$FUSION_MILVUS_TOKEN``."""
        import os

        return self.token or os.environ.get(TOKEN_ENV, "")


@dataclass(frozen=True)
class GateConfig:
    primary_metric: str = "recall@10"
    min_improvement: float = 0.0        # absolute gain of the primary metric required
    guarded_segments: tuple[str, ...] = ("visual_query", "text_only_attribute")
    segment_tolerance: float = 0.02     # largest allowed drop of a guarded segment
    bootstrap_samples: int = 1000


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str = ""              # "" = $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db
    artifact_location: str = ""         # "" = MLflow's default for the tracking store
    experiment: str = "fusion-model"
    model_name: str = "fusion_products"

    def resolved_tracking_uri(self) -> str:
        import os

        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            "sqlite:///runs/mlflow.db"


@dataclass(frozen=True)
class FeedbackConfig:
    """Search traffic: where the service records it, the online comparison it decides,
    and the judgments built from it (docs/feedback.md)."""

    events: str = ""                    # folder or s3:// prefix of the search events
    retention_days: int = 90
    # online stage: a version that passes the offline gate becomes the ``candidate`` and is
    # interleaved with the champion on ``share`` of the searches; promoted when shoppers
    # prefer it (sign test at ``alpha``), withdrawn when they prefer the champion or when
    # ``max_decided`` decided searches show no preference
    online: bool = False
    share: float = 0.1
    alpha: float = 0.05
    min_decided: int = 100              # searches with a winner before any decision
    max_decided: int = 20000
    # judgments from logs (``fusion-model feedback build``)
    min_searches: int = 5               # a query's searches before it is judged
    min_examinations: float = 5.0       # with confidence 0: a pair's views before it is judged
    position_bias: str = "em"           # "em": position-based click model; "none": raw
    # the attractiveness (P(click | seen)) at which grades 1, 2 and 3 start
    grade_floors: tuple[float, ...] = (0.2, 0.45, 0.7)
    # a logged query also gets the top-grade products of its refinements (queries with
    # more words that include all of its own: "black backpacks for men" -> "black backpacks")
    pool_refinements: bool = False
    # in (0.5, 1): a pair is judged once its posterior (position_bias em, with a prior
    # fitted to the whole log) gives one grade this confidence from both sides (credible
    # grades; chosen in simulation on two catalogs: benchmarks/RESULTS.md); 0: once
    # examined min_examinations times (the evidence floors, which position_bias none always
    # uses; min_searches was 20 with them before 2026-12-07)
    confidence: float = 0.7


@dataclass(frozen=True)
class RuntimeConfig:
    # where frozen encoders and trained towers run at inference time (fusion_model.engines,
    # which checks the name): "auto" = openvino when installed and on the CPU, else torch
    engine: str = "auto"
    # torch device: cpu, cuda, cuda:N, or auto (cuda when a GPU is visible). Training (both
    # stages, evaluation), the feature cache fill and inference all follow it.
    device: str = "cpu"
    # torch.compile the frozen encoders and towers on CUDA (slower first batch, then about
    # 2x the images/s of eager in an H100 probe); ignored on the CPU (OpenVINO's job)
    compile: bool = False


TRAINING_SECTIONS = ("text", "image", "model", "train", "eval", "runtime")


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Every setting but the secrets (what params, artifacts and the hash see)."""
        return _without_secrets(self)

    def with_secrets(self) -> dict[str, Any]:
        """``to_dict`` plus the secret fields, for handing a config to another process."""
        return dataclasses.asdict(self)

    def for_catalog(self, max_grade: int) -> RunConfig:
        """Relevance thresholds left at 0 (auto) become the catalog's highest grade."""
        import logging

        top = max(1, int(max_grade))
        changes = [f"{key}={top}" for key, value in (
            ("train.min_positive_grade", self.train.min_positive_grade),
            ("eval.min_relevant_grade", self.eval.min_relevant_grade)) if value == 0]
        if not changes:
            return self
        logging.getLogger(__name__).info(
            "relevance thresholds from the catalog's highest grade %d: %s (override to "
            "change)", top, ", ".join(changes))
        return from_dict(apply_overrides(self.with_secrets(), changes))

    @property
    def hash(self) -> str:
        """Short stable hash of the resolved config (lineage tag)."""
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    @property
    def training_hash(self) -> str:
        """Short stable hash of what decides the trained weights (encoders, model,
        training, evaluation, runtime): where a run indexes, registers or gates does not
        make a half-done or finished training another one."""
        trained = {k: v for k, v in self.to_dict().items() if k in TRAINING_SECTIONS}
        return hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, *overrides: str) -> RunConfig:
        return from_dict(apply_overrides(self.with_secrets(), overrides))


def _without_secrets(node) -> Any:
    if dataclasses.is_dataclass(node):
        return {f.name: _without_secrets(getattr(node, f.name))
                for f in dataclasses.fields(node) if not f.metadata.get("secret")}
    return node


def load_config(name_or_path: str = "default", overrides: list[str] | tuple = ()) -> RunConfig:
    """Packaged config by name (``default``, ``fast``) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"config {name_or_path!r} not found; packaged configs: {available}, "
                          "or pass a path to a YAML file")
    raw = yaml.safe_load(path.read_text()) or {}
    base = raw.pop("base", None)
    data = load_config(base).to_dict() if base else {}
    data = _deep_merge(data, raw)
    data["name"] = raw.get("name", path.stem)
    return from_dict(apply_overrides(data, overrides))


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict, overrides) -> dict:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML scalars/lists."""
    data = json.loads(json.dumps(data))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node[leaf] = _override_value(override, value)
    return data


def _override_value(override: str, value: str) -> Any:
    """The value of ``key=value`` read as YAML (a number, a list, ...), else a named error."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({problem}); "
                          "quote it, or write a list as [a, b]") from None


def from_dict(data: dict) -> RunConfig:
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; valid keys in "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


# Milvus's rule for collection, alias and field names (255 characters; collections add a
# version and a catalog fingerprint to the prefix)
INDEX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, hint, key: str):
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(hint)[0], key) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in configs")
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float and isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    if hint is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return float(value) if hint is float else value


POSITION_BIAS = ("em", "none")


def _feedback_rules(feedback: FeedbackConfig) -> list[tuple[bool, str]]:
    return [
        (0 < feedback.share <= 1, f"feedback.share={feedback.share}: a share in (0, 1]"),
        (0 < feedback.alpha < 0.5, f"feedback.alpha={feedback.alpha}: a level in (0, 0.5)"),
        (1 <= feedback.min_decided <= feedback.max_decided,
         "feedback.min_decided must be at least 1 and at most feedback.max_decided"),
        (feedback.retention_days >= 1, "feedback.retention_days must be at least 1"),
        (feedback.min_searches >= 1 and feedback.min_examinations > 0,
         "feedback.min_searches must be >= 1 and feedback.min_examinations > 0"),
        (feedback.confidence == 0 or 0.5 < feedback.confidence < 1,
         f"feedback.confidence={feedback.confidence}: 0 (evidence floors) or a posterior "
         "probability in (0.5, 1)"),
        (len(feedback.grade_floors) == 3 and list(feedback.grade_floors)
         == sorted(feedback.grade_floors) and feedback.grade_floors[0] > 0
         and feedback.grade_floors[-1] < 1,
         "feedback.grade_floors: three increasing attractiveness values in (0, 1), where "
         "grades 1, 2 and 3 start"),
        (feedback.position_bias in POSITION_BIAS,
         f"feedback.position_bias={feedback.position_bias!r}: choose one of "
         f"{', '.join(POSITION_BIAS)}"),
    ]


def validate(config: RunConfig) -> None:
    """Value ranges and combinations; each message says what to change. Names that a
    registry owns (product heads, index backends and what they build, segment rules) are
    checked by that registry (``fusion_model.checks.check_names``): the config is the
    ground floor and imports nothing of the library."""
    checks = [
        (config.model.embed_dim >= 1 and config.model.fusion_heads >= 1,
         "model.embed_dim and model.fusion_heads must be at least 1"),
        (config.model.fusion_heads < 1
         or config.model.embed_dim % config.model.fusion_heads == 0,
         f"model.embed_dim={config.model.embed_dim} must be divisible by "
         f"model.fusion_heads={config.model.fusion_heads}"),
        (1 <= config.text.max_length <= MAX_TOKENS
         and 1 <= config.text.query_max_length <= MAX_TOKENS,
         f"text.max_length and text.query_max_length must be 1..{MAX_TOKENS} tokens (got "
         f"{config.text.max_length} and {config.text.query_max_length})"),
        (32 <= config.image.image_size <= 1024,
         f"image.image_size must be 32..1024 pixels, got {config.image.image_size}"),
        (config.eval.bootstrap_samples >= 1 and config.gate.bootstrap_samples >= 1,
         "eval.bootstrap_samples and gate.bootstrap_samples must be at least 1"),
        (0 <= config.model.modality_dropout < 0.5,
         "model.modality_dropout must be in [0, 0.5)"),
        (0 <= config.model.dropout < 1, "model.dropout must be in [0, 1)"),
        *((stage.schedule in SCHEDULES,
           f"train.{name}.schedule={stage.schedule!r}: choose one of {', '.join(SCHEDULES)}")
          for name, stage in (("stage1", config.train.stage1), ("stage2", config.train.stage2))),
        *((0 <= stage.warmup < 1 and stage.grad_clip >= 0 and stage.weight_decay >= 0
           and stage.anchor >= 0,
           f"train.{name}: warmup must be in [0, 1), grad_clip, weight_decay and anchor >= 0")
          for name, stage in (("stage1", config.train.stage1), ("stage2", config.train.stage2))),
        (0 <= config.train.stage2.photo_mirror <= 1,
         f"train.stage2.photo_mirror={config.train.stage2.photo_mirror}: a share in [0, 1]"),
        (bool(DEVICE.fullmatch(config.runtime.device)),
         f"runtime.device={config.runtime.device!r}: use auto, cpu, cuda or cuda:N"),
        (config.train.precision in PRECISIONS,
         f"train.precision={config.train.precision!r}: choose one of {', '.join(PRECISIONS)}"),
        (0 <= config.train.min_positive_grade <= 3,
         "train.min_positive_grade must be 1..3, or 0 for the catalog's highest grade"),
        (0 <= config.eval.min_relevant_grade <= 3,
         "eval.min_relevant_grade must be 1..3, or 0 for the catalog's highest grade"),
        (0 <= config.index.max_delete_share <= 1, "index.max_delete_share must be in [0, 1]"),
        (all(k > 0 for k in config.eval.ks), "eval.ks must be positive integers"),
        *_index_rules(config.index),
        (config.index.keep_collections >= 1, "index.keep_collections must be >= 1"),
        *_feedback_rules(config.feedback),
        (config.index.batch_size >= 1 and config.index.verify_samples >= 0,
         "index.batch_size must be >= 1 and index.verify_samples >= 0"),
        (config.index.shards >= 1 and config.index.replicas >= 1,
         "index.shards and index.replicas must be >= 1"),
        _metric_rule("gate.primary_metric", config.gate.primary_metric, config.eval.ks),
        (config.gate.segment_tolerance >= 0, "gate.segment_tolerance must be >= 0"),
        (config.text.trainable_layers >= 0 and config.image.trainable_blocks >= 0,
         "text.trainable_layers and image.trainable_blocks must be >= 0"),
        _metric_rule("eval.primary_metric", config.eval.primary_metric, config.eval.ks),
    ]
    for stage_name in ("stage1", "stage2"):
        stage: StageConfig = getattr(config.train, stage_name)
        checks += [
            (stage.epochs >= 0, f"train.{stage_name}.epochs must be >= 0"),
            (stage.batch_size >= 2, f"train.{stage_name}.batch_size must be >= 2 "
                                    "(in-batch negatives need company)"),
            (stage.lr > 0 and stage.encoder_lr >= 0 and stage.new_layer_lr >= 0,
             f"train.{stage_name} learning rates must be positive"),
            (stage.positives_per_query >= 1, f"train.{stage_name}.positives_per_query >= 1"),
            (stage.hard_negatives >= 0, f"train.{stage_name}.hard_negatives must be >= 0"),
            (stage.judged_negatives >= 0,
             f"train.{stage_name}.judged_negatives must be >= 0"),
            (stage.mix_epochs >= 0, f"train.{stage_name}.mix_epochs must be >= 0"),
        ]
    checks += [
        (config.train.stage1.mix_epochs == 0,
         "train.stage1.mix_epochs: the mix phase belongs to stage 2 (stage 1 has no photo)"),
        (config.train.stage1.photo_mirror == 0,
         "train.stage1.photo_mirror: photos are seen in stage 2 only (stage 1 has no photo)"),
        (config.train.stage2.mix_epochs == 0 or config.model.fusion != "fusion"
         or config.model.gated_fusion,
         "train.stage2.mix_epochs needs model.gated_fusion=true: the network starts as the "
         "trained weighted sum only when its cross-attention is gated"),
        (config.model.late_mix_weight == 0 or (
            0 < config.model.late_mix_weight <= 1 and config.model.late_mix
            and config.model.fusion == "fusion"),
         f"model.late_mix_weight={config.model.late_mix_weight}: training chooses it on val "
         "(a share in [0, 1] of model.fusion=fusion with model.late_mix=true); leave it "
         "at 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# fields every collection has besides the attributes (index/build.py, index/milvus.py)
RESERVED_FIELDS = ("product_id", "vector", "content_hash", "title", "image_uri")
MAX_TOKENS = 512  # the packaged text encoders' position limit


def _index_rules(index: IndexConfig) -> list[tuple[bool, str]]:
    """Names Milvus (and any index) accepts, no field of the index's own, none twice."""
    names = [("index.alias", index.alias), ("index.collection_prefix", index.collection_prefix),
             *((f"index.attribute_fields[{i}]", name)
               for i, name in enumerate(index.attribute_fields))]
    taken = [f for f in index.attribute_fields if f in RESERVED_FIELDS]
    repeated = sorted({f for f in index.attribute_fields
                       if index.attribute_fields.count(f) > 1})
    return [(not taken, f"index.attribute_fields: {taken[:1]} is a field the index stores "
                        f"itself ({', '.join(RESERVED_FIELDS)}); name attribute columns only"),
            (not repeated, f"index.attribute_fields names {repeated[:1]} more than once"),
            *((bool(INDEX_NAME.fullmatch(value)),
               f"{key}={value!r}: names in the index are a letter or _ followed by letters, "
               "digits and _ (at most 200 characters)") for key, value in names)]


def _metric_rule(key: str, metric: str, ks: tuple[int, ...]) -> tuple[bool, str]:
    return (_metric_known(metric, ks), f"{key}={metric!r}: use mrr or recall@K, "
            f"recall_capped@K, ndcg@K with K in eval.ks={list(ks)}")


def _metric_known(metric: str, ks: tuple[int, ...]) -> bool:
    if metric == "mrr":
        return True
    name, _, k = metric.partition("@")
    return name in {"recall", "recall_capped", "ndcg"} and k.isdigit() and int(k) in ks
