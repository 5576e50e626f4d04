"""Titles shared by the markdown report and the figures.

Both import them from here: `plots` imports nothing of `report`, and `report` loads
`plots` (matplotlib) only when figures are asked for.
"""

from __future__ import annotations

TITLES = {
    "paper": "Paper protocol (as published)",
    "defense-aware": "Defense-aware protocol, adaptive attacker (Kerckhoffs)",
}
"""Section and panel title of each protocol, in the order the report shows them."""
