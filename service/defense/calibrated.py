"""The lossy output modes: answers that are a deterministic, many-to-one view of the
clean output, so that no number of queries learns more than that view.

``calibrated_label``: the answer depends on the input only through the predicted label
l; it is the held-out distribution of the true class among rows predicted l.
``coarse``: the same per (label, confidence bucket), with B buckets whose edges are
quantiles of the clean top-1 probability on held-out rows. B = 1 is calibrated_label.

The tables are measured once per model on rows that are not its members (the model's
test split, recorded in its manifest) and travel in the manifest; this module only
fits and applies them. Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._softmax import FloatArray, softmax
from .params import MAX_CONFIDENCE_BUCKETS

LABEL_PRIOR_STRENGTH = 1.0
"""Pseudo-rows pulling a label's distribution towards "right with the held-out
accuracy, else uniform": a label seen on few held-out rows gets a sane answer."""
BUCKET_PRIOR_STRENGTH = 4.0
"""Pseudo-rows pulling a (label, bucket) cell towards its label's distribution."""
LABEL_MARGIN = 1e-3
"""The predicted label's probability is kept at least this much above the others."""


class CalibrationMissing(ValueError):
    """A lossy output mode was asked of a model whose manifest has no calibration."""


@dataclass(frozen=True, eq=False)
class OutputCalibration:
    """Held-out answer tables of one model, for every bucket count 1..max.

    ``edges[b - 1]``: the ascending bucket edges of the clean top-1 probability for b
    buckets (b - 1 of them, fewer where held-out confidences tie); ``tables[b - 1]``:
    (k, len(edges) + 1, k) float32, the answer for (predicted label, bucket).
    """

    n_classes: int
    rows: int
    accuracy: float
    edges: tuple[NDArray[np.float64], ...]
    tables: tuple[NDArray[np.float32], ...]

    @property
    def max_buckets(self) -> int:
        return len(self.tables)

    @classmethod
    def fit(
        cls,
        logits: FloatArray,
        labels: NDArray[np.integer[Any]],
        max_buckets: int = MAX_CONFIDENCE_BUCKETS,
    ) -> OutputCalibration:
        """Tables from a held-out set: the model's clean ``logits`` (n, k) on rows that
        are not its members, and their true ``labels``."""
        z = np.asarray(logits, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
            raise ValueError("logits (n, k) and labels (n,) with n >= 1 are required")
        k = z.shape[1]
        predicted = z.argmax(axis=1)
        confidence = softmax(z).max(axis=1)
        accuracy = float((predicted == y).mean())
        label_tables = _label_tables(predicted, y, k, accuracy)
        edges: list[NDArray[np.float64]] = []
        tables: list[NDArray[np.float32]] = []
        for b in range(1, max_buckets + 1):
            cut = np.unique(np.quantile(confidence, np.arange(1, b) / b)) if b > 1 else None
            e = np.empty(0) if cut is None else cut[(cut > confidence.min())]
            bucket = np.searchsorted(e, confidence, side="right")
            counts = np.zeros((k, len(e) + 1, k))
            np.add.at(counts, (predicted, bucket, y), 1.0)
            cells = counts + BUCKET_PRIOR_STRENGTH * label_tables[:, None, :]
            cells /= cells.sum(axis=2, keepdims=True)
            edges.append(e.astype(np.float64))
            tables.append(_as_float32_rows(_keep_label(cells)))
        return cls(k, int(z.shape[0]), accuracy, tuple(edges), tuple(tables))

    def answer(self, logits: FloatArray, buckets: int) -> NDArray[np.float32]:
        """(n, k) answers: the table row of each row's predicted label and bucket."""
        if not 1 <= buckets <= self.max_buckets:
            raise ValueError(f"buckets must be in [1, {self.max_buckets}]")
        z = np.asarray(logits)
        if z.ndim != 2 or z.shape[1] != self.n_classes:
            raise ValueError(f"logits must have shape (n, {self.n_classes})")
        predicted = z.argmax(axis=1)
        table = self.tables[buckets - 1]
        if table.shape[1] == 1:
            return np.ascontiguousarray(table[predicted, 0])
        bucket = np.searchsorted(self.edges[buckets - 1], top1_probability(z), side="right")
        return np.ascontiguousarray(table[predicted, bucket])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``calibration`` block)."""
        return {
            "n_classes": self.n_classes,
            "rows": self.rows,
            "accuracy": self.accuracy,
            "edges": [e.tolist() for e in self.edges],
            # Each float32 as its shortest decimal: read back, the same bits.
            "tables": [_shortest(t) for t in self.tables],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputCalibration:
        k = int(data["n_classes"])
        edges = tuple(np.asarray(e, dtype=np.float64).reshape(-1) for e in data["edges"])
        tables = tuple(np.asarray(t, dtype=np.float32) for t in data["tables"])
        if not tables or len(edges) != len(tables):
            raise ValueError("calibration needs one edge list per table")
        for e, t in zip(edges, tables, strict=True):
            if t.shape != (k, len(e) + 1, k) or np.any(np.diff(e) <= 0):
                raise ValueError("calibration tables and edges disagree")
            if not np.all(np.isfinite(t)) or np.any(t < 0):
                raise ValueError("calibration tables must hold probabilities")
            if np.any(np.abs(t.sum(axis=2, dtype=np.float64) - 1.0) > 1e-5):
                raise ValueError("every calibration table row must sum to 1")
        return cls(k, int(data["rows"]), float(data["accuracy"]), edges, tables)


def top1_probability(logits: FloatArray) -> NDArray[np.float64]:
    """max softmax(z) per row, in float64 (edges near 1 need the precision)."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return np.asarray(1.0 / np.exp(shifted).sum(axis=1), dtype=np.float64)


def _as_float32_rows(cells: NDArray[np.float64]) -> NDArray[np.float32]:
    """Rows as float32, normalised at that precision (what answers are sent in)."""
    rows = cells.astype(np.float32)
    rows /= rows.sum(axis=-1, keepdims=True)
    return rows


def _shortest(table: NDArray[np.float32]) -> list[Any]:
    """Nested lists of the float32 values, each written as its shortest decimal that
    reads back to the same float32 (numpy's repr of a float32)."""
    if table.ndim == 1:
        return [float(str(v)) for v in table]
    return [_shortest(row) for row in table]


def _label_tables(
    predicted: NDArray[np.int64], y: NDArray[np.int64], k: int, accuracy: float
) -> NDArray[np.float64]:
    """(k, k): P(true class | predicted label), smoothed towards "right with the
    held-out accuracy, else uniform over the other classes"."""
    counts = np.zeros((k, k))
    np.add.at(counts, (predicted, y), 1.0)
    prior = np.full((k, k), (1.0 - accuracy) / (k - 1))
    np.fill_diagonal(prior, accuracy)
    tables = counts + LABEL_PRIOR_STRENGTH * prior
    return np.asarray(tables / tables.sum(axis=1, keepdims=True), dtype=np.float64)


def _keep_label(cells: NDArray[np.float64]) -> NDArray[np.float64]:
    """Lift the predicted label's entry (cells[l, :, l]) just above every other class
    where held-out rows say otherwise, so the answer's argmax is the model's label
    and accuracy is unchanged."""
    k = cells.shape[0]
    out = cells.copy()
    own = out[np.arange(k), :, np.arange(k)]  # (k, buckets)
    others = out.copy()
    others[np.arange(k), :, np.arange(k)] = -1.0
    best_other = others.max(axis=2)
    lifted = np.maximum(own, best_other + LABEL_MARGIN)
    out[np.arange(k), :, np.arange(k)] = lifted
    return out / out.sum(axis=2, keepdims=True)
