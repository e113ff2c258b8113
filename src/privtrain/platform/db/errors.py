"""Errors raised by the persistence layer (subclasses of the shared hierarchy)."""

from __future__ import annotations

from privtrain.errors import FailedPrecondition
from privtrain.platform.job_states import InvalidTransition


class AlreadyExists(FailedPrecondition):
    """A row with that unique name already exists."""


class PrivacyBudgetExceeded(FailedPrecondition):
    """A job asks for more (ε, δ) than its dataset has left."""


__all__ = ["AlreadyExists", "InvalidTransition", "PrivacyBudgetExceeded"]
