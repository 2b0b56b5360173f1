"""Names in a config, checked by the registries that own them.

The config checks shapes, types and ranges and imports nothing of the library
(``fusion_model.config``); whether ``model.fusion`` names a product head, ``index.backend``
a backend that builds ``index.index_type`` with ``index.metric``, ``runtime.engine`` an
engine, and whether each ``eval.segments`` rule parses is for the heads, the index
backends, the engines and the evaluator to say. ``load_checked_config`` is what the CLI,
the pipeline steps and the benchmark load: a bad name fails at start, with the choices, as
a ``ConfigError``.
"""

from __future__ import annotations

from fusion_model.config import ConfigError, RunConfig, load_config


def check_names(config: RunConfig) -> RunConfig:
    """``config`` when every registered name in it is known; else ConfigError."""
    from fusion_model.engines import check_engine_name
    from fusion_model.evaluation.evaluator import SegmentRule
    from fusion_model.index.base import check_index_config
    from fusion_model.models.heads import HEADS

    if config.model.fusion not in HEADS:
        raise ConfigError(f"model.fusion={config.model.fusion!r}: choose one of "
                          f"{', '.join(HEADS)}")
    check_index_config(config.index)
    check_engine_name(config.runtime.engine)
    for spec in config.eval.segments:
        try:
            SegmentRule.parse(spec)
        except ValueError as exc:
            raise ConfigError(f"eval.segments: {exc}") from exc
    return config


def load_checked_config(name_or_path: str = "default", overrides: list[str] | tuple = ()
                        ) -> RunConfig:
    """``load_config`` plus ``check_names``."""
    return check_names(load_config(name_or_path, list(overrides)))
