"""A shopper simulator, to test the feedback loop without real traffic: a shopper
examines rank r with probability ``examine ** (r - 1)`` (a position-based click model),
clicks an examined product with a probability set by its graded relevance, with noise,
and sometimes buys what they clicked."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Shopper:
    examine: float = 0.8                                  # P(examine r+1 | examine r)
    click_by_grade: tuple[float, ...] = (0.05, 0.35, 0.6, 0.85)   # index: grade
    buy_after_click: tuple[float, ...] = (0.0, 0.05, 0.15, 0.3)
    noise: float = 0.05     # a click probability is moved by up to this much at random

    def click_probability(self, grade: int, rng: random.Random) -> float:
        grade = min(max(grade, 0), len(self.click_by_grade) - 1)
        jitter = rng.uniform(-self.noise, self.noise)
        return min(1.0, max(0.0, self.click_by_grade[grade] + jitter))

    def buy_probability(self, grade: int) -> float:
        return self.buy_after_click[min(max(grade, 0), len(self.buy_after_click) - 1)]


def simulate_interactions(shown: Sequence[str], grades: Mapping[str, int],
                          shopper: Shopper, rng: random.Random) -> list[tuple[int, str, str]]:
    """One shopper's interactions with a result list: (position, product, kind) with
    kind ``click`` or ``purchase`` (a purchase follows its click)."""
    events = []
    examined = 1.0
    for position, product in enumerate(shown, 1):
        if position > 1:
            examined *= shopper.examine
        if rng.random() >= examined:
            continue
        grade = grades.get(product, 0)
        if rng.random() < shopper.click_probability(grade, rng):
            events.append((position, product, "click"))
            if rng.random() < shopper.buy_probability(grade):
                events.append((position, product, "purchase"))
    return events
