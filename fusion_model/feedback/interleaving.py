"""Online comparison of two rankers by team-draft interleaving (Radlinski, Kurup and
Joachims, CIKM 2008): each search shows one list drafted from both rankings, each
product credited to the team that picked it; a click credits its team, and the search
goes to the team with more credited clicks. The preference test is a two-sided sign test
over the searches one team won, with a Wilson interval for B's share of the wins."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence

A, B = "A", "B"   # A: the champion, B: the candidate


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: random.Random
               ) -> tuple[list[str], list[str]]:
    """Interleave rankings ``a`` and ``b`` into at most ``k`` distinct products; returns
    the products and, per position, the team that picked it. The team with fewer picks
    picks next (a coin decides a tie); each takes its best product not yet shown."""
    shown: list[str] = []
    teams: list[str] = []
    seen: set[str] = set()
    next_a = next_b = picks_a = picks_b = 0
    while len(shown) < k:
        next_a, next_b = _unseen(a, next_a, seen), _unseen(b, next_b, seen)
        a_left, b_left = next_a < len(a), next_b < len(b)
        if not (a_left or b_left):
            break
        take_a = picks_a < picks_b or (picks_a == picks_b and rng.random() < 0.5)
        if (take_a and not a_left) or (not take_a and not b_left):
            take_a = not take_a
        product = a[next_a] if take_a else b[next_b]
        shown.append(product)
        teams.append(A if take_a else B)
        seen.add(product)
        picks_a, picks_b = picks_a + take_a, picks_b + (not take_a)
    return shown, teams


def _unseen(ranking: Sequence[str], start: int, seen: set[str]) -> int:
    while start < len(ranking) and ranking[start] in seen:
        start += 1
    return start


def winner(teams: Sequence[str], clicked_positions: Iterable[int]) -> str | None:
    """The team credited with more of a search's clicked positions (1-based); None for
    a tie (including no click)."""
    credited = [teams[p - 1] for p in set(clicked_positions) if 1 <= p <= len(teams)]
    a, b = credited.count(A), credited.count(B)
    return A if a > b else B if b > a else None


@dataclasses.dataclass(frozen=True)
class Preference:
    """The outcome of an interleaved comparison."""

    wins_a: int
    wins_b: int
    ties: int
    share_b: float        # B's share of the decided searches (0.5: no preference)
    low: float            # Wilson 95% interval of that share
    high: float
    p_value: float        # two-sided sign test of share_b == 0.5

    @property
    def searches(self) -> int:
        return self.wins_a + self.wins_b + self.ties

    def prefers(self, alpha: float = 0.05) -> str | None:
        """The team significantly preferred at level ``alpha``, or None."""
        if self.p_value >= alpha:
            return None
        return B if self.share_b > 0.5 else A


def preference(winners: Iterable[str | None], z: float = 1.959964) -> Preference:
    """The sign test and interval over per-search winners (``winner``'s results)."""
    outcomes = list(winners)
    wins_a, wins_b = outcomes.count(A), outcomes.count(B)
    decided = wins_a + wins_b
    share = wins_b / decided if decided else 0.5
    low, high = _wilson(wins_b, decided, z)
    return Preference(wins_a, wins_b, len(outcomes) - decided, share, low, high,
                      sign_test(wins_b, decided))


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(successes: int, n: int) -> float:
    """Two-sided exact binomial test of ``successes`` in ``n`` against one half."""
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(successes, n, 0.5).pvalue)
