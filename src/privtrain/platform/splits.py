"""The data owner's train/test split of an upload, and the row counts published for it.

The split is the owner's: declared in the signed manifest (the anonymizer's
``[split]`` policy, or the ``split`` tensor of a packed image file), or, for a
table whose manifest declares none, at upload. A trainer never chooses rows.

The exact counts of the two splits are private (they differ between neighbouring
datasets), so the server publishes them with Gaussian noise: the vector (training
rows, test rows) has L2 sensitivity 1 under adding or removing one row (the row
falls in one split at most), so N(0, σ²) on each count is one Gaussian mechanism of
noise multiplier σ, charged to the dataset's ledger as the history ``[(σ, 1, 1)]``.
Everything a trainer later sees of the dataset's size (q, steps, accuracy
denominators) is a function of these published counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privtrain.datasets.image_manifest import IMAGE_KIND
from privtrain.errors import FailedPrecondition, InvalidInput, shown
from privtrain.trainer.accounting import History
from privtrain.trainer.dp_randomness import DPRandomness, Stream
from privtrain.trainer.engine import TableSplit


@dataclass(frozen=True)
class PublishedCounts:
    """Noisy counts of the owner's training and test rows, and the noise they carry."""

    train_rows: int
    test_rows: int
    noise_multiplier: float

    @property
    def rows(self) -> int:
        """Published rows in either split: the n of the δ < 1/n rule."""
        return self.train_rows + self.test_rows

    @property
    def history(self) -> History:
        """What publishing them costs: one Gaussian mechanism of sensitivity 1."""
        return [(self.noise_multiplier, 1.0, 1)]


def declared_split(manifest: dict[str, Any], column: str, train: str, test: str) -> dict[str, Any]:
    """The split of an upload: the manifest's, else the one declared with the upload.

    Returns the declaration stored with the dataset: for a table
    ``{"column", "train", "test", ...}`` (plus the manifest's method and test share),
    for images ``{"method": "random_holdout", "tensor": "split", "test_share"}``.

    Raises
    ------
    InvalidInput
        No split anywhere, an incomplete one, or one at upload that contradicts the
        manifest's.
    """
    given = (column, train, test)
    if manifest.get("kind") == IMAGE_KIND:
        if any(given):
            raise InvalidInput("an image dataset's split is the `split` tensor of its packed file; "
                               "do not declare one at upload")
        return dict(manifest.get("split") or {"method": "random_holdout", "tensor": "split"})
    if manifest.get("split") is not None:
        split = dict(manifest["split"])
        if any(given) and given != (split.get("column"), split.get("train"), split.get("test")):
            raise InvalidInput(
                f"the manifest declares the split {shown(split.get('column'))} == "
                f"{shown(split.get('train'))}/{shown(split.get('test'))}; the upload may not "
                "declare another"
            )
        return split
    if not all(given):
        raise InvalidInput(
            "the manifest declares no train/test split: declare it in the anonymization policy's "
            "[split] section, or at upload with --split-column, --train-split and --test-split"
        )
    if train == test:
        raise InvalidInput(f"train_split and test_split must differ, both are {shown(train)}")
    return {"method": "column", "column": column, "train": train, "test": test}


def table_split(split: dict[str, Any]) -> TableSplit:
    """The trainer's view of a table's stored split declaration."""
    return TableSplit(column=str(split["column"]), train=str(split["train"]), test=str(split["test"]))


def count_split(path: Path, kind: str, split: dict[str, Any]) -> tuple[int, int]:
    """Exact (training rows, test rows) of a stored file under its split (private figures).

    Raises
    ------
    InvalidInput
        The split column is not in the table, or the file is not a Parquet table.
    FailedPrecondition
        The stored file cannot be read.
    """
    try:
        if kind == IMAGE_KIND:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as handle:
                is_test = handle.get_tensor("split").astype(bool)
            return int((~is_test).sum()), int(is_test.sum())
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        column = str(split["column"])
        if column not in pq.read_schema(path).names:
            raise InvalidInput(f"the split column {shown(column)} is not a column of the dataset")
        values = pq.read_table(path, columns=[column]).column(column).cast("string")
        train = int(pc.sum(pc.equal(values, str(split["train"]))).as_py() or 0)
        test = int(pc.sum(pc.equal(values, str(split["test"]))).as_py() or 0)
        return train, test
    except Exception as exc:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowException):  # ArrowInvalid, ArrowTypeError...: not a table
            text = str(exc).strip()
            first = text.splitlines()[0][:200] if text else type(exc).__name__
            raise InvalidInput(f"the uploaded file is not a readable Parquet table with the "
                               f"declared split column ({first})") from None
        if isinstance(exc, OSError):
            raise FailedPrecondition(f"the stored dataset file cannot be read: "
                                     f"{exc.strerror or exc}") from None
        raise


def publish_counts(train: int, test: int, noise_multiplier: float) -> PublishedCounts:
    """Add N(0, σ²) to each exact count (fresh CSPRNG key), round, and floor at 0."""
    randomness = DPRandomness.fresh()
    noise = randomness.standard_normal(Stream.ROW_COUNTS, 0, 2).double().tolist()
    return PublishedCounts(
        train_rows=max(0, round(train + noise_multiplier * noise[0])),
        test_rows=max(0, round(test + noise_multiplier * noise[1])),
        noise_multiplier=noise_multiplier,
    )


def check_delta(delta: float, rows: int, what: str) -> None:
    """Refuse δ ≥ 1/n: with such a δ, releasing one whole row at random would be (0, δ)-DP.

    Raises
    ------
    InvalidInput
        ``delta`` is not below 1 / ``rows`` (the published count).
    """
    if rows < 1 or delta * rows >= 1:
        bound = f"1/{rows} = {1 / rows:.3g}" if rows >= 1 else "1/n"
        raise InvalidInput(f"{what} {delta:g} must be below {bound}, one over the dataset's "
                           "published rows")


def split_json(split: dict[str, Any]) -> str:
    """The stored form of a split declaration."""
    return json.dumps(split, sort_keys=True)
