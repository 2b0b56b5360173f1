"""The online comparison read back from the search events: every interleaved search of a
candidate version, the positions shoppers interacted with, and the preference test
(``interleaving.preference``) over the searches one side won."""

from __future__ import annotations

import datetime as dt
import logging

from fusion_model.feedback.events import INTERACTIONS, SEARCHES, read_events
from fusion_model.feedback.interleaving import Preference, preference, winner

log = logging.getLogger(__name__)


def interleaved_teams(root: str, candidate: str, since: dt.date | None = None
                      ) -> dict[str, list[str]]:
    """``{search_id: teams}`` of the searches that interleaved ``candidate`` (as B)."""
    found = {}
    for record in read_events(root, SEARCHES, since):
        comparison = record.get("interleaving") or {}
        teams = comparison.get("teams") if isinstance(comparison, dict) else None
        if str(comparison.get("B", "")) == str(candidate) and isinstance(teams, list):
            found[str(record.get("search_id"))] = [str(t) for t in teams]
    return found


def interacted_positions(root: str, search_ids: set[str], since: dt.date | None = None
                         ) -> dict[str, set[int]]:
    """The 1-based positions each of ``search_ids`` was clicked (or carted, or bought) at."""
    positions: dict[str, set[int]] = {}
    for event in read_events(root, INTERACTIONS, since):
        search_id, position = event.get("search_id"), event.get("position")
        if search_id in search_ids and isinstance(position, int):
            positions.setdefault(search_id, set()).add(position)
    return positions


def online_preference(root: str, candidate: str, since: dt.date | None = None
                      ) -> Preference:
    """Shoppers' preference between the champion (A) and ``candidate`` (B): one credit per
    interacted position to the team that showed it, the search to the team with more."""
    teams = interleaved_teams(root, candidate, since)
    clicked = interacted_positions(root, set(teams), since)
    return preference(winner(shown, clicked.get(search_id, ()))
                      for search_id, shown in teams.items())


def describe(found: Preference) -> str:
    """One line for people: wins, share and interval, p-value."""
    decided = found.wins_a + found.wins_b
    return (f"{found.searches} interleaved searches, {decided} decided: candidate won "
            f"{found.wins_b}, champion {found.wins_a} (candidate share {found.share_b:.3f}, "
            f"95% CI [{found.low:.3f}, {found.high:.3f}], sign test p={found.p_value:.3g})")
