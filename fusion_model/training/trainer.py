"""The explicit two-stage recipe.

Stage 1 aligns queries with product text: InfoNCE over in-batch (and optionally mined
hard) negatives, fine-tuning the top text layers (domain adaptation) and both projections.
Stage 2 starts from stage 1, freezes the text encoder, and aligns queries with product
photos while training the fusion head (or a baseline) and the top image blocks. Frozen
encoder bottoms come from the on-disk feature cache. Each epoch is validated on the val
split (early stopping on the primary metric, best epoch kept) and checkpointed; a rerun
with the same config and catalog resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusion_model.config import RunConfig, StageConfig
from fusion_model.data.catalog import Catalog
from fusion_model.engines import resolve_runtime
from fusion_model.errors import BadInputError
from fusion_model.evaluation.evaluator import EvaluationResult, Evaluator
from fusion_model.evaluation.search import exact_top_k
from fusion_model.feature_store import Table, write_table
from fusion_model.features import (
    image_batch,
    image_bottom_features,
    photos_named_by_product,
    text_bottom_features,
)
from fusion_model.models.text import mean_pool
from fusion_model.models.towers import LateBranch, TwoTower
from fusion_model.progress import progress_bar
from fusion_model.tensor_files import load_tensors
from fusion_model.training.data import (
    RetrievalData,
    build_data,
    epoch_pairs,
    judged_zero_products,
    known_positive_mask,
)
from fusion_model.training.distributed import (
    average_gradients,
    barrier,
    gather_rows,
    init_from_environment,
    rank_zero_first,
    shard_bounds,
)

log = logging.getLogger(__name__)
EMBED_BATCH = 256
MIXED_QUERY_ROWS = 20_000  # query rows of one pass over the products when choosing a mix
RESULT_FILE = "result.json"
# (query indices -> vectors, (product indices, per-product noise) -> vectors)
BatchVectors = tuple[Callable[[np.ndarray], torch.Tensor],
                     Callable[[np.ndarray, torch.Tensor], torch.Tensor]]


@dataclass
class TrainResult:
    model_dir: str
    test: EvaluationResult
    val: EvaluationResult
    history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({
            "model_dir": self.model_dir, "test": self.test.as_dict(), "val": self.val.as_dict(),
            "history": self.history, "seconds": self.seconds}))

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        """The result saved at ``path``; its model is the ``model`` folder beside it when
        there is one (the result may have been copied from another host's work area)."""
        data = json.loads(Path(path).read_text())
        beside = Path(path).parent / Path(data["model_dir"]).name
        model_dir = str(beside) if beside.is_dir() else data["model_dir"]
        return cls(model_dir, EvaluationResult.from_dict(data["test"]),
                   EvaluationResult.from_dict(data["val"]), data["history"], data["seconds"])


def _stage_number(name: str) -> int:
    """"stage2_mix" -> 2: the phases of a stage draw from the stage's random stream."""
    return int(name.removeprefix("stage")[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class NoPhotosError(BadInputError):
    """A head that reads photos, on a catalog without any."""


def check_photos_for_head(catalog: Catalog, config: RunConfig) -> None:
    """NoPhotosError when the head reads photos and the catalog has none; a warning when
    fewer than half of the products have one (the head learns to lean on text)."""
    from fusion_model.models.heads import HEADS

    if not HEADS[config.model.fusion].uses_image:
        return
    with_photo = int(catalog.products["image_uri"].notna().sum())
    total = len(catalog.products)
    if with_photo == 0:
        raise NoPhotosError(f"{catalog.uri}: no product has a photo, but model.fusion="
                            f"{config.model.fusion!r} fuses text with photos; add an image "
                            "column, or train model.fusion=text_only")
    if with_photo < total / 2:
        log.warning("%s: only %d of %d products have a photo; model.fusion=%s will lean on "
                    "text", catalog.uri, with_photo, total, config.model.fusion)


class Trainer:
    """Runs both stages for one config on one catalog, in ``work_dir``."""

    def __init__(self, catalog: Catalog, config: RunConfig, work_dir: str | Path,
                 progress: bool = True, stage1_from: str | Path | None = None,
                 late_branch_from: str | Path | None = None,
                 stage1_state: tuple[str, dict[str, torch.Tensor]] | None = None):
        """``late_branch_from``: a late_fusion model trained from the same ``stage1_from``
        with this config's other settings, taken as the ``model.late_mix`` branch instead of
        training one (the benchmark trains it as a head anyway). ``stage1_state``: (its
        run key, stage-1 tensors) of the run this one starts from."""
        config = config.for_catalog(catalog.max_grade)
        if config.model.late_mix_weight:
            log.info("model.late_mix_weight=%s: training chooses the weight afresh",
                     config.model.late_mix_weight)
            config = config.replace("model.late_mix_weight=0")
        check_photos_for_head(catalog, config)
        self.catalog, self.config, self.progress = catalog, config, progress
        self.work_dir = Path(work_dir)
        self.stage1_from = Path(stage1_from) if stage1_from else None
        self.stage1_given = stage1_state
        self.late_branch_from = Path(late_branch_from) if late_branch_from else None
        source = stage1_state[0] if stage1_state else self.stage1_from
        self.run_key = f"{config.training_hash}-{catalog.fingerprint[:16]}-{source}"
        self.late_mix: dict = {}  # the late branch's weight and val curve (model.late_mix)
        self.cache_root = str(Path(config.train.cache_dir).expanduser())
        self.history: list[dict] = []
        self.seconds: dict[str, float] = {}
        self.runtime = resolve_runtime(config)  # engine, precision, device: resolved once
        if self.runtime.device_type == "cuda":  # NCCL and unnamed CUDA calls use this GPU
            torch.cuda.set_device(self.runtime.device)
        self.rank, self.world = init_from_environment(self.runtime.distributed)
        # what each step below fills in: prepare(), then the stage-2 features
        self.stage = 0                      # the stage whose vectors evaluation uses
        self.data: RetrievalData | None = None
        self.model: TwoTower | None = None
        self.positive_sets: list[set[int]] = []
        self.judged_zero: list[np.ndarray] = []  # per train query, products judged grade 0
        self.product_text: Table = {}     # read from disk a batch at a time
        self.text_bottoms: Table | None = None  # set while product_text holds final tokens
        self.text_row: np.ndarray | None = None
        self.query_text: dict[str, dict[str, torch.Tensor]] = {}
        self.image_features: Table | None = None
        self.image_present: torch.Tensor | None = None
        self.mirrored_features: Table | None = None
        self._mirror_choices: torch.Generator | None = None
        self.query_pooled: dict[str, torch.Tensor] | None = None
        self.negatives: list[np.ndarray] | None = None
        self._anchor: tuple[float, list, list] | None = None  # see _anchor_to_start
        self.evaluators: dict[str, Evaluator] = {}
        self._started = 0.0

    # orchestration ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Both stages (stage 1 taken from ``stage1_from`` when given), then evaluate + save."""
        self.prepare()
        if self.stage1_given:
            self.model.load_stage1_state(self.stage1_given[1], "the run it branches from")
            self.stage = 1
        elif self.stage1_from:
            self.load_stage1(self.stage1_from)
        else:
            self.run_stage1()
        stage1 = self._stage1_snapshot() if self.mixes_late else None
        self.run_stage2()
        if stage1 is not None:
            self.add_late_branch(stage1)
        return self.finish()

    @property
    def mixes_late(self) -> bool:
        """Whether this run trains a late-fusion branch beside the network."""
        return self.config.model.late_mix and self.config.model.fusion == "fusion"

    def prepare(self) -> None:
        """Seed, split the catalog, build the model and load the frozen text features."""
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        seed_everything(self.config.train.seed)
        self._started = time.perf_counter()
        self.data = build_data(self.catalog, self.config.train.min_positive_grade)
        self.model = TwoTower(self.config).to(self.runtime.device)
        self.positive_sets = [set(p.tolist()) for p in self.data.splits["train"].positives]
        self.judged_zero = judged_zero_products(self.data.splits["train"], self.data.product_ids)
        with rank_zero_first(self.rank, self.world):  # rank 0 fills the feature cache
            self._prepare_text_features()

    def run_stage1(self) -> None:
        """Stage 1: align queries with product text (``TwoTower.stage_parameters(1)``)."""
        self.stage = 1
        self._stage1()

    def load_stage1(self, model_dir: str | Path) -> None:
        """Take stage 1 from a saved model instead of training it (strict: every stage-1
        tensor of this config must be there with its shape), with its history and times
        when its training result lies beside it."""
        saved = load_tensors(Path(model_dir) / "model.pt", "stage-1 model")
        self.model.load_stage1_state(saved, str(model_dir))
        self.stage = 1
        result_file = Path(model_dir).parent / RESULT_FILE
        if result_file.is_file():
            earlier = TrainResult.load(result_file)
            self.history = [h for h in earlier.history if h["stage"] == "stage1"] + \
                self.history
            self.seconds.update({f"stage1_run.{k}": v for k, v in earlier.seconds.items()})
        log.info("stage 1 taken from %s; skipping stage 1", model_dir)

    def run_stage2(self) -> None:
        """Stage 2: align queries with photos and train the product head
        (``TwoTower.stage_parameters(2)``); a no-op for heads without an image."""
        if self.stage != 1:
            raise RuntimeError("stage 2 starts from stage 1: run_stage1() or load_stage1() first")
        if self.model.image is None:
            return
        self._stage2()

    def finish(self) -> TrainResult:
        """Evaluate the current model on val and test, save it and the result (rank 0)."""
        self.seconds["total"] = time.perf_counter() - self._started
        val, test = self.evaluate_splits(("val", "test"))
        self._drop_scratch()
        model_dir = self.work_dir / "model"
        if self.rank == 0:
            self.model.save(model_dir, {
                "catalog_fingerprint": self.catalog.fingerprint,
                "config_hash": self.config.hash,
                "training_hash": self.config.training_hash, "test_metrics": test.metrics,
                "val_metrics": val.metrics, "seconds": self.seconds, "processes": self.world,
                "stages": self.stage, "stage1_from": _resolved(self.stage1_from),
                **({"late_mix": self.late_mix} if self.late_mix else {})})
        result = TrainResult(str(model_dir), test, val, self.history, self.seconds)
        if self.rank == 0:
            result.save(self.work_dir / RESULT_FILE)
        barrier(self.world)
        log.info("trained %s (stage %d): test %s=%.4f", self.config.model.fusion, self.stage,
                 self.config.eval.primary_metric, test.metrics[self.config.eval.primary_metric])
        return result

    # the late-fusion branch (model.late_mix) ---------------------------------------------
    def _stage1_snapshot(self) -> tuple[str, dict[str, torch.Tensor]]:
        return self.run_key, {k: v.detach().clone() for k, v in
                              self.model.stage1_state().items()}

    def add_late_branch(self, stage1: tuple[str, dict[str, torch.Tensor]]) -> None:
        """Train (or take) a late-fusion model from the same stage 1, choose on val the
        weight w of the score mix (1 - w) * network + w * late fusion, and attach the branch
        when w > 0: the network is one of the mixes (w = 0), so the mix cannot be worse on
        val than the network alone."""
        started = time.perf_counter()
        late = self._late_model(stage1)
        branch = LateBranch.of(late)
        curve = self._late_weight_curve(branch)
        weight = max(curve, key=lambda w: (curve[w], -w))  # ties: the most of the network
        self.late_mix = {"weight": weight, "val": {str(w): v for w, v in curve.items()}}
        if weight > 0:
            self.model.attach_late_branch(branch, weight)
        self.seconds["late_branch"] = time.perf_counter() - started
        log.info("late mix: weight %.2f of late fusion chosen on val (%s %.4f; network alone "
                 "%.4f)", weight, self.config.eval.primary_metric, curve[weight], curve[0.0])

    def _late_model(self, stage1: tuple[str, dict[str, torch.Tensor]]) -> TwoTower:
        config = self.config.replace("model.fusion=late_fusion")  # late_mix: ignored
        taken = self._reusable_late_model(config)
        if taken is not None:
            log.info("late branch taken from %s", self.late_branch_from)
            return taken.to(self.runtime.device)
        trainer = Trainer(self.catalog, config, self.work_dir / "late_branch", self.progress,
                          stage1_state=stage1)
        trainer.run()
        return trainer.model

    def _reusable_late_model(self, config: RunConfig) -> TwoTower | None:
        """The model in ``late_branch_from`` when it was trained with ``config`` from this
        run's stage-1 model on this catalog, else None (then the branch is trained)."""
        from fusion_model.models.towers import MANIFEST_FILE, load_model

        if self.late_branch_from is None or self.stage1_from is None:
            return None
        manifest_file = self.late_branch_from / MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        if (manifest.get("training_hash"), manifest.get("catalog_fingerprint"),
                manifest.get("stage1_from")) != (config.training_hash, self.catalog.fingerprint,
                                                 _resolved(self.stage1_from)):
            log.info("%s is not this run's late branch (another config, catalog or stage 1)",
                     self.late_branch_from)
            return None
        return load_model(self.late_branch_from)

    @torch.no_grad()
    def _late_weight_curve(self, branch: LateBranch, steps: int = 20) -> dict[float, float]:
        """Val primary metric of the mix at every weight of late fusion 0, 1/steps, .., 1,
        each from one streamed pass over the products (both heads' vectors side by side)."""
        if "val" not in self.evaluators:
            self.evaluators["val"] = Evaluator.for_split(self.catalog, self.config, self.data,
                                                         "val")
        evaluator = self.evaluators["val"]
        pooled = self.query_pooled["val"]
        self.model.eval()  # a resumed run's model was never put in eval mode
        branch.eval()
        network, late = self.model.query_head(pooled).float(), \
            branch.query_head(pooled).float()
        grid = [i / steps for i in range(steps + 1)]
        per_pass = max(1, MIXED_QUERY_ROWS // max(1, len(pooled)))
        curve = {}
        for start in range(0, len(grid), per_pass):
            weights = grid[start:start + per_pass]
            # against [network; late] product vectors: (1 - w) * s_network + w * s_late
            queries = torch.cat([torch.cat([network * (1 - w), late * w], dim=-1)
                                 for w in weights])
            _, top = exact_top_k(queries, self._product_pairs(branch), max(evaluator.ks))
            for n, w in enumerate(weights):
                rows = top[n * len(pooled):(n + 1) * len(pooled)]
                curve[w] = evaluator.score_top(rows).metrics[self.config.eval.primary_metric]
        return curve

    def _product_pairs(self, branch: LateBranch) -> Iterator[torch.Tensor]:
        """Every product's [network vector; late branch vector], a batch at a time."""
        for inputs in self._stage2_batches():
            with self.runtime.autocast():
                network = self.model.products_from_features(*inputs)
                late = branch.products(*inputs)[0]
            yield torch.cat([network.float(), late.float()], dim=-1)

    def _prepare_text_features(self) -> None:
        started = time.perf_counter()
        cfg = self.config
        self.product_text = text_bottom_features(
            self.model.text, self.data.product_texts, cfg.text.max_length, self.cache_root,
            self.runtime, desc="product text features", progress=self.progress)
        codes, _ = pd.factorize(np.asarray(self.data.product_texts, dtype=object))
        _, first = np.unique(codes, return_index=True)  # codes number texts as first seen
        self.text_row = first[codes]                    # product -> first with its text
        all_queries = [t for s in self.data.splits.values() for t in s.texts]
        features = text_bottom_features(
            self.model.query_text, all_queries, cfg.text.query_max_length, self.cache_root,
            self.runtime, desc="query text features", progress=self.progress)
        self.query_text = {}
        start = 0
        for split, queries in self.data.splits.items():
            stop = start + len(queries.texts)
            self.query_text[split] = {k: v[start:stop] for k, v in features.items()}
            start = stop
        self.seconds["text_features"] = time.perf_counter() - started

    # stage 1 ------------------------------------------------------------------------------
    def _stage1(self) -> None:
        model, stage = self.model, self.config.train.stage1
        if not self.config.train.domain_finetune:
            self._freeze_text_tokens()
        encoder_params, head_params = model.stage_parameters(1)
        queries = self.query_text["train"]

        def query_vectors(q_idx: np.ndarray) -> torch.Tensor:
            return model.queries_from_hidden(self._put(queries["hidden"][q_idx]).float(),
                                             self._put(queries["mask"][q_idx]), text_half=True)

        def product_vectors(p_idx: np.ndarray, noise: torch.Tensor) -> torch.Tensor:
            return model.product_text_vectors(*self._product_tokens(p_idx))

        self._run_stage("stage1", stage, encoder_params, head_params,
                        (query_vectors, product_vectors))

    def _freeze_text_tokens(self) -> None:
        """The text top is frozen: run it once over every product and keep its output on
        disk (scratch of this work dir), read back a batch at a time."""
        source = self.product_text
        scratch = self._scratch_dir() / "final-text-tokens"
        shutil.rmtree(scratch, ignore_errors=True)

        def final_tokens(rows: np.ndarray) -> dict[str, torch.Tensor]:
            mask = source["mask"][rows]
            tokens = self._map_batches(len(rows), lambda idx: self.model.text.top(
                self._put(source["hidden"][rows[idx.numpy()]]).float(), self._put(mask[idx])))
            return {"hidden": tokens.to(torch.bfloat16).cpu(), "mask": mask}

        with torch.no_grad():
            self.product_text = write_table(scratch, len(self.data.product_ids),
                                            final_tokens)
        self.text_bottoms = source

    def _drop_scratch(self) -> None:
        """Delete the frozen tokens on disk; the text top then runs per batch again on the
        cached bottoms (same vectors: it is frozen), should the trainer be used further."""
        if self.text_bottoms is not None:
            self.product_text, self.text_bottoms = self.text_bottoms, None
        shutil.rmtree(self._scratch_dir(), ignore_errors=True)

    def _scratch_dir(self) -> Path:
        return self.work_dir / "scratch" / f"rank-{self.rank}"

    def _product_tokens(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Final text tokens of products ``idx``. While the text top trains, it runs once per
        distinct text of the batch and only up to the batch's longest text (padding and
        duplicate titles are most of the work otherwise); the result is the same."""
        if self.text_bottoms is not None:  # the frozen top's output, on disk
            return (self._put(self.product_text["hidden"][idx]).float(),
                    self._put(self.product_text["mask"][idx]))
        rows, inverse = np.unique(self.text_row[np.asarray(idx)], return_inverse=True)
        mask = self.product_text["mask"][rows]
        length = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
        mask = mask[:, :length]
        hidden = self._put(self.product_text["hidden"][rows, :length]).float()
        mask = self._put(mask)
        inverse = self._put(torch.from_numpy(inverse.reshape(-1)))
        return self.model.text.top(hidden, mask)[inverse], mask[inverse]

    def _put(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch read from the feature tables (CPU, memory-mapped) on the run's device."""
        return self.runtime.put(tensor)

    # stage 2 ------------------------------------------------------------------------------
    def _stage2(self) -> None:
        model, stage, cfg = self.model, self.config.train.stage2, self.config
        started = time.perf_counter()
        with rank_zero_first(self.rank, self.world):
            images = image_bottom_features(model.image, self.data.image_uris, self.cache_root,
                                           self.runtime, progress=self.progress)
        self.seconds["image_features"] = time.perf_counter() - started
        self.image_features, self.image_present = images["features"], images["present"][:]
        self.mirrored_features = self._mirrored_photos(stage)
        with torch.no_grad():
            if self.text_bottoms is None:
                self._freeze_text_tokens()
            self.query_pooled = {split: self._pool_queries(split) for split in self.query_text}
        self.stage = 2  # from here on evaluation uses the product head and full queries
        for param in model.text.parameters():
            param.requires_grad_(False)
        encoder_params, head_params = model.stage_parameters(2)
        head = model.product_head
        dropout = cfg.model.modality_dropout if head.uses_text and head.uses_image else 0.0

        def query_vectors(q_idx: np.ndarray) -> torch.Tensor:
            return model.query_head(self.query_pooled["train"][q_idx])

        def product_vectors(p_idx: np.ndarray, noise: torch.Tensor) -> torch.Tensor:
            tokens, mask = self._product_tokens(p_idx)
            present = self._put(self.image_present[p_idx].clone())
            if dropout:  # hide one modality of some products (noise: uniform per product)
                hide_image = (noise < dropout) & present
                hide_text = (noise > 1 - dropout) & present
                present &= ~hide_image
                mask = mask & ~hide_text.unsqueeze(1)
            features = self._put(self._image_features(p_idx, stage.photo_mirror))
            return model.products_from_features(tokens, mask, features, present)

        mix = head.mix_parameters()
        if stage.mix_epochs and mix:  # the weighted sum first; the network starts from its best
            mix_params = [*mix, *model.query_head.parameters(), model.loss.log_scale]
            self._run_stage("stage2_mix", dataclasses.replace(stage, epochs=stage.mix_epochs),
                            encoder_params, mix_params, (query_vectors, product_vectors))
        self._run_stage("stage2", stage, encoder_params, head_params,
                        (query_vectors, product_vectors))

    def _mirrored_photos(self, stage: StageConfig) -> Table | None:
        """Features of the photos mirrored left-right when the stage shows some so, else None;
        the mirror choices come from their own generator (per seed and process), so the
        stage's other random draws are those of a run without mirroring."""
        if not stage.photo_mirror or not self.model.product_head.uses_image:
            return None
        self._mirror_choices = torch.Generator().manual_seed(
            self.config.train.seed * 7919 + self.rank)
        with rank_zero_first(self.rank, self.world):
            return image_bottom_features(self.model.image, self.data.image_uris,
                                         self.cache_root, self.runtime, progress=self.progress,
                                         mirrored=True)["features"]

    def _image_features(self, p_idx: np.ndarray, mirror: float) -> torch.Tensor:
        """Cached photo features of products ``p_idx``, a ``mirror`` share of them (drawn
        per product) from the mirrored photos; each row is read once, from one table."""
        if self.mirrored_features is None:
            return image_batch(self.image_features, p_idx)
        idx = np.asarray(p_idx)
        chosen = (torch.rand(len(idx), generator=self._mirror_choices) < mirror).numpy()
        if not chosen.any():
            return image_batch(self.image_features, idx)
        if chosen.all():
            return image_batch(self.mirrored_features, idx)
        features = torch.cat([image_batch(self.image_features, idx[~chosen]),
                              image_batch(self.mirrored_features, idx[chosen])])
        read_order = np.concatenate([np.flatnonzero(~chosen), np.flatnonzero(chosen)])
        return features[torch.from_numpy(np.argsort(read_order))]  # back to p_idx's order

    def _pool_queries(self, split: str) -> torch.Tensor:
        hidden, mask = self._put(self.query_text[split]["hidden"]).float(), \
            self._put(self.query_text[split]["mask"])
        return mean_pool(self.model.query_text.top(hidden, mask), mask).float()

    # the shared epoch loop ----------------------------------------------------------------
    def _run_stage(self, name: str, stage: StageConfig, encoder_params: list, head_params: list,
                   batch_vectors: BatchVectors) -> None:
        if stage.epochs == 0:
            log.info("%s: 0 epochs, skipped", name)
            return
        started = time.perf_counter()
        groups = [{"params": head_params, "lr": stage.lr}]
        if stage.new_layer_lr > 0:
            aligned, new = self.model.split_stage1_trained(head_params)
            groups = [g for g in ({"params": aligned, "lr": stage.lr},
                                  {"params": new, "lr": stage.new_layer_lr}) if g["params"]]
        if encoder_params and stage.encoder_lr > 0:
            groups.append({"params": encoder_params, "lr": stage.encoder_lr})
        for group in groups:
            group["base_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
        checkpoint = self.work_dir / "checkpoints" / f"{name}.pt"
        state = self._resume(checkpoint, optimizer)
        if state.get("done"):
            log.info("%s: already complete in %s", name, checkpoint)
            return
        primary = self.config.eval.primary_metric
        if state["epoch"] == 0 and state["best_state"] is None:
            # the starting point competes too: a stage that cannot beat it changes nothing
            state.update(best_score=self.evaluate_split("val").metrics[primary],
                         best_state=_clone_state(self.model))
            log.info("%s: val %s before training %.4f", name, primary, state["best_score"])
        self._anchor = self._anchor_to_start(name, stage, [*head_params, *encoder_params], state)
        for epoch in range(state["epoch"], stage.epochs):
            rng = np.random.default_rng([self.config.train.seed, _stage_number(name), epoch])
            torch.manual_seed(self.config.train.seed * 1000 + epoch)
            self.negatives = self._stage_negatives(stage, rng)
            batches = epoch_pairs(self.data.splits["train"].positives, stage.positives_per_query,
                                  stage.batch_size, rng)
            schedule = LearningRateSchedule(stage, epoch, len(batches))
            loss = self._train_epoch(name, epoch, stage.epochs, batches, optimizer,
                                     batch_vectors, [*head_params, *encoder_params], schedule)
            val = self.evaluate_split("val")
            score = val.metrics[primary]
            record = {"stage": name, "epoch": epoch + 1, "loss": loss, f"val_{primary}": score,
                      **{f"val_{k}": v for k, v in val.metrics.items()
                         if k.startswith(("recall@", "ndcg@", "mrr"))},
                      "temperature": self.model.loss.temperature}
            self.history.append(record)
            log.info("%s epoch %d/%d: loss %.4f, val %s %.4f", name, epoch + 1, stage.epochs,
                     loss, primary, score)
            if score > state["best_score"]:
                state.update(best_score=score, best_state=_clone_state(self.model),
                             bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            stop = state["bad_epochs"] >= stage.patience
            self._save_checkpoint(checkpoint, optimizer, state, done=False)
            if stop:
                log.info("%s: early stop after epoch %d (no val gain for %d epochs)", name,
                         epoch + 1, stage.patience)
                break
        if state["best_state"] is not None:
            self.model.load_state_dict(state["best_state"])
        self._anchor = None
        state.pop("anchor", None)
        self._save_checkpoint(checkpoint, optimizer, state, done=True)
        self.seconds[name] = time.perf_counter() - started

    def _train_epoch(self, name, epoch, epochs, batches, optimizer,
                     batch_vectors: BatchVectors, parameters: list,
                     schedule: LearningRateSchedule) -> float:
        """One pass over ``batches``; under torchrun each process embeds its slice."""
        self.model.train()
        losses = []
        bar = progress_bar(batches, desc=f"{name} epoch {epoch + 1}/{epochs}", unit="batch",
                           show=self.progress and self.rank == 0)
        query_fn, product_fn = batch_vectors
        for step, (q_idx, p_idx) in enumerate(bar):
            schedule.apply(optimizer, step)
            noise = self._put(torch.rand(len(p_idx)))  # the whole batch's, on every rank
            lo, hi = shard_bounds(len(p_idx), self.rank, self.world)
            with self.runtime.autocast():
                q = gather_rows(query_fn(q_idx[lo:hi]).float(), len(p_idx), self.world)
                p = gather_rows(product_fn(p_idx[lo:hi], noise[lo:hi]).float(), len(p_idx),
                                self.world)
                negatives = self._batch_negatives(q_idx, p_idx)
                if len(negatives):  # every rank embeds the (few) mined negatives
                    half = self._put(torch.full((len(negatives),), 0.5))
                    p = torch.cat([p, product_fn(negatives, half).float()])
                    p_idx = np.concatenate([p_idx, negatives])
                known = self._put(torch.from_numpy(
                    known_positive_mask(q_idx, p_idx, self.positive_sets)))
                loss = self.model.loss(q, p, known)
            if self._anchor is not None:
                loss = loss + self._anchor_penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(parameters, self.world)
            if schedule.grad_clip:
                torch.nn.utils.clip_grad_norm_(parameters, schedule.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        self.model.eval()
        return float(np.mean(losses)) if losses else float("nan")

    def _anchor_to_start(self, name: str, stage: StageConfig, parameters: list,
                         state: dict) -> tuple[float, list, list] | None:
        """``stage.anchor / train queries`` and the weights the stage started from (kept in
        the checkpoint's state, so a resumed stage pulls toward the same point)."""
        if stage.anchor <= 0:
            return None
        trainable = [p for p in parameters if p.requires_grad]
        if state.get("anchor") is None:
            state["anchor"] = [p.detach().clone() for p in trainable]
        strength = stage.anchor / max(1, len(self.data.splits["train"].ids))
        log.info("%s: anchored to its start with strength %.2e (%g / %d train queries)", name,
                 strength, stage.anchor, len(self.data.splits["train"].ids))
        return strength, trainable, [self._put(t) for t in state["anchor"]]

    def _anchor_penalty(self) -> torch.Tensor:
        strength, parameters, start = self._anchor
        return strength * sum(((p.float() - s.float()) ** 2).sum()
                              for p, s in zip(parameters, start))

    def _stage_negatives(self, stage: StageConfig, rng: np.random.Generator
                         ) -> list[np.ndarray] | None:
        """This epoch's extra negatives per train query: mined and judged ones, or None."""
        parts = []
        if stage.hard_negatives:
            parts.append(self._mine_negatives(stage.hard_negatives))
        if stage.judged_negatives and any(len(zeros) for zeros in self.judged_zero):
            parts.append(self._judged_negatives(stage.judged_negatives, rng))
        if not parts:
            return None
        return [np.concatenate(rows) for rows in zip(*parts)]  # _batch_negatives dedupes

    def _judged_negatives(self, count: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Per train query, up to ``count`` of its products judged grade 0, drawn afresh
        each epoch: what shoppers saw and passed over, in a feedback snapshot."""
        return [rng.choice(zeros, size=min(count, len(zeros)), replace=False)
                for zeros in self.judged_zero]

    @torch.no_grad()
    def _mine_negatives(self, count: int) -> list[np.ndarray]:
        """Per train query, the ``count`` highest-scoring products it has no judgment for,
        under the current model (re-mined every epoch)."""
        queries = self.query_vectors("train")
        depth = min(len(self.data.product_ids), count * 4 + 64)
        _, top = exact_top_k(queries, self.product_vector_chunks(), depth)
        ids, train = self.data.product_ids, self.data.splits["train"]
        mined = []
        for qid, row in zip(train.ids, top.tolist()):
            judged = train.qrels.get(qid, {})
            mined.append(np.array([j for j in row if ids[j] not in judged][:count],
                                  dtype=np.int64))
        log.info("mined %d hard negatives for each of %d train queries", count, len(mined))
        return mined

    def _batch_negatives(self, q_idx: np.ndarray, p_idx: np.ndarray) -> np.ndarray:
        if not self.negatives:
            return np.empty(0, dtype=np.int64)
        in_batch = set(p_idx.tolist())
        chosen = dict.fromkeys(j for q in q_idx for j in self.negatives[q].tolist()
                               if j not in in_batch)
        return np.fromiter(chosen, dtype=np.int64)

    def _resume(self, checkpoint: Path, optimizer) -> dict:
        fresh = {"epoch": 0, "best_score": float("-inf"), "best_state": None, "bad_epochs": 0}
        if not checkpoint.is_file():
            return fresh
        saved = load_tensors(checkpoint, "training checkpoint")
        if saved.get("run_key") != self.run_key:
            log.warning("%s belongs to another config or catalog; starting afresh", checkpoint)
            return fresh
        self.model.load_state_dict(saved["model"])
        if "optimizer" in saved:  # a finished stage keeps its model alone
            optimizer.load_state_dict(saved["optimizer"])
        self.history = saved.get("history", [])
        log.info("resuming %s after epoch %d", checkpoint.stem, saved["state"]["epoch"])
        return {**saved["state"], "done": saved.get("done", False)}

    def _save_checkpoint(self, checkpoint: Path, optimizer, state: dict, done: bool) -> None:
        """Mid-stage: model, optimizer and best state, to resume exactly. A finished stage
        keeps its (best) model alone, about a quarter of the size: a rerun only skips it
        (a 3-seed benchmark of five models wrote 7 GB of checkpoints before)."""
        if self.rank != 0:
            return
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        saved = {"run_key": self.run_key, "model": self.model.state_dict(), "done": done,
                 "history": self.history}
        if done:
            saved["state"] = {**state, "best_state": None}
        else:
            saved.update(optimizer=optimizer.state_dict(), state=state)
        torch.save(saved, tmp)
        tmp.replace(checkpoint)

    # evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def product_vector_chunks(self) -> Iterator[torch.Tensor]:
        """Every product's current embedding, ``EMBED_BATCH`` at a time in catalog order,
        from cached features (never all in memory at once)."""
        model = self.model.eval()
        if self.stage == 2:
            for inputs in self._stage2_batches():
                with self.runtime.autocast():
                    yield model.products_from_features(*inputs).float()
            return
        for idx in self._product_batches():
            with self.runtime.autocast():
                yield model.product_text_vectors(*self._product_tokens(idx)).float()

    def _product_batches(self) -> Iterator[torch.Tensor]:
        """Product indices, ``EMBED_BATCH`` at a time in catalog order."""
        for start in range(0, len(self.data.product_ids), EMBED_BATCH):
            yield torch.arange(start, min(len(self.data.product_ids), start + EMBED_BATCH))

    def _stage2_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Per batch of products: final text tokens, mask, cached photo features, present."""
        for idx in self._product_batches():
            yield (*self._product_tokens(idx), self._put(image_batch(self.image_features, idx)),
                   self._put(self.image_present[idx]))

    @torch.no_grad()
    def query_vectors(self, split: str) -> torch.Tensor:
        if self.stage == 2:
            return self.model.queries_from_pooled(self.query_pooled[split])
        feats = self.query_text[split]
        return self._map_batches(len(feats["mask"]), lambda idx: self.model.queries_from_hidden(
            self._put(feats["hidden"][idx]).float(), self._put(feats["mask"][idx]),
            text_half=True))

    def _map_batches(self, n: int, fn) -> torch.Tensor:
        outs = []
        with torch.no_grad(), self.runtime.autocast():
            for start in range(0, n, EMBED_BATCH):
                outs.append(fn(torch.arange(start, min(n, start + EMBED_BATCH))).float())
        return torch.cat(outs)

    def evaluate_split(self, split: str) -> EvaluationResult:
        """Exact-search metrics of the current model on one split."""
        return self.evaluate_splits((split,))[0]

    def evaluate_splits(self, splits: tuple[str, ...]) -> list[EvaluationResult]:
        """Exact-search metrics on each split, from one streamed pass over the products."""
        for split in splits:
            if split not in self.evaluators:
                self.evaluators[split] = Evaluator.for_split(self.catalog, self.config,
                                                             self.data, split)
        evaluators = [self.evaluators[s] for s in splits]
        queries = [self.query_vectors(s) for s in splits]
        depth = max(max(e.ks) for e in evaluators)
        _, top = exact_top_k(torch.cat(queries), self.product_vector_chunks(), depth)
        bounds = np.cumsum([0, *(len(q) for q in queries)])
        return [e.score_top(top[lo:hi]) for e, lo, hi in zip(evaluators, bounds, bounds[1:])]


@dataclass
class LearningRateSchedule:
    """Linear warmup over ``stage.warmup`` of the stage's steps, then constant or cosine
    decay to 0; derived from (epoch, step), so a resumed stage continues the same curve."""

    stage: StageConfig
    epoch: int
    steps_per_epoch: int

    @property
    def grad_clip(self) -> float:
        return self.stage.grad_clip

    def factor(self, step: int) -> float:
        total = max(1, self.stage.epochs * self.steps_per_epoch)
        done = self.epoch * self.steps_per_epoch + step
        warmup = int(self.stage.warmup * total)
        if done < warmup:
            return (done + 1) / (warmup + 1)
        if self.stage.schedule == "cosine":
            progress = (done - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor


def _resolved(path: Path | None) -> str | None:
    return str(path.resolve()) if path is not None else None


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(catalog: Catalog, config: RunConfig, work_dir: str | Path, progress: bool = True,
          stage1_from: str | Path | None = None,
          late_branch_from: str | Path | None = None) -> TrainResult:
    """Train both stages (or stage 2 only, from ``stage1_from``); save to ``work_dir/model``.
    ``late_branch_from``: see ``Trainer``."""
    with photos_named_by_product(catalog.products):
        return Trainer(catalog, config, work_dir, progress, stage1_from,
                       late_branch_from).run()


def train_stage1(catalog: Catalog, config: RunConfig, work_dir: str | Path,
                 progress: bool = True) -> TrainResult:
    """Stage 1 alone of ``config``'s model, saved to ``work_dir/model`` for a later
    ``train(..., stage1_from=that directory)`` (the DAG runs the stages as two tasks)."""
    with photos_named_by_product(catalog.products):
        trainer = Trainer(catalog, config, work_dir, progress)
        trainer.prepare()
        trainer.run_stage1()
        return trainer.finish()


__all__ = ["RetrievalData", "TrainResult", "Trainer", "train", "train_stage1"]
