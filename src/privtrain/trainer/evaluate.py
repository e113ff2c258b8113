"""Client-side re-evaluation of downloaded parameters."""

from __future__ import annotations

import json

import pandas as pd
import torch

from privtrain.errors import InvalidInput
from privtrain.trainer.checkpoints import load_parameters
from privtrain.trainer.engine import accuracy, model_from_parameters


def evaluate_parameters(data: bytes, table: pd.DataFrame) -> tuple[float, int]:
    """Accuracy of a parameter file on the held-out rows of ``table``.

    The model, the feature encoding and the split come from the file's
    metadata, so the figure is computed exactly as the server computed it.

    Returns
    -------
    (accuracy, rows) : (float, int)

    Raises
    ------
    InvalidInput
        Not a privtrain parameter file, or the table lacks the split or columns.
    """
    tensors, metadata = load_parameters(data)
    model, encoder = model_from_parameters(tensors, metadata)
    split = json.loads(metadata["split"])
    if split["column"] not in table.columns:
        raise InvalidInput(f"table has no split column {split['column']!r}")
    rows = table[(table[split["column"]].astype("string") == split["test"]).fillna(False)]
    if rows.empty:
        raise InvalidInput(f"table has no rows with {split['column']} == {split['test']!r}")
    features, labels = encoder.encode(rows)
    return accuracy(model, features, labels, torch.device("cpu")), len(labels)
