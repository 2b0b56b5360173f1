"""``fusion-model`` command line: one sub-command per platform step."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from fusion_model.data.splits import SCORED_SPLITS, SPLITS
from fusion_model.errors import FusionModelError, explain

log = logging.getLogger("fusion_model.cli")


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from fusion_model.data.catalog import load_catalog
    from fusion_model.data.synthetic import generate_synthetic_catalog

    root = generate_synthetic_catalog(args.out, n_products=args.products,
                                      n_queries=args.queries, seed=args.seed, fmt=args.format,
                                      judged_per_query=args.judged_per_query,
                                      image_size=args.image_size)
    _print_summary(load_catalog(root), fingerprint=True)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    """``catalog myntra|ikea|flipkart``: one real sample into the catalog format."""
    import importlib

    from fusion_model.data.catalog import load_catalog

    module = importlib.import_module(f"fusion_model.data.{args.action}")
    importer = getattr(module, f"import_{args.action}")
    root = importer(args.source, args.out, args.sparse_titles, args.queries, args.seed,
                    args.copy_images)
    _print_summary(load_catalog(root), fingerprint=True)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from fusion_model.data.catalog import load_catalog

    catalog = load_catalog(args.catalog)
    if args.json:
        summary = catalog.summary()
        summary["fingerprint"] = catalog.fingerprint
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(catalog, fingerprint=True)
    return 0


def _cmd_copy(args: argparse.Namespace) -> int:
    from fusion_model.storage import copy_tree

    count = copy_tree(args.src, args.dst)
    print(f"copied {count} files from {args.src} to {args.dst}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fusion_model.checks import load_checked_config
    from fusion_model.data.catalog import load_catalog
    from fusion_model.training.trainer import train

    config = load_checked_config(args.config, args.overrides)
    catalog = load_catalog(args.catalog)
    result = train(catalog, config, args.out)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    resolved = config.for_catalog(catalog.max_grade)
    print(f"relevance: training positives grade >= {resolved.train.min_positive_grade}, "
          f"evaluation relevant grade >= {resolved.eval.min_relevant_grade} "
          f"(catalog's highest grade: {catalog.max_grade})")
    _print_metrics(f"{config.model.fusion} (test)", result.test)
    print(f"model saved to {result.model_dir}")
    if args.output:
        _write_json(args.output, {"model_dir": result.model_dir, "test": result.test.metrics,
                                  "val": result.val.metrics, "segments": result.test.segments,
                                  "history": result.history, "seconds": result.seconds})
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fusion_model.data.catalog import load_catalog
    from fusion_model.inference import evaluate_model
    from fusion_model.models.towers import load_model

    result = evaluate_model(load_model(args.model), load_catalog(args.catalog), args.split,
                            cache_dir=args.cache_dir)
    _print_metrics(f"{args.model} ({args.split})", result)
    if args.output:
        _write_json(args.output, {"metrics": result.metrics, "segments": result.segments})
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from fusion_model.data.catalog import load_catalog
    from fusion_model.inference import embed_catalog, write_vectors
    from fusion_model.models.towers import load_model

    catalog = load_catalog(args.catalog)
    vectors = embed_catalog(load_model(args.model), catalog, cache_dir=args.cache_dir)
    write_vectors(args.out, catalog.products["product_id"].tolist(), vectors)
    print(f"wrote {len(vectors):,} vectors of dimension {vectors.shape[1]} to {args.out}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from fusion_model.benchmark import run_benchmark, run_learning_curves

    models = tuple(args.models.split(",")) if args.models else None
    kwargs = {"models": models} if models else {}
    options = {"config_name": args.config, "overrides": tuple(args.overrides),
               "work_dir": args.work_dir, "seeds": args.seeds, "split": args.split, **kwargs}
    if len(args.catalog) == 1 and args.train_queries is None:
        run_benchmark(args.catalog[0], args.output, **options)
    else:
        run_learning_curves(args.catalog, args.train_queries or [None], args.output,
                            **options)
    return 0


def _train_query_counts(text: str) -> list[int | None]:
    """"150,300,all" -> [150, 300, None]."""
    counts = [None if part.strip() == "all" else _positive_int(part.strip())
              for part in text.split(",") if part.strip()]
    if not counts:
        raise argparse.ArgumentTypeError("give numbers of train queries, e.g. 150,300,all")
    return counts


def _cmd_validate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fusion_model.validation import ValidationSettings, validate_catalog
    from fusion_model.validation.suites import Limits

    settings = ValidationSettings(limits=replace(
        Limits(), max_missing_image_share=args.max_missing_image_share))
    report = validate_catalog(args.catalog, args.report_dir, profile_uri=args.profile,
                              settings=settings, raise_on_failure=False)
    counts = f"{len(report.checks)} checks, {len(report.failures)} failed, {report.seconds:.1f}s"
    if report.success:
        print(f"PASSED {report.catalog} ({counts})")
    else:
        print(f"FAILED {report.catalog} ({counts})\n{report.describe(limit=50)}")
    print(f"report: {report.summary_uri}\ndata docs: {report.data_docs_uri}")
    if report.profile_saved:
        print(f"saved as the last good profile: {args.profile}")
    return 0 if report.success else 1


def _cmd_search(args: argparse.Namespace) -> int:
    from fusion_model.pipelines import steps

    hits = steps.search(args.query, k=args.k, filter_expr=args.filter or "",
                        config_name=args.config, overrides=args.overrides)
    for rank, hit in enumerate(hits, start=1):
        print(format_hit(rank, hit))
    if not hits:
        print("no products matched" + (" the filter" if args.filter else ""))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """The token comes from the environment, never the command line (ps shows that)."""
    from fusion_model.checks import load_checked_config
    from fusion_model.serving.app import TOKEN_ENV, check_token, serve

    token = os.environ.get(TOKEN_ENV) or None
    check_token(token)  # before seconds of loading
    _check_serve_lists(args.allowed_host, args.image_root)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        logging.getLogger(__name__).warning(
            "serving on %s without a bearer token: anyone who reaches it can search; "
            "set %s", args.host, TOKEN_ENV)
    config = load_checked_config(args.config, list(args.overrides))
    serve(config, args.host, args.port,
          args.follow_interval, token, access_log=not args.no_access_log,
          query_cache=args.query_cache, max_batch=args.max_batch,
          encoder_streams=args.encoder_streams, allowed_hosts=tuple(args.allowed_host),
          image_roots=tuple(args.image_root), events=_event_settings(args, config),
          interleave=_interleave_share(args, config), explore=args.explore,
          explore_depth=args.explore_depth)
    return 0


def _event_settings(args: argparse.Namespace, config):
    """Where ``serve --events`` (or the config's ``feedback.events``) records searches and
    interactions (None: off)."""
    root = args.events or config.feedback.events
    if not root:
        return None
    from fusion_model.feedback.events import EventSettings

    return EventSettings(root, retention_days=args.events_retention_days
                         or config.feedback.retention_days)


def _interleave_share(args: argparse.Namespace, config) -> float:
    """``--interleave``, else ``feedback.share`` when the online stage is on, else 0."""
    if args.interleave is not None:
        if not 0 <= args.interleave <= 1:
            from fusion_model.errors import BadInputError

            raise BadInputError(f"--interleave {args.interleave}: a share of searches in "
                                "[0, 1]")
        return args.interleave
    return config.feedback.share if config.feedback.online else 0.0


def _check_serve_lists(hosts: list[str], roots: list[str]) -> None:
    """An empty --allowed-host, or a local --image-root that is not a folder, is a named
    error (either would be accepted and do nothing, or allow a Host-less request)."""
    from fusion_model import storage
    from fusion_model.errors import BadInputError

    if any(not host.strip() for host in hosts):
        raise BadInputError("--allowed-host needs a name (e.g. shop.example); '*' allows any")
    for root in roots:
        if not storage.is_uri(root) and not os.path.isdir(root):
            raise BadInputError(f"--image-root {root}: not a folder on this machine (give "
                                "an existing folder or an s3:// prefix)")


def format_hit(rank: int, hit: dict) -> str:
    """Two lines per hit: rank, id, score and title; then attributes and the photo."""
    shown = ("product_id", "score", "title", "image_uri", "photo_weight")
    attributes = "  ".join(f"{k}={printable(v)}" for k, v in hit.items() if k not in shown)
    photo = f"photo: {printable(hit['image_uri'])}" if hit.get("image_uri") else "no photo"
    if hit.get("photo_weight"):
        photo += f" (photo weight {printable(hit['photo_weight'])[:8]})"
    return (f"{rank:>3}. {printable(hit['product_id']):<16} {hit['score']:.4f}  "
            f"{printable(hit.get('title', ''))}\n"
            f"     {attributes}{'  ' if attributes else ''}{photo}")


def printable(value: object) -> str:
    """Catalog text for a terminal: control characters (escape sequences that could
    rewrite the screen, carriage returns) shown as ``\\xNN`` instead of sent."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _cmd_lifecycle(args: argparse.Namespace) -> int:
    """validate -> train -> register -> index -> gate -> promote/reject, without Airflow."""
    from pathlib import Path

    from fusion_model.checks import load_checked_config
    from fusion_model.pipelines import steps
    from fusion_model.pipelines.switch import registry_lock

    with registry_lock(load_checked_config(args.config, list(args.overrides))):
        return _lifecycle(args, steps, Path(args.work_dir))


def _lifecycle(args: argparse.Namespace, steps, work) -> int:
    overrides = args.overrides
    report = steps.validate(args.catalog, str(work / "validation"), args.profile)
    steps.train(args.catalog, str(work / "train"), args.config, overrides)
    registered = steps.register(str(work / "train"), args.catalog, args.config, overrides,
                                validation_report=report["report"])
    steps.index(registered["version"], args.catalog, args.config, overrides)
    decision = steps.gate(registered["version"], args.catalog, args.config, overrides,
                          force_promote=args.force_promote)
    outcome = steps.promote_or_reject(registered["version"], decision, args.config, overrides)
    print(f"version {registered['version']}: {decision['decision'].upper()} "
          f"vs {decision['baseline']}")
    for reason in decision["reasons"]:
        print(f"  - {reason}")
    if outcome["promoted"]:
        print(f"serving alias -> {outcome['collection']}")
    elif outcome.get("interleaving"):
        print(f"v{registered['version']} is the `candidate`: interleaved with the champion "
              "until shoppers decide (`fusion-model feedback decide`)")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from fusion_model.pipelines import steps

    result = steps.rollback(args.version, args.config, args.overrides, args.reason)
    print(f"champion -> version {result['version']}; serving alias -> {result['collection']} "
          f"(was {result['previous_collection']})")
    return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    from fusion_model.pipelines import steps

    result = steps.refresh(args.catalog, args.config, args.overrides,
                           allow_deletions=args.allow_deletions, report_dir=args.report_dir)
    print(f"{result['collection']}: {result['written']} embedded, {result['deleted']} "
          f"deleted, {result['unchanged']} unchanged, {result['count']} products")
    if result["collection"] != result["previous_collection"]:
        print(f"serving alias -> {result['collection']} (was {result['previous_collection']}, "
              "kept for rollback)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Champion, challenger, serving alias, orphaned collections and the last decisions."""
    from fusion_model.pipelines import steps

    found = steps.status(args.config, args.overrides, args.last)
    for alias, version in found["aliases"].items():
        print(f"{alias:<11} {found['model']} v{version.version}" if version
              else f"{alias:<11} -")
    print(f"serving     {found['alias']} -> {found['serving'] or '- (no collection yet)'}")
    if found.get("online"):
        print(f"online      {found['online']}")
    for problem in found["problems"]:
        print(f"PROBLEM     {problem}")
    for orphan in found["orphans"]:
        print(f"orphaned    {orphan}: on no version and not served (an index job that "
              "crashed or still runs; rerunning it resumes this collection)")
    for entry in found["history"]:
        print(f"{entry['time']}  v{entry['version']}  {entry['decision'].upper()}"
              f"{' (forced)' if entry.get('forced') else ''}")
        for reason in entry.get("reasons", []):
            print(f"    - {reason}")
    return 1 if found["problems"] else 0


def _cmd_feedback_interleaving(args: argparse.Namespace) -> int:
    """Shoppers' preference between the champion and an interleaved version."""
    from fusion_model.checks import load_checked_config
    from fusion_model.errors import BadInputError
    from fusion_model.feedback.online import describe, online_preference

    config = load_checked_config(args.config, list(args.overrides))
    root = args.events or config.feedback.events
    version = args.version
    if not version:
        from fusion_model.registry.connection import configure
        from fusion_model.registry.registry import CANDIDATE, get_alias

        configure(config.registry.resolved_tracking_uri())
        found = get_alias(config.registry.model_name, CANDIDATE)
        if found is None:
            raise BadInputError("no `candidate` is being interleaved; name one with --version")
        version = found.version
    if not root:
        raise BadInputError("give --events or set feedback.events")
    found = online_preference(root, version)
    print(f"v{version} vs the champion: {describe(found)}")
    verdict = found.prefers(config.feedback.alpha)
    print("verdict: " + ("candidate preferred" if verdict == "B" else "champion preferred"
                         if verdict == "A" else "no significant preference yet"))
    return 0


def _cmd_feedback_decide(args: argparse.Namespace) -> int:
    from fusion_model.pipelines import steps

    outcome = steps.decide_online(args.config, args.overrides)
    print(f"{outcome['state']}" + (f" v{outcome['version']}" if "version" in outcome else "")
          + f": {outcome['reason']}")
    return 0


def _cmd_feedback_build(args: argparse.Namespace) -> int:
    from fusion_model.pipelines import steps

    summary = steps.build_feedback(args.catalog, args.out, args.config, args.overrides,
                                   args.events, args.since, args.keep_labels)
    print(f"{summary['catalog']}: {summary['queries_judged']} queries judged from "
          f"{summary['searches']} searches ({summary['queries_too_rare']} too rare, "
          f"{summary['queries_held_out']} are val/test queries, {summary['new_queries']} new); "
          f"pairs per grade {summary['pairs']}"
          + (f", {summary['pooled_pairs']} of them pooled from refinements"
             if summary["pooled_pairs"] else ""))
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    """Finish (or undo) an interrupted promotion, rollback or refresh."""
    from fusion_model.pipelines import steps

    outcome = steps.recover(args.config, args.overrides)
    if outcome is None:
        print("nothing to recover: no interrupted switch")
    elif "finished" in outcome:
        print(f"finished the interrupted switch: champion v{outcome['version']}, serving "
              f"alias -> {outcome['collection']}")
    else:
        print(f"undid the interrupted switch to v{outcome['version']}: {outcome['detail']}")
    return 0


def _print_metrics(title: str, result) -> None:
    shown = ("recall@10", "recall@100", "ndcg@10", "mrr")
    print(title)
    print("  " + "  ".join(f"{m}={result.metrics[m]:.4f}" for m in shown))
    for name, segment in result.segments.items():
        print(f"  segment {name} ({int(segment['queries'])} queries): "
              + "  ".join(f"{m}={segment[m]:.4f}" for m in shown))


def _write_json(path: str, payload: dict) -> None:
    from pathlib import Path

    Path(path).write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {path}")


def _print_summary(catalog, fingerprint: bool) -> None:
    summary = catalog.summary()
    lines = [
        f"catalog      {summary['uri']}",
        f"products     {summary['products']:,} ({summary['products_with_image']:,} with a photo)",
        f"attributes   {', '.join(summary['attribute_columns']) or '-'}",
        "queries      " + ", ".join(f"{k} {v:,}" for k, v in summary["queries"].items()),
        "judgments    " + ", ".join(f"grade {k}: {v:,}" for k, v in summary["judgments"].items()
                                    if k > 0),
        f"relevant/q   {summary['relevant_per_query_median']:g} (median)",
    ]
    if fingerprint:
        lines.append(f"fingerprint  {catalog.fingerprint}")
    examples = catalog.products.head(3)
    lines.append("examples")
    lines += [f"  {r.product_id}: {r.title!r}" for r in examples.itertuples()]
    lines += [f"  query {r.query_id} ({r.split}): {r.text!r}"
              for r in catalog.queries.head(3).itertuples()]
    print("\n".join(lines))


def _number(text: str, kind: type, what: str, minimum: float) -> float:
    """``text`` as a finite ``kind`` of at least ``minimum``, or an argparse error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, "a whole number", 1)


def _non_negative_int(text: str) -> int:
    return _number(text, int, "a whole number", 0)


def _interval(text: str) -> float:
    """Seconds, finite and >= 0 (``nan`` compared false everywhere and stopped following)."""
    return _number(text, float, "a number of seconds", 0)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {value}")
    return value


# name, sample, source layout, what --sparse-titles strips (fusion_model/data/<name>.py)
IMPORTERS = (
    ("myntra", "Myntra fashion", "styles.csv and images/", "colour and pattern words from titles"),
    ("ikea", "IKEA interior (furniture and home)", "products.json and images/",
     "colour words from titles and descriptions"),
    ("flipkart", "Flipkart seven-vertical", "products.csv and images/",
     "colour words from names and descriptions"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion-model", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    catalog = steps.add_parser("catalog", help="build, import, inspect and copy catalogs")
    actions = catalog.add_subparsers(dest="action", required=True, metavar="ACTION")

    synthetic = actions.add_parser("synthetic", help="generate a synthetic catalog with photos")
    synthetic.add_argument("--products", type=_positive_int, default=2000,
                           help="number of products")
    synthetic.add_argument("--queries", type=int, default=None,
                           help="number of queries (default: products / 5, at least 30)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--judged-per-query", type=_positive_int, default=None,
                           help="judge at most this many products per query (a seeded "
                                "sample; default: every matching product)")
    synthetic.add_argument("--image-size", type=_positive_int, default=224,
                           help="photo side in pixels (small photos generate faster)")
    synthetic.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    synthetic.add_argument("--out", required=True, help="output directory or s3:// prefix")
    synthetic.set_defaults(func=_cmd_synthetic)

    for name, what, layout, stripped in IMPORTERS:
        importer = actions.add_parser(name, help=f"import the {what} sample")
        importer.add_argument("--source", required=True, help=f"folder with {layout}")
        importer.add_argument("--out", required=True, help="output directory or s3:// prefix")
        importer.add_argument("--sparse-titles", type=float, default=0.0, metavar="FRACTION",
                              help=f"strip {stripped} from this fraction of products, so "
                                   "that only the photo shows them")
        importer.add_argument("--queries", type=int, default=2000,
                              help="at most this many queries")
        importer.add_argument("--seed", type=int, default=0)
        importer.add_argument("--copy-images", action="store_true",
                              help="copy photos into the catalog (default: reference them "
                                   "in place)")
        importer.set_defaults(func=_cmd_import)

    show = actions.add_parser("show", help="load a catalog, check it, print its summary")
    show.add_argument("catalog", help="catalog directory or s3:// prefix")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.set_defaults(func=_cmd_show)

    copy = actions.add_parser("copy", help="copy a catalog between local disk and S3")
    copy.add_argument("src")
    copy.add_argument("dst")
    copy.set_defaults(func=_cmd_copy)

    train = steps.add_parser("train", help="two-stage training on a catalog")
    train.add_argument("--catalog", required=True, help="catalog directory or s3:// prefix")
    train.add_argument("--config", default="default",
                       help="packaged config name (default, fast) or a YAML path")
    train.add_argument("--out", default="runs/latest", help="work dir: checkpoints + model")
    train.add_argument("--output", help="write metrics and history to this JSON file")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. model.fusion=concat train.stage1.epochs=1")
    train.set_defaults(func=_cmd_train)

    evaluate = steps.add_parser("evaluate", help="evaluate a saved model on a catalog split")
    evaluate.add_argument("--model", required=True, help="model directory (from train)")
    evaluate.add_argument("--catalog", required=True)
    evaluate.add_argument("--split", choices=SPLITS, default="test")
    evaluate.add_argument("--cache-dir", help="reuse/extend the frozen-feature cache here")
    evaluate.add_argument("--output", help="write metrics to this JSON file")
    evaluate.set_defaults(func=_cmd_evaluate)

    embed = steps.add_parser("embed", help="embed every product of a catalog")
    embed.add_argument("--model", required=True)
    embed.add_argument("--catalog", required=True)
    embed.add_argument("--out", required=True, help="parquet file: product_id, vector")
    embed.add_argument("--cache-dir", help="reuse/extend the frozen-feature cache here")
    embed.set_defaults(func=_cmd_embed)

    validate = steps.add_parser("validate", help="data-quality checks of a catalog snapshot")
    validate.add_argument("--catalog", required=True)
    validate.add_argument("--report-dir", default="runs/validation",
                          help="where validation.json and the Data Docs HTML go")
    validate.add_argument("--profile", help="last-good profile file (local or s3://): "
                          "drift is checked against it and it is updated when all checks pass")
    validate.add_argument("--max-missing-image-share", type=float, default=0.1,
                          help="largest share of products without a usable photo")
    validate.set_defaults(func=_cmd_validate)

    search = steps.add_parser("search", help="search the serving index with the champion")
    search.add_argument("query")
    search.add_argument("-k", type=_positive_int, default=10, help="number of hits")
    search.add_argument("--filter", help="attribute conditions joined by and/or, e.g. "
                        "'gender == Women and colour in [red, \"navy blue\"]'")
    search.add_argument("--config", default="default")
    search.add_argument("overrides", nargs="*", metavar="key=value")
    search.set_defaults(func=_cmd_search)

    serve = steps.add_parser("serve", help="serve search over HTTP (JSON API, review page at "
                             "/, /metrics) with the champion, following promotions")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to bind (default loopback only; 0.0.0.0 for all)")
    serve.add_argument("--port", type=_port, default=8080)
    serve.add_argument("--follow-interval", type=_interval, default=5.0,
                       help="seconds between checks for a new champion (0: never)")
    serve.add_argument("--no-access-log", action="store_true", help="no line per request")
    serve.add_argument("--query-cache", type=_non_negative_int, default=10_000, metavar="N",
                       help="keep the vectors of the last N distinct queries per query "
                            "encoder (default 10000; 0: encode every query)")
    serve.add_argument("--max-batch", type=_positive_int, default=32, metavar="N",
                       help="merge up to N concurrent searches (same k, filter and model) "
                            "into one encoder pass and one index call; two such calls run "
                            "at a time (default 32; 1: every search alone, for comparison)")
    serve.add_argument("--encoder-streams", type=_positive_int, default=2, metavar="N",
                       help="query-encoder runs at once, the cores shared out between them "
                            "(OpenVINO streams; default 2: 22-32%% less CPU per search and "
                            "a 23%% lower p50 at 200 requests/s on 2 cores, the same p50 at "
                            "100/s; 1: each run uses every core, a lone query ~0.4 ms "
                            "faster; docs/serving.md)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host header value to answer besides localhost and --host "
                            "(repeat for several; '*' for any: only behind a proxy that "
                            "checks it). Other hosts get 400: a DNS-rebinding page cannot "
                            "read the API")
    serve.add_argument("--image-root", action="append", default=[], metavar="DIR_OR_S3",
                       help="a folder or s3:// prefix photos may be served from besides "
                            "the roots recorded on each version (repeatable)")
    serve.add_argument("--events", default="", metavar="DIR_OR_S3",
                       help="record every served search and the POST /events interactions "
                            "(click, cart, purchase) under this folder or s3:// prefix, "
                            "date-partitioned JSON Lines; session ids only as salted hashes "
                            "($FUSION_EVENTS_SALT); default: the config's feedback.events")
    serve.add_argument("--events-retention-days", type=_positive_int, default=None,
                       metavar="N", help="delete event partitions older than N days "
                                         "(feedback.retention_days, 90)")
    serve.add_argument("--interleave", type=float, default=None, metavar="SHARE",
                       help="interleave the registry's `candidate` with the champion on this "
                            "share of searches (team draft; needs --events); default: "
                            "feedback.share when feedback.online is on, else 0")
    serve.add_argument("--explore", type=float, default=0.0, metavar="SHARE",
                       help="show this share of recorded searches' results in a random "
                            "order: the randomised traffic that separates a rank's "
                            "visibility from its relevance in `feedback build` (e.g. 0.05)")
    serve.add_argument("--explore-depth", type=int, default=0, metavar="N",
                       help="an explored search shows its page drawn at random from the top "
                            "N (default 0: the page itself); deeper pages let the logs judge "
                            "products ranked just below the page (e.g. 40 for 20 per page)")
    serve.add_argument("--config", default="default")
    serve.add_argument("overrides", nargs="*", metavar="key=value")
    serve.set_defaults(func=_cmd_serve)

    recover = steps.add_parser("recover", help="finish an interrupted promotion, rollback "
                               "or refresh (status names one when there is)")
    recover.add_argument("--config", default="default")
    recover.add_argument("overrides", nargs="*", metavar="key=value")
    recover.set_defaults(func=_cmd_recover)

    lifecycle = steps.add_parser("lifecycle", help="validate, train, register, index, gate "
                                 "and promote in one go (what the training DAG runs)")
    lifecycle.add_argument("--catalog", required=True)
    lifecycle.add_argument("--config", default="default")
    lifecycle.add_argument("--work-dir", default="runs/lifecycle")
    lifecycle.add_argument("--profile", help="last-good profile for drift checks")
    lifecycle.add_argument("--force-promote", action="store_true")
    lifecycle.add_argument("overrides", nargs="*", metavar="key=value")
    lifecycle.set_defaults(func=_cmd_lifecycle)

    rollback = steps.add_parser("rollback", help="make an earlier version champion again")
    rollback.add_argument("version")
    rollback.add_argument("--reason", default="manual rollback")
    rollback.add_argument("--config", default="default")
    rollback.add_argument("overrides", nargs="*", metavar="key=value")
    rollback.set_defaults(func=_cmd_rollback)

    feedback = steps.add_parser("feedback", help="learn from search traffic: the online "
                                                 "comparison and judgments from clicks")
    feedback_actions = feedback.add_subparsers(dest="action", required=True, metavar="ACTION")
    interleaving = feedback_actions.add_parser(
        "interleaving", help="shoppers' preference between the champion and the candidate")
    interleaving.add_argument("--events", default="", metavar="DIR_OR_S3",
                              help="the service's --events (default: feedback.events)")
    interleaving.add_argument("--version", default="",
                              help="the interleaved version (default: the `candidate` alias)")
    decide = feedback_actions.add_parser(
        "decide", help="promote the candidate when shoppers prefer it, withdraw it when they "
                       "prefer the champion (feedback.online)")
    build = feedback_actions.add_parser(
        "build", help="a catalog snapshot whose training judgments come from the clicks, "
                      "corrected for position bias")
    build.add_argument("--catalog", required=True, help="the snapshot whose products, "
                                                        "val and test queries are kept")
    build.add_argument("--out", required=True, help="where the new snapshot is written")
    build.add_argument("--events", default="", metavar="DIR_OR_S3",
                       help="the recorded searches (default: feedback.events)")
    build.add_argument("--since", default=None, metavar="YYYY-MM-DD",
                       help="only events from this date on")
    build.add_argument("--keep-labels", action="store_true",
                       help="keep the catalog's own train judgments where the logs say nothing")
    for action, func in ((interleaving, _cmd_feedback_interleaving),
                         (decide, _cmd_feedback_decide), (build, _cmd_feedback_build)):
        action.add_argument("--config", default="default")
        action.add_argument("overrides", nargs="*", metavar="key=value")
        action.set_defaults(func=func)

    refresh = steps.add_parser("refresh", help="validate a new catalog snapshot, re-embed what "
                               "changed into a new collection with the champion, verify it "
                               "and move the serving alias")
    refresh.add_argument("--catalog", required=True)
    refresh.add_argument("--config", default="default")
    refresh.add_argument("--allow-deletions", action="store_true",
                         help="accept a snapshot that drops more than index.max_delete_share "
                         "of the serving products")
    refresh.add_argument("--report-dir", help="validation report folder (default: under "
                         "train.cache_dir)")
    refresh.add_argument("overrides", nargs="*", metavar="key=value")
    refresh.set_defaults(func=_cmd_refresh)

    status = steps.add_parser("status", help="champion, challenger, serving alias, decisions")
    status.add_argument("--last", type=_positive_int, default=5, help="how many decisions to show")
    status.add_argument("--config", default="default")
    status.add_argument("overrides", nargs="*", metavar="key=value")
    status.set_defaults(func=_cmd_status)

    bench = steps.add_parser("benchmark", help="train and compare every model on a catalog")
    bench.add_argument("--catalog", required=True, action="append",
                       help="a catalog; repeat for several (one table over all of them)")
    bench.add_argument("--train-queries", type=_train_query_counts, metavar="N,N,all",
                       help="learning curve: train on a seeded sample of N train queries "
                            "per seed, for each N (all: every train query)")
    bench.add_argument("--output", default="results.json", help="results JSON file")
    bench.add_argument("--models", help="comma-separated models; `core` is the core ladder "
                       "(the default), e.g. core,fusion_no_ft")
    bench.add_argument("--seeds", type=_positive_int, default=1,
                       help="train every model with this many seeds; report means and spread")
    bench.add_argument("--split", choices=SCORED_SPLITS, default="test",
                       help="queries to score: val to choose a recipe, test to report it "
                       "(default)")
    bench.add_argument("--config", default="default")
    bench.add_argument("--work-dir", default="runs/benchmark")
    bench.add_argument("overrides", nargs="*", metavar="key=value")
    bench.set_defaults(func=_cmd_benchmark)
    return parser


# Libraries' own start-up chatter: faiss (in Milvus Lite) logs a ModuleNotFoundError for
# every CPU flavour it does not find, Milvus Lite a line per server start and stop, Great
# Expectations some 200 "Skipping registering function" lines per import. A person sees
# our INFO lines and everybody's warnings; -v shows everything. A filter on the handlers,
# not logger levels: some libraries set their loggers' levels themselves when imported.
OUR_LOGGERS = ("fusion_model", "__main__")


class OursOrWarnings(logging.Filter):
    """Passes fusion_model's records and other loggers' warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or \
            record.name.partition(".")[0] in OUR_LOGGERS


OURS_OR_WARNINGS = OursOrWarnings()


def quiet_library_loggers() -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(OURS_OR_WARNINGS)  # once: addFilter skips one already there
    # gRPC's C core writes its INFO lines straight to stderr, e.g. "fork_posix.cc:71]
    # Other threads are currently calling into gRPC, skipping fork() handlers" when
    # anything forks beside a gRPC channel (OpenVINO's telemetry did, at every import);
    # it reads the level once, when gRPC is first imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow options: `search "q" -k 5 index.uri=...`
        if not hasattr(args, "overrides") or not all("=" in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_library_loggers()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's one error boundary
        return _report_failure(exc, args.verbose)


def _report_failure(exc: Exception, verbose: bool) -> int:
    """Print a one-line named error (the traceback too with -v); exit status 2."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = explain(exc)
    hint = ("" if verbose or isinstance(exc, FusionModelError)
            else " (`fusion-model -v ...` shows the traceback)")
    print(f"error: {message}{hint}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
