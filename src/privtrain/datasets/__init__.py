"""Public datasets used by examples and end-to-end tests, fetched once and cached."""

from privtrain.datasets.adult import ADULT_COLUMNS, DatasetUnavailable, fetch_adult

__all__ = ["ADULT_COLUMNS", "DatasetUnavailable", "fetch_adult"]
