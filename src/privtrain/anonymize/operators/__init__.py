"""Column operators of the anonymizer.

The built-ins (``keep``, ``drop``, ``hmac``, ``pseudonym``, ``mask``, ``generalize``,
``date_shift``, ``noise``, ``scrub``) register
themselves on first lookup through :func:`get_operator` / :func:`registered_operators`.
"""

from privtrain.anonymize.operators.registry import (
    Operator,
    OperatorContext,
    get_operator,
    register_operator,
    registered_operators,
)

__all__ = [
    "Operator",
    "OperatorContext",
    "get_operator",
    "register_operator",
    "registered_operators",
]
