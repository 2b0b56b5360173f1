"""The service's side of the online comparison: on a share of the champion's searches,
the registry's ``candidate`` (a version the offline gate passed, waiting for shoppers'
verdict) is searched too and both rankings are merged by team-draft interleaving
(``feedback/interleaving.py``); the search record keeps which team showed each result."""

from __future__ import annotations

import logging
import random
import threading
import time

from fusion_model.feedback.interleaving import team_draft
from fusion_model.serving.searcher import ChampionSearcher, SearchResult

log = logging.getLogger(__name__)
RECHECK_SECONDS = 30.0   # how long the candidate alias is trusted before it is read again


class Interleaver:
    """Decides which searches are interleaved, against which candidate version."""

    def __init__(self, searcher: ChampionSearcher, share: float,
                 recheck_seconds: float = RECHECK_SECONDS, seed: int | None = None):
        if not 0 < share <= 1:
            raise ValueError(f"an interleaving share is in (0, 1], not {share}")
        self.searcher = searcher
        self.share = share
        self.recheck_seconds = recheck_seconds
        self.rng = random.Random(seed)
        self.interleaved = 0
        self._lock = threading.Lock()
        self._candidate: str | None = None
        self._checked = float("-inf")

    def candidate(self) -> str | None:
        """The ``candidate`` version other than the champion (None: no comparison runs, or
        the registry cannot say). Read from the registry on first use, then re-read every
        ``recheck_seconds`` on a background thread: a search never waits for MLflow."""
        with self._lock:
            first = self._checked == float("-inf")
            stale = time.monotonic() - self._checked >= self.recheck_seconds
            if stale:
                self._checked = time.monotonic()
        if first:
            self._refresh()
        elif stale:
            threading.Thread(target=self._refresh, name="candidate-alias", daemon=True).start()
        return self._candidate

    def _refresh(self) -> None:
        from fusion_model.registry.registry import CANDIDATE, get_alias

        try:
            found = get_alias(self.searcher.config.registry.model_name, CANDIDATE)
        except Exception as error:  # noqa: BLE001 - a registry hiccup stops comparing only
            log.warning("interleaving paused: the candidate alias cannot be read (%s)", error)
            found = None
        served = self.searcher.served
        version = found.version if found and (served is None
                                              or found.version != served.version) else None
        if version != self._candidate:
            log.info("interleaving %s", f"candidate v{version} with the champion on "
                     f"{self.share:.0%} of searches" if version else "stopped: no candidate")
        self._candidate = version

    def pick(self) -> str | None:
        """The candidate version when this search is to be interleaved, else None."""
        version = self.candidate()
        if version is None or self.rng.random() >= self.share:
            return None
        return version

    def merge(self, champion: SearchResult, candidate: SearchResult, k: int
              ) -> tuple[list[tuple[dict, str]], dict]:
        """The drafted hits, each with the version whose team showed it (its score and
        photo are that version's), and the comparison's record: both versions and the
        team of each rank (A: champion, B: candidate)."""
        results = {"A": champion, "B": candidate}
        found = {team: {hit["product_id"]: hit for hit in result.hits}
                 for team, result in results.items()}
        with self._lock:
            shown, teams = team_draft([h["product_id"] for h in champion.hits],
                                      [h["product_id"] for h in candidate.hits], k, self.rng)
            self.interleaved += 1
        hits = [(found[team][pid], results[team].version) for pid, team in zip(shown, teams)]
        return hits, {"A": champion.version, "B": candidate.version, "teams": teams}
