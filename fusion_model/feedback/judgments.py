"""Graded judgments from search logs, corrected for position bias.

Shoppers click what they see, and they see the top of a list more often: a raw
click-through rate ranks what the current model put on top above what it buried. The
position-based click model (Craswell et al., WSDM 2008) separates the two:
P(click | query q, product d, rank k) = theta_k * gamma_qd, with theta_k the chance that
rank k is examined and gamma_qd the chance that an examined product is clicked (its
attractiveness). Both are fitted by EM over every logged impression (Wang et al., WSDM
2018, "regression EM" without the regression); the same product shown at different
ranks (interleaved searches, other versions, re-ranked catalogs) is what identifies
theta. theta_1 is fixed at 1 (the first result is always seen).

A (query, product) pair is judged only with enough evidence: its query was searched
``min_searches`` times and the pair was examined (impressions weighted by theta)
``min_examinations`` times. Its grade is the first of ``GRADE_FLOORS`` (grade 1, 2, 3)
its attractiveness reaches.

Credible grades (``confidence``, empirical Bayes): instead of fixed evidence floors, each
pair's attractiveness gets a posterior from its own impressions (the click model's exact
likelihood at every rank it was shown) and a prior fitted to all pairs of the log (a
histogram on a grid, by EM: Efron's g-modelling). A pair is judged grade g when the
posterior puts at least ``confidence`` on "grade g or above" and at least ``confidence`` on
"grade g or below": a few clicks at rank 15 are enough for a clearly liked product, many
views are needed to tell 2 from 3, and thin evidence shrinks toward what pairs usually are.

Pooling refinements (``pool_refinements``): a product that earns the top grade for a query
("black backpacks for men") is relevant to every logged query whose words are a part of
its words ("black backpacks"), so it is judged top grade there too, where the broader
query's own evidence says less. Only the top grade travels, and only from the narrower
query to the broader: a product that fails "for men" may still be a black backpack."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
import pandas as pd

from fusion_model.data.catalog import query_key
from fusion_model.feedback.events import INTERACTIONS, SEARCHES, read_events

log = logging.getLogger(__name__)
GRADE_FLOORS = (0.2, 0.45, 0.7)   # attractiveness at which grades 1, 2 and 3 start
MAX_POOLED_WORDS = 10   # longer queries are not searched for broader ones (2^words subsets)
PRIOR_GRID = np.linspace(0.01, 0.99, 50)   # attractiveness values of the fitted prior
CELLS_PER_CHUNK = 200_000   # impressions turned into grid likelihoods at a time


@dataclasses.dataclass
class ClickLog:
    """Impressions and clicks per (query, product, rank), with the query texts seen."""

    cells: pd.DataFrame   # query, product_id, rank, shown, clicked
    searches: Counter     # query -> searches
    texts: dict[str, str]  # query -> the most typed text
    purchases: Counter    # (query, product_id) -> purchases


def read_click_log(root: str, since: dt.date | None = None, max_rank: int = 20) -> ClickLog:
    """Every recorded search under ``root`` with the positions clicked (a cart or a
    purchase counts as a click at its position), down to rank ``max_rank``."""
    clicked: dict[str, set[int]] = defaultdict(set)
    purchases_at: dict[str, set[int]] = defaultdict(set)
    for event in read_events(root, INTERACTIONS, since):
        position, search_id = event.get("position"), str(event.get("search_id"))
        if isinstance(position, int):
            clicked[search_id].add(position)
            if event.get("kind") == "purchase":
                purchases_at[search_id].add(position)
    shown: Counter = Counter()
    clicks: Counter = Counter()
    searches: Counter = Counter()
    typed: dict[str, Counter] = defaultdict(Counter)
    purchases: Counter = Counter()
    for record in read_events(root, SEARCHES, since):
        text = str(record.get("query", ""))
        query = query_key(text)
        products = record.get("product_ids") or []
        if not query or not isinstance(products, list):
            continue
        searches[query] += 1
        typed[query][text] += 1
        search_id = str(record.get("search_id"))
        for rank, product in enumerate(products[:max_rank], 1):
            key = (query, str(product), rank)
            shown[key] += 1
            if rank in clicked.get(search_id, ()):
                clicks[key] += 1
            if rank in purchases_at.get(search_id, ()):
                purchases[key[:2]] += 1
    cells = pd.DataFrame([(*key, n, clicks[key]) for key, n in shown.items()],
                         columns=["query", "product_id", "rank", "shown", "clicked"])
    return ClickLog(cells, searches, {q: c.most_common(1)[0][0] for q, c in typed.items()},
                    purchases)


def fit_position_model(cells: pd.DataFrame, iterations: int = 100, tolerance: float = 1e-6
                       ) -> tuple[np.ndarray, pd.Series]:
    """EM for the position-based model: (theta per rank 1.., gamma per (query, product))."""
    ranks = cells["rank"].to_numpy() - 1
    pairs, pair_index = _pair_index(cells)
    shown = cells["shown"].to_numpy(float)
    clicks = cells["clicked"].to_numpy(float)
    theta = 1.0 / (1.0 + np.arange(ranks.max() + 1 if len(ranks) else 1))
    gamma = np.full(len(pairs), 0.5)
    for _ in range(iterations):
        t, g = theta[ranks], gamma[pair_index]
        unclicked = np.clip(1.0 - t * g, 1e-12, None)
        seen = clicks + (shown - clicks) * t * (1 - g) / unclicked
        liked = clicks + (shown - clicks) * (1 - t) * g / unclicked
        new_theta = _ratio(np.bincount(ranks, seen, len(theta)),
                           np.bincount(ranks, shown, len(theta)))
        new_theta = np.clip(new_theta / max(new_theta[0], 1e-12), 1e-6, 1.0)
        new_gamma = np.clip(_ratio(np.bincount(pair_index, liked, len(pairs)),
                                   np.bincount(pair_index, shown, len(pairs))), 1e-6, 1 - 1e-6)
        change = max(np.abs(new_theta - theta).max(), np.abs(new_gamma - gamma).max())
        theta, gamma = new_theta, new_gamma
        if change < tolerance:
            break
    return theta, pd.Series(gamma, index=pairs)


def _pair_index(cells: pd.DataFrame) -> tuple[pd.MultiIndex, np.ndarray]:
    codes, pairs = pd.MultiIndex.from_frame(cells[["query", "product_id"]]).factorize()
    return pd.MultiIndex.from_tuples(list(pairs), names=["query", "product_id"]), codes


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)


def attractiveness(log_: ClickLog, position_bias: str = "em"
                   ) -> tuple[pd.DataFrame, np.ndarray]:
    """Per (query, product): attractiveness, examinations, impressions, clicks,
    purchases; and theta per rank (``position_bias`` "none": raw click-through, theta 1)."""
    cells = log_.cells
    if cells.empty:
        return pd.DataFrame(columns=["query", "product_id", "attractiveness", "examinations",
                                     "shown", "clicked", "purchases"]), np.ones(1)
    if position_bias == "em":
        theta, gamma = fit_position_model(cells)
    else:
        theta = np.ones(int(cells["rank"].max()))
        gamma = None
    cells = cells.assign(examined=cells["shown"] * theta[cells["rank"].to_numpy() - 1])
    pairs = cells.groupby(["query", "product_id"], sort=False)[
        ["shown", "clicked", "examined"]].sum()
    pairs["attractiveness"] = gamma.reindex(pairs.index).to_numpy() if gamma is not None \
        else pairs["clicked"] / pairs["shown"]
    pairs = pairs.rename(columns={"examined": "examinations"}).reset_index()
    pairs["purchases"] = [log_.purchases.get((q, p), 0)
                          for q, p in zip(pairs["query"], pairs["product_id"])]
    return pairs, theta


def grade_of(attractiveness: np.ndarray, floors: tuple[float, ...] = GRADE_FLOORS
             ) -> np.ndarray:
    """0..len(floors): how many floors the attractiveness reaches."""
    return np.searchsorted(np.asarray(floors), attractiveness, side="right").astype("int8")


def pair_log_likelihoods(cells: pd.DataFrame, theta: np.ndarray, pair_index: np.ndarray,
                         pairs: int, grid: np.ndarray = PRIOR_GRID) -> np.ndarray:
    """(pairs, grid) log-likelihood of each pair's impressions and clicks for every
    attractiveness of ``grid``: P(click at rank k) = theta_k * gamma."""
    total = np.zeros((pairs, len(grid)))
    for start in range(0, len(cells), CELLS_PER_CHUNK):
        part = slice(start, start + CELLS_PER_CHUNK)
        seen = theta[cells["rank"].to_numpy()[part] - 1, None] * grid[None, :]
        shown = cells["shown"].to_numpy(float)[part, None]
        clicked = cells["clicked"].to_numpy(float)[part, None]
        np.add.at(total, pair_index[part],
                  clicked * np.log(seen) + (shown - clicked) * np.log1p(-seen))
    return total


def fit_prior(log_likelihoods: np.ndarray, iterations: int = 300, tolerance: float = 1e-7
              ) -> np.ndarray:
    """The grid prior (weights summing to 1) that maximises the marginal likelihood of every
    pair's evidence (nonparametric EM); ``log_likelihoods``: (pairs, grid)."""
    likelihood = np.exp(log_likelihoods - log_likelihoods.max(axis=1, keepdims=True))
    weights = np.full(likelihood.shape[1], 1.0 / likelihood.shape[1])
    for _ in range(iterations):
        posterior = likelihood * weights
        posterior /= posterior.sum(axis=1, keepdims=True)
        new = posterior.mean(axis=0)
        if np.abs(new - weights).max() < tolerance:
            return new
        weights = new
    return weights


def credible_grades(log_likelihoods: np.ndarray, prior: np.ndarray, confidence: float,
                    floors: tuple[float, ...] = GRADE_FLOORS, grid: np.ndarray = PRIOR_GRID
                    ) -> np.ndarray:
    """Per pair the grade g with P(grade >= g) and P(grade <= g) both >= ``confidence``
    under its posterior, or -1 (not judged); ``confidence`` above 0.5 (then at most one
    grade qualifies)."""
    posterior = np.exp(log_likelihoods - log_likelihoods.max(axis=1, keepdims=True)) * prior
    posterior /= posterior.sum(axis=1, keepdims=True)
    band = grade_of(grid, floors)
    mass = np.stack([posterior[:, band == g].sum(axis=1) for g in range(len(floors) + 1)], 1)
    at_least = np.cumsum(mass[:, ::-1], axis=1)[:, ::-1]
    at_most = np.cumsum(mass, axis=1)
    credible = (at_least >= confidence) & (at_most >= confidence)
    return np.where(credible.any(axis=1), credible.argmax(axis=1), -1).astype("int8")


def graded_credibly(log_: ClickLog, confidence: float, floors: tuple[float, ...]
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """``attractiveness``'s pairs with a ``grade`` column from their posteriors (-1: not
    credible at ``confidence``), and theta."""
    pairs, theta = attractiveness(log_, "em")
    if pairs.empty:
        return pairs.assign(grade=pd.Series(dtype="int8")), theta
    index, pair_index = _pair_index(log_.cells)
    log_likelihoods = pair_log_likelihoods(log_.cells, theta, pair_index, len(index))
    prior = fit_prior(log_likelihoods)
    grades = pd.Series(credible_grades(log_likelihoods, prior, confidence, floors),
                       index=index)
    by_pair = pd.MultiIndex.from_frame(pairs[["query", "product_id"]])
    return pairs.assign(grade=grades.reindex(by_pair).to_numpy()), theta


def grades_credibly(position_bias: str, confidence: float) -> bool:
    """Whether pairs are graded by their posteriors: a confidence is set and the click model
    is em (raw click-through, ``none``, has no posterior and keeps the evidence floors)."""
    return confidence > 0 and position_bias == "em"


@dataclasses.dataclass(frozen=True)
class BuiltJudgments:
    judgments: pd.DataFrame   # query, text, product_id, grade, attractiveness, evidence
    theta: np.ndarray
    searches: int
    queries_judged: int
    queries_too_rare: int


def build_judgments(log_: ClickLog, position_bias: str = "em", min_searches: int = 20,
                    min_examinations: float = 5.0,
                    floors: tuple[float, ...] = GRADE_FLOORS,
                    pool_refinements: bool = False, confidence: float = 0.0
                    ) -> BuiltJudgments:
    """Graded judgments for the queries searched ``min_searches`` times and their pairs
    with enough evidence: examined ``min_examinations`` times, or, with ``confidence``
    above 0 and the em click model, a credible grade at that confidence (raw click-through,
    ``none``, has no posterior and always uses the floors); with ``pool_refinements``, also
    the top-grade products of their refinements."""
    frequent = {q for q, n in log_.searches.items() if n >= min_searches}
    if grades_credibly(position_bias, confidence):
        pairs, theta = graded_credibly(log_, confidence, floors)
        kept = pairs[pairs["query"].isin(frequent) & (pairs["grade"] >= 0)].copy()
    else:
        pairs, theta = attractiveness(log_, position_bias)
        kept = pairs[pairs["query"].isin(frequent)
                     & (pairs["examinations"] >= min_examinations)].copy()
        kept["grade"] = grade_of(kept["attractiveness"].to_numpy(float), floors)
    if pool_refinements:
        kept = pooled_refinements(kept, set(log_.searches), len(floors))
    kept["text"] = kept["query"].map(log_.texts)
    judged = set(kept["query"])
    return BuiltJudgments(kept.reset_index(drop=True), theta, sum(log_.searches.values()),
                          len(judged), len(set(log_.searches) - frequent - judged))


def broader_queries(query: str, by_words: dict[frozenset, list[str]]) -> list[str]:
    """The queries of ``by_words`` (word set -> queries) whose words are a proper part of
    ``query``'s, order and repeats aside; none for queries over MAX_POOLED_WORDS words."""
    words = sorted(set(query.split()))
    if len(words) > MAX_POOLED_WORDS:
        return []
    return [broad for size in range(1, len(words))
            for part in map(frozenset, combinations(words, size))
            for broad in by_words.get(part, ())]


def pooled_refinements(judged: pd.DataFrame, logged: set[str], top_grade: int
                       ) -> pd.DataFrame:
    """``judged`` (query, product_id, grade, evidence columns) plus, for every logged
    query, the top-grade products of its judged refinements; a pair judged both ways keeps
    the higher grade (its own row on a tie). Pooled rows name their query in
    ``pooled_from`` ("" for the query's own)."""
    own = judged.assign(pooled_from="")
    by_words: dict[frozenset, list[str]] = defaultdict(list)
    for query in sorted(logged):
        by_words[frozenset(query.split())].append(query)
    pooled = [rows.assign(query=broad, pooled_from=narrow)
              for narrow, rows in judged[judged["grade"] == top_grade].groupby("query")
              for broad in broader_queries(narrow, by_words)]
    if not pooled:
        return own
    merged = pd.concat([own, *pooled], ignore_index=True).sort_values(
        ["grade", "pooled_from"], ascending=[False, True], kind="stable")
    merged = merged.drop_duplicates(["query", "product_id"]).reset_index(drop=True)
    added = merged[merged["pooled_from"] != ""]
    log.info("pooling refinements: %d top-grade pairs for %d broader queries",
             len(added), added["query"].nunique())
    return merged


def judged_snapshot(catalog, built: BuiltJudgments, out: str, keep_labels: bool = False
                    ) -> dict:
    """Write a catalog snapshot whose training judgments come from the logs: logged
    queries that match a train query keep its id, new ones are added to the train split;
    a logged query that matches a val or test query is left out (those judgments stay
    the hand-made ones the gate scores on). ``keep_labels``: the catalog's own train
    judgments stay where the logs say nothing of the pair. Products whose id the catalog
    does not hold (deleted since) are dropped. Returns the snapshot's summary."""
    import hashlib
    import json

    from fusion_model import storage
    from fusion_model.data.catalog import write_catalog

    queries = catalog.queries
    by_key = {query_key(t): (qid, split) for qid, t, split in
              queries[["query_id", "text", "split"]].itertuples(index=False)}
    logged = built.judgments[built.judgments["product_id"].isin(
        set(catalog.products["product_id"]))].copy()
    matched = logged["query"].map(lambda q: by_key.get(q, (None, "train")))
    logged["split"] = [split for _, split in matched]
    held_out = logged["split"] != "train"
    held_queries = int(logged.loc[held_out, "query"].nunique())
    logged = logged[~held_out]
    logged["query_id"] = [qid or "log-" + hashlib.sha1(q.encode()).hexdigest()[:12]
                          for (qid, _), q in zip(matched[~held_out], logged["query"])]
    new_queries = logged.loc[~logged["query_id"].isin(set(queries["query_id"])),
                             ["query_id", "text"]].drop_duplicates("query_id")
    new_queries = new_queries.assign(split="train")
    train_ids = set(queries.loc[queries["split"] == "train", "query_id"])
    judged = catalog.judgments
    kept = judged[~judged["query_id"].isin(train_ids)]          # val and test
    if keep_labels:
        pairs = set(zip(logged["query_id"], logged["product_id"]))
        own = judged[judged["query_id"].isin(train_ids)]
        kept = pd.concat([kept, own[[p not in pairs for p in
                                     zip(own["query_id"], own["product_id"])]]])
    judgments = pd.concat([kept, logged[["query_id", "product_id", "grade"]]],
                          ignore_index=True)
    judgments["grade"] = judgments["grade"].astype("int8")
    all_queries = pd.concat([queries[[c for c in ("query_id", "text", "split")]],
                             new_queries], ignore_index=True)
    if not keep_labels:  # train queries the logs do not judge carry no judgments
        judged_train = set(logged["query_id"])
        all_queries = all_queries[(all_queries["split"] != "train")
                                  | all_queries["query_id"].isin(judged_train)]
    products = catalog.products.assign(image=catalog.products["image_uri"])
    root = write_catalog(out, products, all_queries.reset_index(drop=True), judgments)
    summary = {"searches": built.searches, "queries_judged": built.queries_judged,
               "queries_too_rare": built.queries_too_rare,
               "queries_held_out": held_queries,
               "new_queries": len(new_queries),
               "pairs": {str(g): int((logged["grade"] == g).sum()) for g in range(4)},
               "pooled_pairs": int((logged.get("pooled_from", pd.Series(dtype=str)) != "")
                                   .sum()),
               "theta": [round(float(t), 4) for t in built.theta[:20]]}
    storage.write_bytes(storage.join(root, "feedback.json"),
                        json.dumps(summary, indent=2).encode())
    return {"catalog": root, **summary}
