"""Feature encoding from the manifest's declared public column domains.

The encoding is fixed by the data owner's declared domains (category lists,
numeric bounds), never by statistics of the private rows: a mean, a vocabulary
or a min/max read off the data would itself leak and would not be covered by
the DP guarantee.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privtrain.errors import InvalidInput, shown

# A numeric domain this wide is encoded as log1p: a linear scale would squash
# most of the values (e.g. capital gains 0..99,999) into a sliver near zero.
LOG_SCALE_SPAN = 1000.0


@dataclass(frozen=True)
class ColumnEncoding:
    """How one column becomes features.

    ``kind`` is ``categorical`` (one-hot over ``values`` plus one slot for
    missing or out-of-domain values) or ``numeric`` (clipped to
    ``[lower, upper]``, scaled to [0, 1], linear or log1p, plus a missing flag).
    """

    name: str
    kind: str
    values: tuple[str, ...] = ()
    lower: float = 0.0
    upper: float = 1.0
    log_scale: bool = False

    @property
    def width(self) -> int:
        """Number of feature columns this column produces."""
        return len(self.values) + 1 if self.kind == "categorical" else 2


@dataclass(frozen=True)
class FeatureEncoder:
    """Encodes a table into ``(rows, width)`` float32 features and int64 labels.

    Build it with :meth:`from_manifest`; serialize with :meth:`to_json` so a
    client can rebuild the exact encoding next to the downloaded parameters.
    """

    columns: tuple[ColumnEncoding, ...]
    target: str
    classes: tuple[str, ...]

    @property
    def width(self) -> int:
        """Total feature width."""
        return sum(c.width for c in self.columns)

    @classmethod
    def from_manifest(
        cls,
        domains: Mapping[str, Mapping[str, Any]],
        *,
        target: str,
        features: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> FeatureEncoder:
        """Build from the manifest's ``columns`` mapping.

        Parameters
        ----------
        domains : mapping
            ``{column: {"type": "categorical", "values": [...]}}`` or
            ``{"type": "numeric", "lower": x, "upper": y}``; other types
            (``identifier``) are not usable as features.
        target : str
            Label column; must be categorical.
        features : sequence of str
            Explicit feature columns; empty means every usable column.
        exclude : sequence of str
            Columns never used as features (e.g. the split column).

        Raises
        ------
        InvalidInput
            The target or a requested feature is missing, unusable or malformed.
        """
        if target not in domains:
            raise InvalidInput(f"target_column {shown(target)} is not declared in the dataset "
                               "manifest")
        target_domain = domains[target]
        if target_domain.get("type") != "categorical" or len(target_domain.get("values", [])) < 2:
            raise InvalidInput(
                f"target_column {shown(target)} must be categorical with at least 2 declared values"
            )
        skip = {target, *exclude}
        if features:
            unknown = [f for f in features if f not in domains]
            if unknown:
                raise InvalidInput(f"feature column(s) {shown(unknown)} are not declared in the "
                                   "manifest")
            excluded = [f for f in features if f in exclude]
            if excluded:
                raise InvalidInput(f"feature column(s) {shown(excluded)} cannot be features (the "
                                   "data owner's train/test split)")
            names = list(features)
        else:
            names = [
                n for n, d in domains.items()
                if n not in skip and d.get("type") in ("categorical", "numeric")
            ]
        encodings = [_column_encoding(name, domains[name]) for name in names]
        if not encodings:
            raise InvalidInput("the manifest declares no usable feature column")
        return cls(
            columns=tuple(encodings),
            target=target,
            classes=tuple(str(v) for v in target_domain["values"]),
        )

    def encode(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode rows.

        Returns
        -------
        features : ndarray, shape (rows, width), float32
        labels : ndarray, shape (rows,), int64 index into ``classes``

        Raises
        ------
        InvalidInput
            A column is missing, or a label is outside the declared classes.
        """
        missing = [c.name for c in self.columns if c.name not in table.columns]
        if self.target not in table.columns:
            missing.append(self.target)
        if missing:
            raise InvalidInput(f"dataset lacks column(s) {missing}")
        blocks = [_encode_column(c, table[c.name]) for c in self.columns]
        features = np.concatenate(blocks, axis=1).astype(np.float32, copy=False)
        label_index = {v: i for i, v in enumerate(self.classes)}
        labels = table[self.target].astype("string").map(label_index)
        if labels.isna().any():
            bad = table[self.target][labels.isna()].astype("string").fillna("<missing>").unique()[:5]
            raise InvalidInput(
                f"target column {self.target!r} holds value(s) {list(bad)} outside the declared "
                f"classes {list(self.classes)}"
            )
        return features, np.array(labels.to_numpy(dtype=np.int64), dtype=np.int64)

    def encode_labelled(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode the rows whose label is one of the declared classes; drop the others.

        For training and the released evaluation: whether some row's label is missing
        or undeclared must not decide whether a job fails (that would be a release of
        its own), so such rows are left out, each on its own. Shapes as :meth:`encode`.

        Raises
        ------
        InvalidInput
            A column is missing.
        """
        if self.target not in table.columns:
            raise InvalidInput(f"dataset lacks column(s) {[self.target]}")
        known = table[self.target].astype("string").isin(self.classes).fillna(False).to_numpy(dtype=bool)
        return self.encode(table[known])

    def to_json(self) -> str:
        """Canonical JSON of the encoding."""
        return json.dumps(
            {
                "target": self.target,
                "classes": list(self.classes),
                "columns": [
                    {
                        "name": c.name, "kind": c.kind, "values": list(c.values),
                        "lower": c.lower, "upper": c.upper, "log_scale": c.log_scale,
                    }
                    for c in self.columns
                ],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureEncoder:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(
            columns=tuple(
                ColumnEncoding(
                    name=c["name"], kind=c["kind"], values=tuple(c["values"]),
                    lower=float(c["lower"]), upper=float(c["upper"]), log_scale=bool(c["log_scale"]),
                )
                for c in data["columns"]
            ),
            target=data["target"],
            classes=tuple(data["classes"]),
        )


def _column_encoding(name: str, domain: Mapping[str, Any]) -> ColumnEncoding:
    kind = domain.get("type")
    if kind == "categorical":
        values = tuple(str(v) for v in domain.get("values", []))
        if not values:
            raise InvalidInput(f"column {shown(name)}: categorical domain declares no values")
        return ColumnEncoding(name=name, kind="categorical", values=values)
    if kind == "numeric":
        try:
            lower, upper = float(domain["lower"]), float(domain["upper"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(f"column {shown(name)}: numeric domain needs lower and "
                               "upper") from None
        if not (math.isfinite(lower) and math.isfinite(upper) and upper > lower):
            raise InvalidInput(f"column {shown(name)}: numeric domain [{lower}, {upper}] is empty")
        return ColumnEncoding(
            name=name, kind="numeric", lower=lower, upper=upper,
            log_scale=(upper - lower) > LOG_SCALE_SPAN,
        )
    raise InvalidInput(f"column {shown(name)} of type {shown(kind)} cannot be used as a feature")


def _encode_column(enc: ColumnEncoding, series: pd.Series) -> np.ndarray:
    rows = len(series)
    if enc.kind == "categorical":
        index = {v: i for i, v in enumerate(enc.values)}
        codes = series.astype("string").map(index).fillna(len(enc.values)).to_numpy(dtype=np.int64)
        block = np.zeros((rows, enc.width), dtype=np.float32)
        block[np.arange(rows), codes] = 1.0
        return block
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(numbers)
    clipped = np.clip(np.nan_to_num(numbers, nan=enc.lower), enc.lower, enc.upper) - enc.lower
    span = enc.upper - enc.lower
    scaled = np.log1p(clipped) / math.log1p(span) if enc.log_scale else clipped / span
    return np.stack([scaled, missing.astype(np.float64)], axis=1).astype(np.float32)
