"""Registry of column operators, keyed by the name a policy uses (``operator = "hmac"``).

Like Opacus' ``register_grad_sampler``: a new operator is one module with a
decorated class, not an edit to a central ``if`` chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pandas as pd

if TYPE_CHECKING:
    from privtrain.anonymize.keys import SecretKey
    from privtrain.anonymize.policy import ColumnPolicy
    from privtrain.anonymize.pseudonym_store import Session


@dataclass(frozen=True)
class OperatorContext:
    """Everything an operator may need besides the column's values.

    Attributes
    ----------
    column : ColumnPolicy
        The policy entry of the column.
    key : SecretKey
        The data owner's HMAC key.
    locale : str
        Faker locale of pseudonyms.
    source : str
        Input file name, quoted in errors together with the 1-based data row.
    level : int | None
        Generalization level chosen by the lattice search (``generalize`` only).
    frame : pd.DataFrame | None
        The raw rows at hand (a chunk when streaming; its index is the file's 0-based
        row number), for operators that read another column (``date_shift`` reads its
        subject column, ``scrub`` the identifier columns' values).
    known_names : frozenset[str] | None
        Every name in the whole file's ``names_from`` columns, for ``scrub`` when the
        rows at hand are only a chunk; None means take them from ``frame``.
    pseudonym_store : Session | None
        The open claiming session of the owner's pseudonym store, for ``pseudonym``;
        None: a store in memory for the one call.
    """

    column: ColumnPolicy
    key: SecretKey
    locale: str
    source: str
    level: int | None = None
    frame: pd.DataFrame | None = None
    known_names: frozenset[str] | None = None
    pseudonym_store: Session | None = None


class Operator(Protocol):
    """A column transformation.

    ``transform`` gets the whole column (index = 0-based data row) and returns the
    output column, or ``None`` to drop it. Implementations work per distinct value,
    never per cell, and keep missing cells missing (case C-A04).
    ``output_domain`` is the column's entry in the manifest's ``columns`` (what a
    trainer may rely on), derived from the policy, never from the data.
    """

    name: str

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series | None: ...

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any] | None: ...


_REGISTRY: dict[str, Operator] = {}

_T = TypeVar("_T")


def register_operator(name: str) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: register an instance of the class under ``name``.

    Raises
    ------
    ValueError
        ``name`` is already taken (two plugins fighting over a name is a bug, not a user error).
    """

    def deco(cls: type[_T]) -> type[_T]:
        if name in _REGISTRY:
            raise ValueError(f"anonymization operator {name!r} is registered twice")
        inst = cls()
        inst.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = inst  # type: ignore[assignment]
        return cls

    return deco


def _load_builtins() -> None:
    # Imported lazily: the operator modules need the policy types, and the policy
    # module asks this registry which operator names are valid.
    from privtrain.anonymize.operators import (  # noqa: F401
        date_shift,
        drop,
        generalize,
        hmac_token,
        keep,
        mask,
        noise,
        pseudonym,
        scrub,
    )


def get_operator(name: str) -> Operator:
    """Return the operator registered as ``name`` (``KeyError`` if none)."""
    _load_builtins()
    return _REGISTRY[name]


def registered_operators() -> frozenset[str]:
    """Names of every registered operator."""
    _load_builtins()
    return frozenset(_REGISTRY)
