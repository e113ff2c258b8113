"""Client-side re-evaluation of downloaded parameters, on a table or on packed images."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import torch

from privtrain.datasets.image_arrays import read_image_arrays, split_indices
from privtrain.datasets.image_manifest import TABLE_KIND
from privtrain.errors import InvalidInput
from privtrain.trainer.checkpoints import load_parameters
from privtrain.trainer.engine import accuracy, image_model_from_parameters, model_from_parameters


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


def parameters_dataset_kind(parameters: bytes) -> str:
    """``image_array`` or ``table``: the kind of dataset a parameter file was trained on.

    Raises
    ------
    InvalidInput
        Not a privtrain parameter file.
    """
    _, metadata = load_parameters(parameters)
    try:
        return str(json.loads(metadata["features"]).get("kind", TABLE_KIND))
    except (KeyError, ValueError, AttributeError):
        raise InvalidInput("the parameter file carries no privtrain features metadata") from None


def evaluate_image_parameters(parameters: bytes, data: bytes) -> tuple[float, int]:
    """Accuracy of a parameter file on the test rows of the packed image file it was trained on.

    The model, the label values and the seeded split come from the parameters'
    metadata, so the figure is computed exactly as the server computed it.

    Returns
    -------
    (accuracy, rows) : (float, int)

    Raises
    ------
    InvalidInput
        Not a privtrain parameter file of an image job, or ``data`` is not the packed
        file the job trained on (its SHA-256 differs).
    """
    tensors, metadata = load_parameters(parameters)
    model, info = image_model_from_parameters(tensors, metadata)
    split = json.loads(metadata["split"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != split["dataset_sha256"]:
        raise InvalidInput(f"the packed file has sha256 {digest}; the job trained on "
                           f"{split['dataset_sha256']}")
    features, classes = read_image_arrays(data, {
        "output_rows": split["rows"], "feature_shape": info["feature_shape"],
        "label_values": info["label_values"],
    })
    _, test = split_indices(int(split["rows"]), int(split["seed"]), float(split["test_fraction"]))
    return accuracy(model, features[test], classes[test], torch.device("cpu")), len(test)
