"""E.164 normalization of phone numbers before they are tokenized (``normalize = "phone"``).

``(305) 555-0134``, ``305.555.0134`` and ``+1 305 555 0134`` are one number; written
as E.164 (``+13055550134``, ITU-T E.164) they get one ``hmac`` token and one
``pseudonym``. Numbers written without ``+`` are read in the policy's
``phone_region``. Parsing uses Google's libphonenumber rules (the ``phonenumbers``
package); a value that is not a possible number in that region is reported with
file, row and column, never tokenized as it stands (two spellings of one number
would then get two tokens). Work is per distinct value.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import phonenumbers

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.values import distinct_normalized, first_row


def e164(text: str, region: str) -> str | None:
    """``+CCNNN...`` for a possible phone number, None otherwise."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_normalized(
    values: pd.Series, region: str, source: str, column: str
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Like :func:`privtrain.anonymize.values.distinct_normalized`, with E.164 values.

    Returns
    -------
    codes : ndarray of int64, shape (n,)
        Index into ``uniques``; -1 for a missing cell.
    uniques : list of str
        Distinct E.164 numbers.

    Raises
    ------
    PolicyError
        A value is not a possible phone number of ``region``; names file, row and column
        (never the value: it is a direct identifier).
    """
    codes, uniques = distinct_normalized(values)
    numbers = [e164(u, region) for u in uniques]
    for i, number in enumerate(numbers):
        if number is None:
            raise PolicyError(
                f"{source}: row {first_row(codes == i)}, column {column!r}: not a phone number "
                f"(region {region}); fix the value, list it in missing_values, or drop "
                'normalize = "phone"'
            )
    merged_codes, merged = pd.factorize(pd.Series(numbers, dtype=object))
    lookup = np.append(np.asarray(merged_codes, dtype=np.int64), np.int64(-1))
    return lookup[codes], [str(m) for m in merged]
