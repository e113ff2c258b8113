"""``noise``: add keyed, reproducible Laplace or Gaussian noise to a numeric column.

For the cell in 0-based data row r of column c the noise comes from the 16-byte
block r of the AES-256-CTR keystream under the key
HMAC-SHA256(secret, b"privtrain/noise/v1\\x00" + c) (RFC 2104; NIST SP 800-38A CTR).
The block's two 64-bit halves give uniforms u1, u2 in (0, 1) (53 bits each), turned
into Laplace(0, b) by the inverse CDF, x = -b sgn(u1 - 1/2) ln(1 - 2|u1 - 1/2|), or
into N(0, sigma^2) by Box-Muller, x = sigma sqrt(-2 ln u1) cos(2 pi u2). The noisy
value is clipped to the column's declared [lower, upper] and rounded back to an
integer when every input value is an integer.

Why keyed and reproducible: the same file anonymized twice with the same key gives
the same output, so a data owner who re-releases a table never hands out two
independent noisy copies whose average would cancel the noise. Row-addressed
keystream blocks make the result independent of how the file is split in chunks,
and of the numpy version (no numpy random stream is involved). Without the key
nobody can predict or subtract the noise: AES is a pseudorandom function.

This is **not differential privacy**. Noise on single cells of a table whose
other columns are released exactly bounds no attacker's inference: a value's
noise is only as protective as ``scale`` is large against the value's spread,
nothing is accounted, and clipping moves mass onto the domain's bounds. Use it
to blur a sensitive measurement; the formal guarantee of the platform comes from
DP-SGD at training time.
"""

from __future__ import annotations

import hmac
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import check_bounds, to_numeric

DOMAIN = b"privtrain/noise/v1\x00"


def _uniforms(secret: bytes, column: str, first: int, count: int) -> npt.NDArray[np.float64]:
    """Uniforms in (0, 1) of rows ``first .. first + count - 1``, shape (count, 2)."""
    key = hmac.digest(secret, DOMAIN + column.encode("utf-8"), "sha256")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(first.to_bytes(16, "big"))).encryptor()
    stream = encryptor.update(bytes(16 * count)) + encryptor.finalize()
    words = np.frombuffer(stream, dtype=">u8").reshape(count, 2)
    # Top 53 bits, shifted by half a step: never exactly 0 or 1, so the logs are finite.
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def noise_draws(
    secret: bytes, column: str, rows: npt.NDArray[np.int64], distribution: str, scale: float
) -> npt.NDArray[np.float64]:
    """Noise of the given 0-based data rows, shape (len(rows),), in the column's unit.

    Parameters
    ----------
    secret : bytes
        32-byte key.
    column : str
        Column name, bound into the keystream key.
    rows : ndarray of int64
        0-based data rows (the operator's index); the same row always gets the same draw.
    distribution : str
        ``"laplace"`` (scale = b) or ``"gaussian"`` (scale = sigma).
    scale : float
        Noise scale, > 0.
    """
    if rows.size == 0:
        return np.zeros(0)
    lo, hi = int(rows.min()), int(rows.max())
    u = _uniforms(secret, column, lo, hi - lo + 1)[rows - lo]
    if distribution == "laplace":
        c = u[:, 0] - 0.5
        return -scale * np.sign(c) * np.log1p(-2.0 * np.abs(c))
    return scale * np.sqrt(-2.0 * np.log(u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])


def add_noise(
    values: pd.Series,
    secret: bytes,
    column: str,
    distribution: str,
    scale: float,
    lower: float,
    upper: float,
    source: str = "<input>",
) -> pd.Series:
    """Noisy copy of a numeric column, clipped to [lower, upper].

    Returns
    -------
    pd.Series
        ``Int64`` when every input value is an integer (rounded half to even), else
        ``Float64``; missing cells stay missing (C-A04).

    Raises
    ------
    PolicyError
        A value is not a number or lies outside [lower, upper]; names file, row and column.
    """
    num = to_numeric(values, source, column)
    check_bounds(num, lower, upper, source, column)
    integral = str(num.dtype) == "Int64"
    arr = num.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    rows = np.asarray(values.index, dtype=np.int64)
    noisy = np.clip(arr + noise_draws(secret, column, rows, distribution, scale), lower, upper)
    if integral:
        # Rounding may not leave the domain: bounds of an integer column are integers or
        # get rounded inwards.
        noisy = np.clip(np.rint(noisy), np.ceil(lower), np.floor(upper))
        return pd.Series(pd.array(noisy, dtype="Float64"), index=values.index).astype("Int64")
    return pd.Series(pd.array(noisy, dtype="Float64"), index=values.index)


@register_operator("noise")
class Noise:
    """Keyed Laplace / Gaussian noise on a numeric column, clipped to its domain (not DP)."""

    name = "noise"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        col = ctx.column
        assert col.distribution is not None and col.scale is not None
        assert col.lower is not None and col.upper is not None
        return add_noise(
            values,
            ctx.key.secret,
            col.name,
            col.distribution,
            col.scale,
            col.lower,
            col.upper,
            ctx.source,
        )

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        col = ctx.column
        return {
            "type": "numeric",
            "lower": col.lower,
            "upper": col.upper,
            "noise": {"distribution": col.distribution, "scale": col.scale},
        }
