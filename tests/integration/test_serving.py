"""``fusion-model serve`` and ``fusion-model search`` on a real champion (MLflow on SQLite,
Milvus Lite): JSON hits with titles and photos, 400s for bad requests, the bearer token,
metrics, and following a promotion and a rollback under load without a failed request."""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

from fusion_model.cli import main
from fusion_model.config import load_config
from fusion_model.errors import BadInputError, ServingMismatchError
from fusion_model.index.base import open_index
from fusion_model.pipelines import steps
from fusion_model.serving.app import create_app
from fusion_model.serving.searcher import ChampionSearcher
from tests.browser import Browser
from tests.conftest import Uvicorn, champion_and_challenger

pytestmark = pytest.mark.integration

TOKEN = "serve-t0ken-do-not-log"
LOCAL = "http://localhost"  # a Host the service answers by default


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> dict:
    """v1 promoted (champion), v2 trained, registered and indexed (challenger)."""
    made = champion_and_challenger(tmp_path_factory.mktemp("serving"), products=150,
                                   queries=40, seed=11, challenger_seed=2)
    steps.gate(made["v2"], made["catalog"], "tiny", made["overrides"])  # its review pack
    return {**made, "catalog": Path(made["catalog"]),
            "config": load_config("tiny", made["overrides"])}


@pytest.fixture(scope="module")
def searcher(platform):
    with ChampionSearcher.open(platform["config"]) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def client(searcher):
    from fastapi.testclient import TestClient

    with TestClient(create_app(searcher, follow_interval=0), base_url=LOCAL) as test_client:
        yield test_client


def test_search_returns_titles_attributes_and_photos(client, platform):
    body = client.get("/search", params={"q": "red striped shirt", "k": 8}).json()
    assert body["version"] == "1" and body["collection"].startswith("products_m1_")
    assert len(body["hits"]) == 8
    assert [h["score"] for h in body["hits"]] == sorted((h["score"] for h in body["hits"]),
                                                        reverse=True)
    for hit in body["hits"]:
        assert hit["title"] and {"category", "colour", "gender"} <= set(hit)
        # the fusion network's share for the photo, computed at indexing
        assert 0 < hit["photo_weight"] < 1 if hit["image_url"] else hit["photo_weight"] == 0
    assert len({h["photo_weight"] for h in body["hits"] if h["image_url"]}) > 1
    with_photo = [h for h in body["hits"] if h["image_url"]]
    assert with_photo, body
    photo = client.get(with_photo[0]["image_url"])
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    product = with_photo[0]["product_id"]
    served = np.asarray(Image.open(io.BytesIO(photo.content)), dtype=np.float32)
    stored = np.asarray(Image.open(platform["catalog"] / "images" / f"{product}.jpg"),
                        dtype=np.float32)
    assert served.shape == stored.shape and np.abs(served - stored).mean() < 3  # re-encoded


def test_filters_are_applied_and_quoted(client):
    hits = client.get("/search", params={"q": "shirt", "k": 20,
                                         "filter": "gender == women and colour in [red, blue]"}
                      ).json()["hits"]
    assert hits and all(h["gender"] == "women" and h["colour"] in ("red", "blue")
                        for h in hits)
    injected = client.get("/search", params={"q": "shirt", "filter":
                                             "colour == 'x\" or colour != \"'"})
    # a value that breaks out of its quotes is one value the field never holds: refused
    assert injected.status_code == 400 and "colour" in injected.json()["error"]
    assert "hits" not in injected.json()


@pytest.mark.parametrize(("params", "match"), [
    ({"q": ""}, r"query must not be empty"),
    ({"q": "   "}, r"query must not be empty"),
    ({"q": "shirt", "k": 0}, r"k: .*greater than or equal to 1"),
    ({"q": "shirt", "k": 101}, r"k: .*less than or equal to 100"),
    ({"q": "shirt", "k": "ten"}, r"k: .*integer"),
    ({"q": "shirt", "filter": "colour =="}, r"invalid filter.*Filterable fields"),
    ({"q": "shirt", "filter": "price == 3"}, r"invalid filter.*price"),
    ({"q": "shirt", "filter": "colour == red or"}, r"invalid filter"),
    ({"q": "x" * 600}, r"600 characters"),
    ({"q": "shirt", "model": "99"}, r"99"),
    ({"q": "shirt", "model": "newest"}, r"no 'newest' alias"),
])
def test_bad_requests_are_400_with_a_message(client, params, match):
    response = client.get("/search", params=params)
    assert response.status_code == 400, response.text
    assert re.search(match, response.json()["error"]), response.json()


def test_photos_of_unknown_or_photo_less_products_are_404(client, platform):
    assert client.get("/products/NOPE/image").status_code == 404
    hits = client.get("/search", params={"q": "shirt", "k": 100}).json()["hits"]
    without = [h for h in hits if not h["image_url"]]
    if without:  # the synthetic catalog leaves a few products without a photo
        response = client.get(f"/products/{without[0]['product_id']}/image")
        assert response.status_code == 404 and "no photo" in response.json()["error"]


def test_challenger_and_versions_are_searchable_side_by_side(client, platform):
    versions = client.get("/versions").json()
    assert versions["champion"] == "1" and versions["challenger"] == platform["v2"]
    assert versions["filter_fields"] == ["category", "colour", "gender"]
    left = client.get("/search", params={"q": "blue jeans", "model": "champion"}).json()
    right = client.get("/search", params={"q": "blue jeans", "model": "challenger"}).json()
    assert right["version"] == platform["v2"] and right["collection"] == platform[
        "v2_collection"] != left["collection"]
    by_number = client.get("/search", params={"q": "blue jeans", "model": platform["v2"]})
    assert by_number.json()["hits"] == right["hits"]


def test_review_lists_the_candidates_losses_and_a_judged_querys_grades(client, platform):
    review = client.get("/review", params={"model": "challenger"}).json()
    assert review["gated"] and review["version"] == platform["v2"]
    assert review["baseline"] == "champion v1" and review["metric"]
    assert review["queries"] >= len(review["regressions"]) > 0
    differences = [row["difference"] for row in review["regressions"]]
    assert differences == sorted(differences) and all(d < 0 for d in differences)
    worst = review["regressions"][0]
    assert worst["difference"] == round(worst["candidate"] - worst["baseline"], 4)
    typed = "  " + worst["text"].upper() + " "
    judged = client.get("/review", params={"model": "challenger", "q": typed}).json()
    assert judged["query"]["text"] == worst["text"] and judged["query"]["grades"]
    assert all(isinstance(g, int) and g > 0 for g in judged["query"]["grades"].values())
    unjudged = client.get("/review", params={"model": "challenger", "q": "zz unjudged"})
    assert unjudged.json()["query"] is None
    capped = client.get("/review", params={"model": "challenger", "regressions": 1}).json()
    assert capped["regressions"] == review["regressions"][:1]
    assert client.get("/review", params={"regressions": 10_000}).status_code == 400


def test_versions_link_to_mlflow_and_searches_say_when_nothing_matches_well(
        client, searcher, monkeypatch):
    versions = client.get("/versions").json()
    assert set(versions["links"]) == {"1", versions["challenger"]}
    assert versions["filter_values"]["gender"] and versions["example_filter"]
    body = client.get("/search", params={"q": "red striped shirt"}).json()
    typical = body["typical_top_score"]
    assert typical is not None and 0 < typical <= 1.0001
    assert body["weak_match"] == (body["hits"][0]["score"] < 0.7 * typical)
    monkeypatch.setattr(searcher, "typical_top_score", lambda model=None: 10.0)
    assert client.get("/search", params={"q": "red striped shirt"}).json()["weak_match"]


def test_health_readiness_metrics_and_the_review_page(client):
    client.get("/search", params={"q": "shirt"})
    client.get("/search", params={"q": ""})
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["version"] == "1"
    metrics = client.get("/metrics").text
    assert re.search(r'fusion_search_requests_total\{endpoint="/search",status="200"\} [1-9]',
                     metrics)
    assert re.search(r'fusion_search_requests_total\{endpoint="/search",status="400"\} [1-9]',
                     metrics)
    assert 'fusion_search_latency_seconds_bucket{endpoint="/search",le="0.015"}' in metrics
    assert "fusion_champion_version 1.0" in metrics
    assert re.search(r'fusion_serving_info\{collection="products_m1_\w+"', metrics)
    assert re.search(r"process_cpu_seconds_total \d", metrics)  # load tests read it
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text


def test_repeated_queries_are_answered_from_the_query_cache(platform):
    from fastapi.testclient import TestClient

    with ChampionSearcher.open(platform["config"], query_cache=100) as cached, \
            TestClient(create_app(cached, follow_interval=0), base_url=LOCAL) as http:
        first = http.get("/search", params={"q": "red shirt"}).json()["hits"]
        again = http.get("/search", params={"q": "red shirt"}).json()["hits"]
        metrics = http.get("/metrics").text
    assert [(h["product_id"], h["score"]) for h in again] == \
        [(h["product_id"], h["score"]) for h in first]
    assert 'fusion_query_cache{result="hit"} 1.0' in metrics
    assert 'fusion_query_cache{result="miss"} 1.0' in metrics


def test_the_query_encoder_runs_once_before_it_serves(platform, monkeypatch):
    """Loading a champion runs its query encoder once (on OpenVINO: compiles it), so the
    first request after a start or a promotion does not wait for that."""
    from fusion_model.serving import searcher as searcher_module

    encoded = []
    load = searcher_module.load_query_encoder

    def spied(*args):
        encode = load(*args)
        return lambda texts: encoded.append(list(texts)) or encode(texts)

    monkeypatch.setattr(searcher_module, "load_query_encoder", spied)
    with ChampionSearcher.open(platform["config"]) as fresh:
        assert encoded == [["warm up"]]
        fresh.search("red shirt")
    assert encoded == [["warm up"], ["red shirt"]]


def test_a_bearer_token_guards_everything_but_health(searcher, caplog):
    from fastapi.testclient import TestClient

    with TestClient(create_app(searcher, follow_interval=0, token=TOKEN),
                    base_url=LOCAL) as guarded:
        assert guarded.get("/search", params={"q": "shirt"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert guarded.get("/search", params={"q": "shirt"}, headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert guarded.get("/search", params={"q": "shirt"}, headers=right).status_code == 200
        assert guarded.get("/metrics", headers=right).status_code == 200
        assert guarded.get("/healthz").status_code == 200
        assert guarded.get("/readyz").status_code == 200
        assert TOKEN not in guarded.get("/metrics", headers=right).text
    assert TOKEN not in caplog.text


def test_cli_search_shows_titles_and_photo_paths(platform, capsys):
    capsys.readouterr()
    assert main(["search", "red shirt", "-k", "3", "--config", "tiny",
                 *platform["overrides"]]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 6, out
    assert re.match(r"\s*1\. P\d+\s+\d\.\d{4}\s+\S", lines[0])
    assert re.search(r"category=\w+.*(photo: /\S+\.jpg|no photo)", lines[1])
    assert "photo: " in out


def test_a_champion_that_is_not_served_is_refused(platform, searcher):
    """The serving alias moved without the champion (a half-done manual change): a new
    searcher refuses to start, a running one keeps serving its champion and says why."""
    config = platform["config"]
    with open_index(config.index) as index:
        served = index.resolve_alias(config.index.alias)
        index.point_alias(config.index.alias, platform["v2_collection"])
    try:
        with (pytest.raises(ServingMismatchError, match="refusing to mix encoders"),
              ChampionSearcher.open(config)):
            pass
        assert searcher.follow() is False
        assert "refusing to mix" in searcher.problem
        assert searcher.search("shirt").collection == served
    finally:
        with open_index(config.index) as index:
            index.point_alias(config.index.alias, served)
    assert searcher.follow() is False and searcher.problem is None


def hammer(url: str, stop: threading.Event, seen: list) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            response = http.get("/search", params={"q": "red shirt", "k": 5})
            body = response.json()
            seen.append((response.status_code, body.get("version"), body.get("collection"),
                         body.get("error")))


def test_promotion_and_rollback_are_followed_without_a_failed_request(platform):
    config = platform["config"]
    with ChampionSearcher.open(config) as searcher:
        v1_collection = searcher.served.collection
        with Uvicorn(create_app(searcher, follow_interval=0.2)) as url:
            stop, seen = threading.Event(), []
            clients = [threading.Thread(target=hammer, args=(url, stop, seen))
                       for _ in range(4)]
            for thread in clients:
                thread.start()
            try:
                time.sleep(1)
                steps.promote_or_reject(platform["v2"], {
                    "decision": "promote", "reasons": ["serving test"], "metrics": {}},
                    "tiny", platform["overrides"])
                wait_for_version(seen, platform["v2"])
                steps.rollback("1", "tiny", platform["overrides"], reason="serving test")
                wait_for_version(seen, "1")
            finally:
                stop.set()
                for thread in clients:
                    thread.join(timeout=30)
            metrics = httpx.get(f"{url}/metrics").text
    failed = [s for s in seen if s[0] != 200]
    assert not failed, failed[:5]
    pairs = {(version, collection) for _, version, collection, _ in seen}
    assert pairs == {("1", v1_collection), (platform["v2"], platform["v2_collection"])}
    assert re.search(r"fusion_champion_swaps_total [2-9]", metrics)


def test_concurrent_requests_are_merged_and_each_gets_its_own_hits(platform):
    """32 requests at once through real uvicorn: each answer equals the same query
    searched alone, a bad one among them is its own 400, and the service ran fewer
    batches than searches (one encoder pass and one Milvus call for several). The query
    encoder runs on two OpenVINO streams here (``--encoder-streams 2``)."""
    import asyncio

    queries = [f"{colour} {kind}" for colour in ("red", "blue", "green", "black")
               for kind in ("shirt", "dress", "shoes", "jeans", "bag", "scarf", "watch",
                            "cap")]
    with ChampionSearcher.open(platform["config"], encoder_streams=2) as searcher:
        alone = {q: [h["product_id"] for h in searcher.search(q, 5).hits] for q in queries}
        with Uvicorn(create_app(searcher, follow_interval=0)) as url:
            async def all_at_once() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                    return await asyncio.gather(
                        *(http.get("/search", params={"q": q, "k": 5}) for q in queries),
                        http.get("/search", params={"q": "red shirt", "k": 5,
                                                    "filter": "colour == "}))
            *answers, bad = asyncio.run(all_at_once())
            metrics = httpx.get(f"{url}/metrics").text
    for query, answer in zip(queries, answers):
        assert answer.status_code == 200, answer.text
        assert [h["product_id"] for h in answer.json()["hits"]] == alone[query], query
    assert bad.status_code == 400 and "colour" in bad.json()["error"]
    searches = float(re.search(r'fusion_search_batching\{count="searches"\} (\S+)',
                               metrics).group(1))
    batches = float(re.search(r'fusion_search_batching\{count="batches"\} (\S+)',
                              metrics).group(1))
    assert searches >= len(queries) and batches < searches


def wait_for_version(seen: list, version: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    start = len(seen)
    while not any(s[1] == version for s in seen[start:]):
        assert time.time() < deadline, f"the service never served v{version}"
        time.sleep(0.1)


ARTIFACTS = Path(os.environ.get("FUSION_TEST_ARTIFACTS", "runs/test-artifacts"))


@pytest.mark.e2e
def test_review_page_in_headless_chromium(platform, tmp_path):
    """Load the review page, type a query, search: two photo grids (champion and v2) whose
    photos decode in the browser, placeholders where a product has none, and a named error
    for a bad filter. The screenshot is kept as a test artifact."""
    config = platform["config"]
    with ChampionSearcher.open(config) as searcher, Uvicorn(
            create_app(searcher, follow_interval=0)) as url:
        browser = Browser(tmp_path / "chromium")
        try:
            browser.goto(f"{url}/?left=champion&right={platform['v2']}&k=12")
            browser.wait_until("document.getElementById('meta').textContent"
                               ".includes('champion v1')", "the versions header")
            browser.wait_until("document.body.dataset.state === 'done'",
                               "the comparison the gate's review link opens on")
            opened = browser.evaluate("[document.getElementById('q').value, document."
                                      "querySelector('#regressions a.regression').textContent,"
                                      " document.querySelectorAll('.column').length]")
            browser.evaluate("{const q = document.getElementById('q'); q.value = '';"
                             "q.focus()}")
            browser.call("Input.insertText", text="red striped shirt")
            browser.evaluate("document.getElementById('go').click()")
            browser.wait_until("document.body.dataset.state === 'done'", "the results")
            browser.wait_until("[...document.querySelectorAll('.card img')]"
                               ".every(i => i.complete)", "the photos")
            page = browser.evaluate("""(() => {
                const columns = [...document.querySelectorAll('.column')];
                return columns.map(c => ({
                    heading: c.querySelector('h2').textContent,
                    cards: c.querySelectorAll('.card').length,
                    titles: [...c.querySelectorAll('.card .title')].map(t => t.textContent),
                    photos: [...c.querySelectorAll('.card img')].map(i => i.naturalWidth),
                    placeholders: c.querySelectorAll('.card .placeholder').length,
                    weights: [...c.querySelectorAll('.card .weight')].map(w => w.textContent)
                    }));
            })()""")
            shot = browser.screenshot(ARTIFACTS / "review-page.png")
            review = review_in_browser(browser)
            expected = httpx.get(f"{url}/review", params={
                "model": platform["v2"], "q": review["query"]}).json()["query"]
            browser.evaluate("document.getElementById('q').value = 'red striped shirt';"
                             "document.getElementById('filter').value = 'price == 3'")
            browser.evaluate("document.getElementById('go').click()")
            browser.wait_until("document.body.dataset.state === 'error'", "the filter error")
            error = browser.evaluate("document.getElementById('error').textContent")
        finally:
            browser.close()
    assert opened[0] == opened[1] and opened[2] == 2, opened  # the worst query, pre-filled
    assert [c["heading"].split(" ")[0:2] for c in page] == [
        ["champion:", "v1"], [f"{platform['v2']}:", f"v{platform['v2']}"]]
    for column in page:
        assert column["cards"] == 12 and all(column["titles"])
        assert column["photos"] and all(width > 0 for width in column["photos"]), column
        assert len(column["photos"]) + column["placeholders"] == 12
        assert len(column["weights"]) == 12 and all(
            re.fullmatch(r"photo \d+% · text \d+%", w) for w in column["weights"]), column
    assert "invalid filter" in error and "price" in error
    with Image.open(shot) as image:
        assert image.width >= 1000 and image.height >= 600
    assert review["judged"].startswith("Judged query: gate ") and "difference -" in review[
        "judged"]
    assert review["regressions"] and review["query"] == review["regressions"][0]
    assert review["grades"] and all(
        int(grade) == expected["grades"].get(product, 0)
        for product, grade in review["grades"].items())
    assert set(review["moves"]) <= {"up", "down", "same", "new"} and review["moves"]
    assert review["facet"] and review["filter"] == review["facet"]
    assert review["cleared"] == 0 and review["notice"] == "Type a query to search."


def review_in_browser(browser: Browser) -> dict:
    """The review tool's parts, as a reviewer uses them: the regressions list (one click to
    its side-by-side view with grades and the gate's metric), rank moves, a facet chip that
    fills the filter, and an emptied query that clears the page."""
    browser.wait_until("document.querySelectorAll('#regressions a.regression').length",
                       "the regressions list")
    regressions = browser.evaluate(
        "[...document.querySelectorAll('#regressions a.regression')].map(a => a.textContent)")
    browser.evaluate("document.body.dataset.state = 'busy';"
                     "document.querySelector('#regressions a.regression').click()")
    browser.wait_until("document.body.dataset.state === 'done' && "
                       "document.getElementById('judged').textContent", "the judged query")
    page = browser.evaluate("""(() => {
        const right = document.querySelectorAll('.column')[1];
        const grades = {};
        for (const c of right.querySelectorAll('.card')) grades[c.dataset.productId] =
            c.dataset.grade;
        const chip = document.querySelector('#facet-list button[data-field="gender"]');
        document.getElementById('filter').value = '';
        chip.click();
        return {query: document.getElementById('q').value, grades,
                judged: document.getElementById('judged').textContent,
                moves: [...right.querySelectorAll('.move')].map(m => m.classList[1]),
                facet: 'gender == ' + chip.textContent,
                filter: document.getElementById('filter').value};
    })()""")
    browser.evaluate("{const q = document.getElementById('q'); q.value = '';"
                     "q.dispatchEvent(new Event('input'));"
                     "document.getElementById('filter').value = '';"
                     "document.getElementById('go').click()}")
    browser.wait_until("document.body.dataset.state === 'empty'", "the emptied page")
    return {**page, "regressions": regressions,
            "cleared": browser.evaluate("document.querySelectorAll('.card').length"),
            "notice": browser.evaluate("document.getElementById('notice').textContent")}


# --- security: what the service trusts at request time (docs/serving.md, "Threat model") --------

def a_photo(client) -> tuple[str, str]:
    hits = client.get("/search", params={"q": "shirt", "k": 20}).json()["hits"]
    hit = next(h for h in hits if h["image_url"])
    return hit["product_id"], hit["image_url"]


@contextlib.contextmanager
def planted(path: Path, data: bytes | None = None, link_to: Path | None = None):
    """Replace the photo at ``path`` for the block (bytes, or a symlink), then restore."""
    original = path.read_bytes()
    path.unlink()
    if link_to is not None:
        path.symlink_to(link_to)
    else:
        path.write_bytes(data)
    try:
        yield
    finally:
        path.unlink()
        path.write_bytes(original)


def test_a_photo_carrying_a_script_is_served_as_a_fresh_image(client, platform):
    product, url = a_photo(client)
    photo = platform["catalog"] / "images" / f"{product}.jpg"
    polyglot = photo.read_bytes() + b"<html><script>alert(document.domain)</script></html>"
    with planted(photo, polyglot):
        response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert b"<script>" not in response.content
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]


def test_a_photo_replaced_by_a_symlink_out_of_the_catalog_is_refused(client, platform,
                                                                    tmp_path, caplog):
    product, url = a_photo(client)
    photo = platform["catalog"] / "images" / f"{product}.jpg"
    outside = tmp_path / "elsewhere.jpg"  # a real image, but outside the catalog's roots
    Image.new("RGB", (32, 32), "red").save(outside)
    for target in (Path("/etc/passwd"), outside):
        with planted(photo, link_to=target):
            response = client.get(url)
        assert response.status_code == 404, response.text
        assert "root" not in response.text or "outside" in response.text
        assert str(target) not in response.text  # the stored location is not disclosed
    assert "outside the image roots" in caplog.text


@pytest.mark.parametrize("product_id", ['P1" or product_id != "', "P1'", "a b", "x" * 200,
                                        "%00", "..%2F..%2Fetc"])
def test_product_ids_that_break_the_id_rule_never_reach_the_index(client, product_id):
    response = client.get(f"/products/{quote(product_id, safe='')}/image")
    assert response.status_code == 404, response.text


def test_ids_reach_milvus_expressions_escaped(searcher):
    collection = searcher.current().collection
    hit = searcher.search("shirt", k=1).hits[0]["product_id"]
    for crafted in [f'{hit}" or product_id != "', 'x\\" or product_id != \\"', "a'b"]:
        assert searcher.index.rows_of(collection, [crafted], ["title"]) == {}
    assert list(searcher.index.rows_of(collection, [hit], ["title"])) == [hit]


def test_metrics_labels_stay_bounded(client):
    before = len(client.get("/metrics").text)
    for i in range(300):
        client.get(f"/no/such/path/{i}")
        client.get(f"/products/P{i}/image/extra")
    after = client.get("/metrics").text
    assert len(after) - before < 3000, len(after) - before
    assert 'endpoint="other"' in after and "/no/such" not in after


def test_other_hosts_are_refused_against_dns_rebinding(searcher):
    from fastapi.testclient import TestClient

    app = create_app(searcher, follow_interval=0)
    with TestClient(app, base_url="http://attacker.example:8080") as rebound:
        response = rebound.get("/versions")
        assert response.status_code == 400 and "--allowed-host" in response.json()["error"]
    for host in ("http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost"):
        with TestClient(app, base_url=host) as local:
            assert local.get("/healthz").status_code == 200
    with TestClient(create_app(searcher, follow_interval=0,
                               allowed_hosts=("shop.example",)),
                    base_url="http://shop.example") as named:
        assert named.get("/healthz").status_code == 200


def test_every_response_carries_the_security_headers(client):
    for path in ("/", "/search?q=shirt", "/search?q=", "/versions", "/metrics", "/nowhere"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert "default-src 'none'" in headers["content-security-policy"], path
    page = client.get("/").headers["content-security-policy"]
    assert "'sha256-" in page and "unsafe-inline" not in page


@pytest.mark.parametrize("token", ["pässwort", "with space", "tab\there"])
def test_a_token_a_client_cannot_send_is_refused_at_start(searcher, token):
    from fusion_model.errors import BadInputError

    with pytest.raises(BadInputError, match="printable ASCII"):
        create_app(searcher, follow_interval=0, token=token)


def test_any_bytes_sent_as_the_token_are_a_401_not_a_500(searcher):
    from fastapi.testclient import TestClient

    with TestClient(create_app(searcher, follow_interval=0, token=TOKEN),
                    base_url=LOCAL) as guarded:
        for sent in ("Bearer pässwort".encode("latin-1"), b"Bearer \xff\xfe",
                     b"Bearer " + b"x" * 5000, b"Basic abc"):
            response = guarded.get("/versions", headers={"Authorization": sent})
            assert response.status_code == 401, sent


MALFORMED = ["", " ", "\x00", "\u200b\u200c\ufeff", "'", '"', "\\", "%", "{}", "[]",
             "((((", "-1", "1e9", "99999999999999999999", "v-3", "²", "١", "NaN", "null",
             "../../etc/passwd", "x" * 3000, "😀", "\ud800"]


@pytest.mark.parametrize("value", MALFORMED)
def test_no_endpoint_answers_500_to_a_malformed_value(client, value):
    """Every parameter of every endpoint gets each malformed value: a 2xx or 4xx with a
    JSON message, never a 5xx."""
    safe = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    requests = [("/search", {"q": safe}), ("/search", {"q": "shirt", "k": safe}),
                ("/search", {"q": "shirt", "filter": safe}),
                ("/search", {"q": "shirt", "model": safe}),
                (f"/products/{quote(safe, safe='')}/image", {}),
                ("/products/P1/image", {"model": safe}),
                ("/versions", {"x": safe}), ("/readyz", {}), ("/metrics", {"q": safe}),
                ("/", {"q": safe, "left": safe})]
    for path, params in requests:
        response = client.get(path, params=params)
        assert response.status_code < 500, (path, params, response.text[:300])


def test_deeply_nested_filters_are_a_400(client):
    response = client.get("/search", params={"q": "shirt", "filter": "(" * 300 + "colour == "
                                             "red" + ")" * 300})
    assert response.status_code == 400 and "nest" in response.json()["error"]


@pytest.mark.parametrize("query", ["\x00\x00", "\u200b\u200d\u2060", "\ufeff  \u200e"])
def test_queries_of_invisible_characters_are_refused(client, query):
    response = client.get("/search", params={"q": query})
    assert response.status_code == 400 and "invisible" in response.json()["error"]


SEARCH_PROBE = """
import json, sys
from fusion_model.checks import load_checked_config
from fusion_model.serving.searcher import ChampionSearcher
with ChampionSearcher.open(load_checked_config("tiny", sys.argv[1:])) as searcher:
    assert searcher.search("red shirt", k=3).hits
print(json.dumps(sorted(m for m in sys.modules if m.startswith(
    ("fusion_model.training", "fusion_model.registry.tracking", "fusion_model.benchmark")))))
"""


def test_searches_and_shoppers_interactions_are_recorded(searcher, tmp_path):
    """With an event log every served search gets an id and a record; POST /events takes
    a click on one of its results, and refuses (4xx, nothing stored) what names no
    served search, result or kind, or is too large."""
    from fastapi.testclient import TestClient

    from fusion_model.feedback.events import (
        INTERACTIONS,
        SEARCHES,
        EventLog,
        EventSettings,
        read_events,
    )

    root = str(tmp_path / "events")
    events = EventLog(EventSettings(root, flush_seconds=0.05), salt="s")
    with TestClient(create_app(searcher, follow_interval=0, events=events),
                    base_url=LOCAL) as http:
        body = http.get("/search", params={"q": "red shirt", "k": 5,
                                           "session": "shopper-7"}).json()
        search_id, shown = body["search_id"], [h["product_id"] for h in body["hits"]]
        click = {"search_id": search_id, "product_id": shown[1], "kind": "click",
                 "position": 2}
        accepted = http.post("/events", json=click)
        assert accepted.status_code == 202, accepted.text
        refused = {
            "unknown search": http.post("/events", json={**click, "search_id": "f" * 32}),
            "position": http.post("/events", json={**click, "position": 6}),
            "kind": http.post("/events", json={**click, "kind": "hover"}),
            "not shown there": http.post("/events", json={**click, "position": 1}),
            "not JSON": http.post("/events", content=b"{oops",
                                  headers={"content-type": "application/json"}),
            "too large": http.post("/events", json={**click, "pad": "x" * 5000}),
        }
    codes = {name: r.status_code for name, r in refused.items()}
    assert codes == {"unknown search": 400, "position": 400, "kind": 400,
                     "not shown there": 400, "not JSON": 400, "too large": 413}, codes
    assert "unknown search_id" in refused["unknown search"].json()["error"]
    [search] = list(read_events(root, SEARCHES))  # closing the app wrote what was queued
    assert search["search_id"] == search_id and search["product_ids"] == shown
    assert search["version"] == body["version"] and search["session"] != "shopper-7"
    assert [(e["product_id"], e["position"]) for e in read_events(root, INTERACTIONS)] == \
        [(shown[1], 2)]


def test_events_are_off_unless_asked_for(client):
    assert client.get("/search", params={"q": "red shirt"}).json()["search_id"] is None
    off = client.post("/events", json={"search_id": "x", "product_id": "y",
                                       "kind": "click", "position": 1})
    assert off.status_code == 404 and "--events" in off.json()["error"]


def test_the_candidate_is_interleaved_and_clicks_credit_its_team(searcher, platform,
                                                                   tmp_path):
    """With a ``candidate`` alias and ``--interleave 1`` every champion search shows one
    team-drafted list of both versions' results; the record says which team showed each
    rank, and clicks on the candidate's picks make it the preferred one."""
    from fastapi.testclient import TestClient

    from fusion_model.feedback.events import SEARCHES, EventLog, EventSettings, read_events
    from fusion_model.feedback.online import online_preference
    from fusion_model.registry.registry import (
        CANDIDATE,
        candidate_for,
        get_alias,
        remove_alias,
        set_alias,
    )
    from fusion_model.serving.interleaver import Interleaver

    name = platform["config"].registry.model_name
    candidate, _ = candidate_for(name, platform["v2"])  # (earlier tests move the aliases)
    assert get_alias(name, "champion").version != platform["v2"]
    set_alias(candidate, CANDIDATE)
    root = str(tmp_path / "events")
    events = EventLog(EventSettings(root, flush_seconds=0.05), salt="s")
    try:
        with TestClient(create_app(searcher, follow_interval=0, events=events,
                                   interleaver=Interleaver(searcher, 1.0, seed=3)),
                        base_url=LOCAL) as http:
            champion_only = http.get("/search", params={"q": "red shirt", "k": 8,
                                                        "model": "champion"})
            clicked = set()
            for query in ("red shirt", "blue dress", "green shoes", "black bag") * 3:
                body = http.get("/search", params={"q": query, "k": 8}).json()
                clicked.add(body["search_id"])
                assert len({h["product_id"] for h in body["hits"]}) == len(body["hits"])
                http.post("/events", json={"search_id": body["search_id"], "kind": "click",
                                           "product_id": body["hits"][0]["product_id"],
                                           "position": 1})
            reviewed = http.get("/search", params={"q": "red shirt", "model": platform["v2"]})
            unrecorded = http.get("/search", params={"q": "red shirt", "review": "true"})
            live = http.get("/feedback", params={"q": "RED  shirt"}).json()
        assert champion_only.status_code == reviewed.status_code == 200
        assert unrecorded.json()["search_id"] is None
        records = list(read_events(root, SEARCHES))
        interleaved = [r for r in records if r["interleaving"]]
        assert (len(records), len(interleaved)) == (14, 13)  # the review search is not
        for record in interleaved:
            record_teams = record["interleaving"]
            assert record_teams["A"] != record_teams["B"] == platform["v2"]
            assert set(record_teams["teams"]) <= {"A", "B"}
            assert len(record_teams["teams"]) == len(record["product_ids"])
        found = online_preference(root, platform["v2"])
        firsts = [r["interleaving"]["teams"][0] for r in interleaved
                  if r["search_id"] in clicked]
        assert (found.wins_a, found.wins_b) == (firsts.count("A"), firsts.count("B"))
        comparison = live["comparison"]
        assert comparison["candidate"] == platform["v2"] and comparison["searches"] == 13
        assert (comparison["wins_champion"], comparison["wins_candidate"]) == (
            found.wins_a, found.wins_b)
        shown = live["clickthrough"]
        red = [r for r in records if r["query"] == "red shirt"]  # the review one too
        assert sum(c["shown"] for c in shown.values()) == sum(len(r["product_ids"])
                                                               for r in red)
        assert sum(c["clicked"] for c in shown.values()) == 3   # three clicked searches
    finally:
        remove_alias(candidate, CANDIDATE)


def test_explored_searches_show_the_same_results_in_a_random_order(searcher, tmp_path):
    from fastapi.testclient import TestClient

    from fusion_model.feedback.events import EventLog, EventSettings

    events = EventLog(EventSettings(str(tmp_path / "events")), salt="s")
    with TestClient(create_app(searcher, follow_interval=0, events=events, explore=1.0),
                    base_url=LOCAL) as http:
        ranked = [h["product_id"] for h in http.get("/search", params={
            "q": "red shirt", "k": 8, "review": "true"}).json()["hits"]]
        explored = [[h["product_id"] for h in http.get("/search", params={
            "q": "red shirt", "k": 8}).json()["hits"]] for _ in range(5)]
    assert all(sorted(order) == sorted(ranked) for order in explored)
    assert any(order != ranked for order in explored)
    with pytest.raises(BadInputError, match="explore"):
        create_app(searcher, events=events, explore=1.5)


def test_explored_searches_with_a_depth_draw_their_page_from_below_it(searcher, tmp_path):
    from fastapi.testclient import TestClient

    from fusion_model.feedback.events import SEARCHES, EventLog, EventSettings, read_events

    events = EventLog(EventSettings(str(tmp_path / "events")), salt="s")
    with TestClient(create_app(searcher, follow_interval=0, events=events, explore=1.0,
                               explore_depth=20), base_url=LOCAL) as http:
        deep = [h["product_id"] for h in http.get("/search", params={
            "q": "red shirt", "k": 20, "review": "true"}).json()["hits"]]
        pages = [[h["product_id"] for h in http.get("/search", params={
            "q": "red shirt", "k": 5}).json()["hits"]] for _ in range(8)]
    assert all(len(page) == 5 == len(set(page)) and set(page) <= set(deep) for page in pages)
    assert set().union(*pages) - set(deep[:5])       # products from below the top 5 shown
    logged = [record["product_ids"] for record in read_events(str(tmp_path / "events"),
                                                              SEARCHES)]
    assert sorted(map(tuple, logged)) == sorted(map(tuple, pages))  # what was shown is logged
    with pytest.raises(BadInputError, match="explore-depth"):
        create_app(searcher, events=events, explore=0.5, explore_depth=-1)


@pytest.mark.e2e
def test_the_review_page_shows_click_through_and_the_running_comparison(
        searcher, platform, tmp_path):
    """Shoppers search and click (the candidate interleaved); the review page then shows,
    for their query, each clicked product's click-through and the comparison's score."""
    from fusion_model.feedback.events import EventLog, EventSettings
    from fusion_model.registry.registry import CANDIDATE, candidate_for, remove_alias, set_alias
    from fusion_model.serving.interleaver import Interleaver

    candidate, _ = candidate_for(platform["config"].registry.model_name, platform["v2"])
    set_alias(candidate, CANDIDATE)
    events = EventLog(EventSettings(str(tmp_path / "events")), salt="s")
    browser = None
    try:
        with Uvicorn(create_app(searcher, follow_interval=0, events=events,
                                interleaver=Interleaver(searcher, 1.0, seed=1))) as url:
            for _ in range(4):
                body = httpx.get(f"{url}/search", params={"q": "red shirt", "k": 6}).json()
                httpx.post(f"{url}/events", json={
                    "search_id": body["search_id"], "product_id": body["hits"][0][
                        "product_id"], "kind": "click", "position": 1})
            browser = Browser(tmp_path / "chromium")
            browser.goto(f"{url}/?q=red+shirt&k=6")
            browser.wait_until("document.body.dataset.state === 'done' && "
                               "document.getElementById('online').textContent", "the page")
            shown = browser.evaluate("[document.getElementById('online').textContent, "
                                     "[...document.querySelectorAll('.card .ctr')]"
                                     ".map(c => c.textContent)]")
    finally:
        if browser is not None:
            browser.close()
        remove_alias(candidate, CANDIDATE)
    online, rates = shown
    assert f"candidate v{platform['v2']}" in online and "4 searches" in online, online
    assert rates and all(re.fullmatch(r"clicked \d+ of [1-4] times shown \(\d+%\)", r)
                         for r in rates), rates
    # the page's list is the champion's alone: a click on a candidate's pick may be off it
    assert 1 <= sum(int(r.split()[1]) for r in rates) <= 4


def test_searching_loads_the_query_encoder_and_the_index_but_no_training_code(platform):
    import json
    import subprocess
    import sys

    from fusion_model.index.milvus import release_lite

    release_lite(str(platform["config"].index.uri))  # this process's server holds the file
    result = subprocess.run([sys.executable, "-c", SEARCH_PROBE, *platform["overrides"]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

