"""Client-side re-evaluation of downloaded parameters, on a table or on packed images.

For whoever holds the data (the data owner, or the operator): the server releases
only a noisy test accuracy to the trainer; this computes the exact one.
"""

from __future__ import annotations

import json

import pandas as pd
import safetensors.numpy
import torch
from safetensors import SafetensorError

from privtrain.datasets.image_arrays import LABEL, read_image_arrays
from privtrain.datasets.image_manifest import TABLE_KIND
from privtrain.errors import InvalidInput
from privtrain.trainer.checkpoints import load_parameters
from privtrain.trainer.engine import (
    TableSplit,
    count_correct,
    image_model_from_parameters,
    model_from_parameters,
    split_rows,
)


def evaluate_parameters(data: bytes, table: pd.DataFrame) -> tuple[float, int]:
    """Accuracy of a parameter file on the held-out rows of ``table``.

    The model, the feature encoding and the owner's split come from the file's
    metadata, and rows are selected as the server selects them (rows whose label is
    not a declared class are left out), so the figure is the server's exact one.

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
    split = TableSplit(**json.loads(metadata["split"]))
    _, test = split_rows(table, split)
    features, labels = encoder.encode_labelled(test)
    if not len(labels):
        raise InvalidInput(f"table has no labelled rows with {split.column} == {split.test!r}")
    return count_correct(model, features, labels, torch.device("cpu")) / len(labels), len(labels)


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
    """Accuracy of a parameter file on the test rows of a packed image file (its ``split`` tensor).

    Returns
    -------
    (accuracy, rows) : (float, int)

    Raises
    ------
    InvalidInput
        Not a privtrain parameter file of an image job, or ``data`` is not a packed file
        of the images it was trained on (shape, labels or layout differ).
    """
    tensors, metadata = load_parameters(parameters)
    model, info = image_model_from_parameters(tensors, metadata)
    try:
        rows = len(safetensors.numpy.load(data)[LABEL])
    except (SafetensorError, KeyError):
        raise InvalidInput("the packed file is not a privtrain image dataset") from None
    features, classes, is_test = read_image_arrays(data, {
        "output_rows": rows, "feature_shape": info["feature_shape"],
        "label_values": info["label_values"],
    })
    if not is_test.any():
        raise InvalidInput("the packed file marks no test rows")
    correct = count_correct(model, features[is_test], classes[is_test], torch.device("cpu"))
    return correct / int(is_test.sum()), int(is_test.sum())
