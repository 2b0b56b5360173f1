"""Learning from shoppers, by simulation on a catalog with graded judgments (Myntra).

    python benchmarks/feedback_sim.py --catalog myntra_s05 --work-dir runs/feedback_sim \
        [--sizes 10000,50000,200000] [--explore 0.1] [--experiments 400]

Part (b), judgments from logs: the shop's search starts as the zero-shot text model
(MiniLM, mean pooled); with ``--rounds N`` the searches come in N equal rounds, each
served by the model trained on the clicks of the rounds before (the daily search_feedback
DAG, retraining and promotion, closed). Simulated shoppers (``feedback/simulator.py``:
rank r examined with probability 0.8^(r-1), clicks by the catalog's true grade with noise,
some purchases) issue the catalog's train queries with Zipf popularity (s=1);
``--explore`` of the searches show the top 10 in a random order (the randomised traffic
that identifies the position bias). Every search and click goes through the service's
event log (``EventLog``: JSON Lines files); ``fusion-model feedback build``'s functions
turn them into judgments, with the position-based click model (``em``) and without
(``none``: raw click-through); a text model (stage 1, the ``default`` recipe) is trained
on each snapshot and on the true train judgments, and scored on the true test judgments
(nDCG@10, bootstrap CI over queries).

Part (a), interleaving: for a pair of those real models whose test nDCG@10 differ by about
0.02, ``--experiments`` simulated experiments per number of searches (test queries drawn
uniformly; team draft of both top 10s; clicks by true grade) say how many interleaved
searches detect the better model at 95% confidence (sign test), and A/A experiments (a
model against itself) give the false-preference rate at that number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusion_model.benchmark import zero_shot_rankings  # noqa: E402
from fusion_model.config import FeedbackConfig, load_config  # noqa: E402
from fusion_model.data.catalog import Catalog, load_catalog, query_key  # noqa: E402
from fusion_model.evaluation.bootstrap import (  # noqa: E402
    bootstrap_mean,
    paired_bootstrap_difference,
)
from fusion_model.feedback.events import EventLog, EventSettings  # noqa: E402
from fusion_model.feedback.interleaving import (  # noqa: E402
    preference,
    team_draft,
    winner,
)
from fusion_model.feedback.judgments import (  # noqa: E402
    BuiltJudgments,
    attractiveness,
    build_judgments,
    judged_snapshot,
    pooled_refinements,
    read_click_log,
)
from fusion_model.feedback.simulator import Shopper, simulate_interactions  # noqa: E402

log = logging.getLogger("feedback_sim")
SHOWN = 10
FLUSH_EVERY = 5000  # simulated searches between writes of the event log


def zipf_weights(n: int, s: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return weights / weights.sum()


def simulate_traffic(root: str, rankings: dict[str, list[str]], texts: dict[str, str],
                     grades: dict[str, dict[str, int]], searches: int, explore: float,
                     seed: int, popularity_seed: int, explore_depth: int = SHOWN,
                     page_size: int = SHOWN,
                     evidence: dict[str, dict[str, float]] | None = None) -> None:
    """``searches`` searches of the train queries through the event log; which queries
    are popular is fixed by ``popularity_seed`` (the same in every round). An explored
    search shows ``page_size`` products drawn at random from the top ``explore_depth``, in
    a random order (``serve --explore`` shuffles the page alone: depth = page size); with
    ``evidence`` (query key -> product -> examinations logged so far), the ``page_size``
    products of the top ``explore_depth`` with the least evidence, in a random order."""
    rng = random.Random(seed)
    queries = sorted(rankings)
    random.Random(popularity_seed).shuffle(queries)   # popularity unrelated to id
    drawn = np.random.default_rng(seed).choice(len(queries), searches,
                                               p=zipf_weights(len(queries)))
    most_per_search = 1 + 2 * page_size  # the search, a click and a purchase per product
    events = EventLog(EventSettings(root, batch_size=20000,
                                    queue_size=FLUSH_EVERY * most_per_search), salt="simulation")
    shopper = Shopper()
    for done, index in enumerate(drawn):
        if done % FLUSH_EVERY == 0:
            events.flush()  # the service's writer thread drains the queue; here the loop does
        query = queries[index]
        shown = rankings[query][:page_size]
        if rng.random() < explore:
            pool = rankings[query][:max(explore_depth, page_size)]
            if evidence is not None:
                seen = evidence.get(query_key(texts[query]), {})
                pool = sorted(pool, key=lambda p: (seen.get(p, 0.0), rng.random()))
                pool = pool[:len(shown)]
            shown = rng.sample(pool, len(shown))
        search_id = events.search(texts[query], "champion", "0", "zero-shot", shown, None)
        for position, product, kind in simulate_interactions(shown, grades.get(query, {}),
                                                             shopper, rng):
            events.interaction({"search_id": search_id, "product_id": product, "kind": kind,
                                "position": position})
    events.flush()
    if events.dropped:
        raise RuntimeError(f"the simulated event log dropped {events.dropped} records")


def train_text_model(catalog_uri: str, work: Path, cache_dir: str, seed: int,
                     overrides: tuple[str, ...] = ()):
    """The default recipe's stage 1 (text tower) on a snapshot, with ``overrides``: its val
    and test results, model dir and seconds (a finished one is read back)."""
    from fusion_model.training.trainer import TrainResult, train

    saved = work / "result.json"
    if saved.exists():
        result = TrainResult.load(saved)
        return result.val, result.test, result.model_dir, result.seconds.get("total", 0.0)
    catalog = load_catalog(catalog_uri)
    config = load_config("default", [f"train.cache_dir={cache_dir}", "model.fusion=text_only",
                                     f"train.seed={seed}", *overrides]
                         ).for_catalog(catalog.max_grade)
    started = time.perf_counter()
    result = train(catalog, config, work, progress=False)
    seconds = time.perf_counter() - started
    result.seconds["total"] = seconds
    result.save(saved)
    return result.val, result.test, result.model_dir, seconds


def saved_rankings(model_dir: str, catalog: Catalog, split: str, cache_dir: str,
                   depth: int = SHOWN) -> dict[str, list[str]]:
    """Top ``depth`` per ``split`` query of a saved model, by exact search."""
    from fusion_model.evaluation.evaluator import rank
    from fusion_model.inference import embed_catalog, split_queries
    from fusion_model.models.towers import load_model

    model = load_model(model_dir)
    products = embed_catalog(model, catalog, cache_dir, progress=False)
    queries, evaluator = split_queries(model, catalog, split)
    return rank(queries, products, evaluator.query_ids, evaluator.product_ids, depth)


def interleaving_power(a: dict[str, list[str]], b: dict[str, list[str]],
                       grades: dict[str, dict[str, int]], sizes: list[int],
                       experiments: int, seed: int) -> dict[int, dict]:
    """Per number of searches: the share of experiments preferring B (p < 0.05), A, none."""
    rng = random.Random(seed)
    queries = sorted(set(a) & set(b))
    shopper = Shopper()
    found = {}
    for size in sizes:
        verdicts = []
        for _ in range(experiments):
            winners = []
            for _ in range(size):
                query = rng.choice(queries)
                shown, teams = team_draft(a[query][:SHOWN], b[query][:SHOWN], SHOWN, rng)
                clicked = [p for p, _, kind in simulate_interactions(
                    shown, grades.get(query, {}), shopper, rng) if kind == "click"]
                winners.append(winner(teams, clicked))
            verdicts.append(preference(winners).prefers())
        found[size] = {"B": verdicts.count("B") / experiments,
                       "A": verdicts.count("A") / experiments,
                       "experiments": experiments}
        log.info("%d searches: B preferred in %.1f%%, A in %.1f%%", size,
                 100 * found[size]["B"], 100 * found[size]["A"])
    return found


def part_b(args, catalog: Catalog, config, work: Path) -> dict:
    """Zero-shot, the true-judgment model, and per size, click model and number of rounds,
    the model trained on the judgments built from the simulated searches."""
    train_ids = set(catalog.queries_in("train")["query_id"])
    zero_val, _ = zero_shot_rankings(catalog, config, "val")
    zero_test, _ = zero_shot_rankings(catalog, config, "test")
    _, zero_train = zero_shot_rankings(catalog, config, "train")
    zero_train = {q: r for q, r in zero_train.items() if q in train_ids}
    rows = {"zero_shot": {"val": zero_val, "result": zero_test, "searches": 0}}
    models: dict[str, str] = {}
    val, test, model_dir, seconds = train_text_model(args.catalog, work / "true",
                                                     args.cache_dir, args.seed)
    rows["true_judgments"] = {"val": val, "result": test, "seconds": seconds}
    models["true_judgments"] = model_dir
    for size in args.sizes:
        for rounds in args.rounds:
            for bias in args.biases:
                name = f"{bias}_{size}" + (f"_{rounds}rounds" if rounds > 1 else "")
                rows[name], models[name] = closed_loop(args, catalog, zero_train, work, name,
                                                       size, rounds, bias)
                if "ceilings" in args.parts:
                    rows.update(ceilings(args, catalog, work, name))
    return {"rows": rows, "models": models}


def closed_loop(args, catalog: Catalog, first_ranker: dict[str, list[str]], work: Path,
                name: str, size: int, rounds: int, bias: str) -> tuple[dict, str]:
    """``size`` searches in ``rounds`` equal rounds: each round's searches are served by
    the model trained on every earlier round's clicks (the first by zero-shot), as the
    daily search_feedback DAG, retraining and promotion would have it."""
    texts = dict(zip(catalog.queries["query_id"], catalog.queries["text"]))
    grades = catalog.qrels(min_grade=1)
    ranker, root = first_ranker, str(work / f"events-{name}")
    for round_ in range(rounds):
        here = work / name / f"round{round_}"
        if not (here / "simulated").exists():
            started = time.perf_counter()
            evidence = logged_evidence(root, bias, args.page_size) \
                if args.explore_unjudged and round_ else None
            simulate_traffic(root, ranker, texts, grades, size // rounds, args.explore,
                             args.seed + size + 7919 * round_, args.seed + size + 1,
                             args.explore_depth, args.page_size, evidence)
            here.mkdir(parents=True, exist_ok=True)
            (here / "simulated").touch()
            log.info("%s round %d: %d searches simulated in %.0f s", name, round_,
                     size // rounds, time.perf_counter() - started)
        built = build_judgments(read_click_log(root, max_rank=args.page_size), bias,
                                args.min_searches, args.min_examinations,
                                pool_refinements=args.pool_refinements,
                                confidence=args.confidence)
        summary = judged_snapshot(catalog, built, str(here / "catalog"))
        val, test, model_dir, seconds = train_text_model(summary["catalog"], here / "model",
                                                         args.cache_dir, args.seed,
                                                         tuple(args.snapshot_override))
        log.info("%s round %d: val nDCG@10 %.4f, test %.4f (%d queries judged)", name,
                 round_, val.metrics["ndcg@10"], test.metrics["ndcg@10"],
                 summary["queries_judged"])
        if round_ + 1 < rounds:
            ranker = saved_rankings(model_dir, catalog, "train", args.cache_dir,
                                    max(args.page_size, args.explore_depth))
    return ({"val": val, "result": test, "seconds": seconds, "searches": size,
             "rounds": rounds, "queries_judged": summary["queries_judged"],
             "pairs": summary["pairs"], "theta": summary["theta"][:args.page_size]},
            model_dir)


def logged_evidence(root: str, bias: str, page_size: int) -> dict[str, dict[str, float]]:
    """Query key -> product -> examinations in the click log under ``root`` so far."""
    pairs, _ = attractiveness(read_click_log(root, max_rank=page_size), bias)
    evidence: dict[str, dict[str, float]] = {}
    for query, product, seen in pairs[["query", "product_id", "examinations"]].itertuples(
            index=False):
        evidence.setdefault(query, {})[product] = float(seen)
    return evidence


def with_true_grades(built: BuiltJudgments, catalog: Catalog) -> BuiltJudgments:
    """``built``'s pairs graded by the catalog's true judgments (0 where it has none): what
    a perfect click model would make of the same evidence."""
    ids = {query_key(t): q for q, t in zip(catalog.queries["query_id"], catalog.queries["text"])}
    truth = catalog.qrels(min_grade=1)
    judgments = built.judgments.assign(grade=[
        truth.get(ids.get(q, ""), {}).get(p, 0)
        for q, p in zip(built.judgments["query"], built.judgments["product_id"])])
    return dataclasses.replace(built, judgments=judgments)


def ceilings(args, catalog: Catalog, work: Path, name: str) -> dict:
    """Two bounds from ``name``'s logged traffic, each trained like the snapshots: the
    judged pairs with their true grades (the click model's grading error removed), and
    every pair ever shown with its true grade (no evidence floor: what the traffic could
    teach at best)."""
    log_ = read_click_log(str(work / f"events-{name}"), max_rank=args.page_size)
    bounds = {
        "same_pairs_true_grades": build_judgments(log_, args.biases[0], args.min_searches,
                                                  args.min_examinations,
                                                  confidence=args.confidence),
        "every_shown_pair_true_grades": build_judgments(log_, "none", 1, 0.0)}
    rows = {}
    for bound, built in bounds.items():
        here = work / f"ceiling-{name}" / bound
        graded = with_true_grades(built, catalog)
        if args.pool_refinements:   # lend the truly top-grade pairs of the refinements
            pooled = pooled_refinements(graded.judgments, set(log_.searches),
                                        catalog.max_grade)
            graded = dataclasses.replace(graded, judgments=pooled.assign(
                text=pooled["query"].map(log_.texts)))
        summary = judged_snapshot(catalog, graded, str(here / "catalog"))
        val, test, _, seconds = train_text_model(summary["catalog"], here / "model",
                                                 args.cache_dir, args.seed,
                                                 tuple(args.snapshot_override))
        rows[f"{name}: {bound}"] = {"val": val, "result": test, "seconds": seconds,
                                    "queries_judged": summary["queries_judged"],
                                    "pairs": summary["pairs"]}
        log.info("%s %s: val %.4f, test %.4f, pairs %s", name, bound,
                 val.metrics["ndcg@10"], test.metrics["ndcg@10"], summary["pairs"])
    return rows


def report_b(rows: dict) -> list[str]:
    zero = rows["zero_shot"]
    gains = {split: rows["true_judgments"][key].metrics["ndcg@10"]
             - zero[key].metrics["ndcg@10"] for split, key in (("val", "val"),
                                                                ("test", "result"))}
    lines = ["| judgments | searches | rounds | queries judged | val nDCG@10 (share of the "
             "true gain) | test nDCG@10 [95% CI] | test gain over zero-shot [95% CI] | "
             "share of the true test gain |", "|---|---|---|---|---|---|---|---|"]
    ids = sorted(zero["result"].per_query)
    for name, row in rows.items():
        result = row["result"]
        ci = bootstrap_mean(result.values("ndcg@10", ids))
        gain = paired_bootstrap_difference(result.values("ndcg@10", ids),
                                           zero["result"].values("ndcg@10", ids))
        val = row["val"].metrics["ndcg@10"]
        val_share = (val - zero["val"].metrics["ndcg@10"]) / gains["val"]
        lines.append(f"| {name} | {row.get('searches', '-')} | {row.get('rounds', '-')} | "
                     f"{row.get('queries_judged', '-')} | {val:.4f} ({val_share:.0%}) | "
                     f"{ci.mean:.4f} [{ci.low:.3f}, {ci.high:.3f}] | {gain.mean:+.4f} "
                     f"[{gain.low:+.3f}, {gain.high:+.3f}] | {gain.mean / gains['test']:.0%} |")
    return lines


def part_a(args, catalog: Catalog, found: dict, work: Path) -> list[str]:
    rows, models = found["rows"], found["models"]
    scores = {name: row["result"].metrics["ndcg@10"] for name, row in rows.items()
              if name in models and row.get("rounds", 1) == 1}
    pairs = [(abs(abs(scores[x] - scores[y]) - 0.02), x, y) for x in scores for y in scores
             if scores[x] < scores[y]]
    _, worse, better = min(pairs)
    a = saved_rankings(models[worse], catalog, "test", args.cache_dir)
    b = saved_rankings(models[better], catalog, "test", args.cache_dir)
    grades = catalog.qrels("test", min_grade=1)
    power = interleaving_power(a, b, grades, args.searches, args.experiments, args.seed)
    detected = [n for n, p in power.items() if p["B"] >= 0.8]
    at = detected[0] if detected else max(power)
    aa = interleaving_power(a, a, grades, [at], args.aa_experiments, args.seed + 1)[at]
    lines = [f"A = {worse} (test nDCG@10 {scores[worse]:.4f}), B = {better} "
             f"({scores[better]:.4f}): difference {scores[better] - scores[worse]:+.4f}",
             "", "| interleaved searches | B preferred (p < 0.05) | A preferred | "
             "experiments |", "|---|---|---|---|"]
    lines += [f"| {n} | {p['B']:.1%} | {p['A']:.1%} | {p['experiments']} |"
              for n, p in power.items()]
    lines += ["", f"A/A at {at} searches: a preference (either way, p < 0.05) in "
              f"{aa['A'] + aa['B']:.1%} of {aa['experiments']} experiments"]
    (work / "interleaving.json").write_text(json.dumps({"power": power, "aa": aa,
                                                        "pair": [worse, better]}, indent=2))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--work-dir", default="runs/feedback_sim")
    parser.add_argument("--cache-dir", default="~/.cache/fusion-model/features")
    parser.add_argument("--sizes", default="10000,50000,200000",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--rounds", default="1", type=lambda s: [int(x) for x in s.split(",")],
                        help="retraining rounds the searches are spread over (1: every "
                             "search served by zero-shot)")
    parser.add_argument("--searches", default="1000,2000,4000,8000,16000",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="interleaved searches per experiment (part a)")
    parser.add_argument("--explore", type=float, default=0.1)
    parser.add_argument("--page-size", type=int, default=SHOWN,
                        help="products a search shows in part b's traffic (shops show 10-48; "
                             "interleaving in part a stays at 10)")
    parser.add_argument("--explore-depth", type=int, default=SHOWN,
                        help="an explored search shows a page drawn from this many top "
                             "ones, in a random order (the page size: the page shuffled)")
    parser.add_argument("--explore-unjudged", action="store_true",
                        help="from round 2 on, an explored page shows the products of the top "
                             "--explore-depth with the least logged evidence (examinations) "
                             "so far, instead of a random draw of them")
    parser.add_argument("--min-searches", type=int, default=FeedbackConfig.min_searches,
                        help="feedback.min_searches: a query's searches before it is judged")
    parser.add_argument("--min-examinations", type=float,
                        default=FeedbackConfig.min_examinations,
                        help="feedback.min_examinations: a pair's bias-corrected views before "
                             "it is judged")
    parser.add_argument("--confidence", type=float, default=FeedbackConfig.confidence,
                        help="feedback.confidence: 0 for the evidence floors, else credible "
                             "grades at this posterior probability (em only)")
    parser.add_argument("--biases", default="em,none", type=lambda s: s.split(","),
                        help="click models to build judgments with (em, none)")
    parser.add_argument("--parts", default="a,b", type=lambda s: set(s.split(",")),
                        help="b: judgments from logs; a: interleaving (needs b's models); "
                             "ceilings: b's traffic with the true grades (two bounds)")
    parser.add_argument("--pool-refinements", action="store_true",
                        help="judgments also pool the top-grade products of each query's "
                             "refinements (feedback.pool_refinements)")
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--aa-experiments", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshot-override", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for the models trained "
                        "on the click snapshots (not the true-judgment model), repeatable; "
                        "e.g. train.min_positive_grade=2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(args.catalog)
    config = load_config("default", [f"train.cache_dir={args.cache_dir}"])
    found = part_b(args, catalog, config, work)
    table_b = report_b(found["rows"])
    print("\n".join(table_b), flush=True)
    table_a = part_a(args, catalog, found, work) if "a" in args.parts else []
    print("\n".join(table_a), flush=True)
    (work / "report.md").write_text("\n".join(table_b + ([""] + table_a if table_a else []))
                                    + "\n")


if __name__ == "__main__":
    main()
