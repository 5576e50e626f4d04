"""Footprint: the size of the serving install (no torch) from installed metadata."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    """What ``dist`` needs on this platform with ``extras`` asked for."""
    needed = []
    for line in dist.requires or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
            needed.append(requirement)
    return needed


def _dist_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        try:
            total += Path(str(dist.locate_file(file))).stat().st_size
        except OSError:
            continue
    return total


def serving_install_size(root: str = "dynanoise") -> dict[str, Any]:
    """Bytes on disk of ``root`` and everything it requires without its optional
    extras (audit, dev), as installed here: the serving install, without torch."""
    sizes: dict[str, int] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    missing: set[str] = set()
    stack: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while stack:
        name, extras = stack.pop()
        key = (_canonical(name), extras)
        if key in visited:
            continue
        visited.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(_canonical(name))
            continue
        sizes.setdefault(_canonical(name), _dist_bytes(dist))
        for requirement in _requirements(dist, extras):
            stack.append((requirement.name, frozenset(requirement.extras)))
    largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:8]
    return {
        "total_mb": sum(sizes.values()) / 2**20,
        "distributions": len(sizes),
        "largest_mb": {name: size / 2**20 for name, size in largest},
        "missing": sorted(missing),
        "includes_torch": "torch" in sizes,
    }
