"""Reading and writing tables: CSV (any encoding), Parquet and JSON Lines.

The format follows the file name: ``.parquet`` / ``.pq``, ``.jsonl`` / ``.ndjson``,
anything else is CSV. CSV cells are read as text, so ZIP codes keep their leading
zeros and a person named "NA" stays "NA": only an empty cell is missing unless the
policy lists more missing markers (case C-A05). A CSV is decoded with the encoding
the user names; without one, UTF-8 (a byte-order mark is dropped), and when the bytes
are not UTF-8, the encoding charset-normalizer detects, which is then named in the
run's messages. A header that names one column twice is refused: one name, one
policy entry.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from privtrain.anonymize.errors import AnonymizationError
from privtrain.errors import NotFound

PARQUET = frozenset({".parquet", ".pq"})
JSONL = frozenset({".jsonl", ".ndjson"})


def check_input(path: Path, encoding: str | None) -> None:
    """Raise ``NotFound`` for a missing input file, ``AnonymizationError`` for an unknown
    ``encoding`` name (None: detect it later)."""
    if not path.is_file():
        raise NotFound(f"{path}: input file not found")
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise AnonymizationError(
                f"unknown text encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)"
            ) from None


def table_format(path: Path) -> str:
    """``"parquet"``, ``"jsonl"`` or ``"csv"``, from the file name's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in PARQUET:
        return "parquet"
    if suffix in JSONL:
        return "jsonl"
    return "csv"


_SMALL_SAMPLE = 4096


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(path: Path, sample_bytes: int = 1 << 20) -> str:
    """The text encoding of a CSV: ``utf-8-sig`` when its first MiB decodes as UTF-8, else
    ``cp1252`` for a file under 4 KiB that decodes as it, else the charset-normalizer
    guess (``cp1252``, ``latin-1``...).

    Raises
    ------
    AnonymizationError
        No encoding fits; the message asks for ``--encoding``.
    """
    with open(path, "rb") as fh:
        head = fh.read(sample_bytes)
    # Cut at the last newline so a multi-byte character split by the sample is not an error.
    cut = head.rfind(b"\n")
    sample = head if cut < 0 or len(head) < sample_bytes else head[: cut + 1]
    try:
        sample.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError:
        pass
    if len(sample) < _SMALL_SAMPLE and _decodes(sample, "cp1252"):
        # A few accented bytes say too little for a statistical guess (one such file was
        # taken for Urdu's cp1006); Windows-1252 is what spreadsheets write in the West.
        return "cp1252"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None:
        raise AnonymizationError(
            f"{path}: cannot tell the text encoding; pass --encoding (e.g. cp1252)"
        )
    return str(best.encoding)


def check_header(path: Path, encoding: str) -> list[str]:
    """The header of a CSV as a list of names.

    Raises
    ------
    AnonymizationError
        A name appears twice (row 1, the column number, the name).
    """
    with open(path, encoding=encoding, newline="") as fh:
        header = next(csv.reader(fh), [])
        rest = fh.read(1 << 16)
    if not header:
        if rest.strip():
            raise AnonymizationError(
                f"{path}: row 1 (header) is empty; the first line must name the columns"
            )
        raise AnonymizationError(f"{path}: the file is empty (no header, no columns)")
    for i, name in enumerate(header, start=1):
        if not name.strip():
            raise AnonymizationError(
                f"{path}: row 1 (header), column {i}: the column has no name; name every "
                "column so each can have its own policy entry"
            )
    check_unique_names(path, header, where="row 1 (header), ")
    return list(header)


def _line_of(path: Path, offset: int, block: int = 1 << 20) -> int:
    """1-based line number of the byte at ``offset`` (line 1 is the header)."""
    lines = 1
    done = 0
    with open(path, "rb") as fh:
        while done < offset and (data := fh.read(min(block, offset - done))):
            lines += data.count(b"\n")
            done += len(data)
    return lines


def _first_bad_byte(path: Path, encoding: str, block: int = 1 << 20) -> int:
    """Offset of the first byte that does not decode (0 when everything decodes)."""
    dec = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as fh:
        while data := fh.read(block):
            try:
                dec.decode(data)
            except UnicodeDecodeError as exc:
                # The decoder's buffer holds at most a few bytes of an unfinished character.
                carried = len(exc.object) - len(data)
                return offset - carried + exc.start
            offset += len(data)
    return 0


def decode_error(path: Path, encoding: str, start: int | None = None) -> AnonymizationError:
    """The error for a text file that does not decode: its line (in a CSV the header is
    line 1) and byte offset, found by decoding the file again when ``start`` (an offset in
    the file) is not known."""
    if start is None:
        start = _first_bad_byte(path, encoding)
    shown = "utf-8" if codecs.lookup(encoding).name in {"utf-8", "utf-8-sig"} else encoding
    header = " (the header is line 1)" if table_format(path) == "csv" else ""
    hint = "; pass --encoding (e.g. cp1252)" if table_format(path) == "csv" else ""
    return AnonymizationError(
        f"{path}: line {_line_of(path, start)}{header}, byte {start}: not valid {shown}{hint}"
    )


def check_unique_names(path: Path, names: list[str], where: str = "") -> None:
    """Refuse a table naming one column twice (a CSV header, a Parquet schema).

    ``where`` prefixes the column's position in the message (``"row 1 (header), "``).

    Raises
    ------
    AnonymizationError
        Naming the column's position and name.
    """
    seen: set[str] = set()
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise AnonymizationError(
                f"{path}: {where}column {i}: column name {name!r} appears twice; "
                "rename one so each column can have its own policy entry"
            )
        seen.add(name)


def read_table(
    path: Path,
    encoding: str | None = None,
    missing: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read a CSV, Parquet or JSON Lines table.

    Parameters
    ----------
    path : Path
        The input file.
    encoding : str | None
        Text encoding of a CSV; None for UTF-8 (BOM dropped) with detection as a fallback.
    missing : tuple of str
        Extra cell values that mean "missing" (the policy's ``missing_values``); the empty
        cell always does.

    Returns
    -------
    pd.DataFrame
        CSV and JSON Lines cells as ``string`` dtype; Parquet with its own types.

    Raises
    ------
    NotFound
        No such file.
    AnonymizationError
        Undecodable bytes (names the byte offset and suggests ``--encoding``), a repeated
        column name, or a malformed file.
    """
    path = Path(path)
    check_input(path, encoding)
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            check_unique_names(path, pq.ParquetFile(path).schema_arrow.names)
            df = pd.read_parquet(path).reset_index(drop=True)
        elif fmt == "jsonl":
            df = _read_jsonl(path)
        else:
            enc = encoding or detect_encoding(path)
            if enc.replace("_", "-").lower() in {"utf-8", "utf8"}:
                enc = "utf-8-sig"
            check_header(path, enc)
            df = pd.read_csv(
                path, dtype="string", keep_default_na=False, na_values=[""], encoding=enc
            )
    except UnicodeDecodeError as exc:
        # pandas reports the offset within one of its buffers, not within the file.
        enc = encoding or (detect_encoding(path) if fmt == "csv" else "utf-8")
        raise decode_error(path, enc) from None
    except (ValueError, OSError, csv.Error) as exc:
        raise AnonymizationError(f"{path}: cannot read table ({exc})") from None
    if len(df.columns) == 0:
        raise AnonymizationError(f"{path}: the file is empty (no header, no columns)")
    if missing:
        for name in df.columns:
            if pd.api.types.is_string_dtype(df[name].dtype):
                df[name] = df[name].mask(df[name].isin(list(missing)))
    return df


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) of every non-blank line of a JSON Lines file.

    Errors name the file's line (blank lines count); errors about values name the data
    row, as for every format.

    Raises
    ------
    AnonymizationError
        A line that is not a JSON object, has a key twice or a blank key, or holds a
        number too large for a float or a NaN-like constant other than NaN.
    """
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(
                    line,
                    object_pairs_hook=_unique_keys,
                    parse_constant=_constant,
                    parse_float=_finite_float,
                )
            except ValueError as exc:
                if not isinstance(exc, json.JSONDecodeError):
                    raise AnonymizationError(f"{path}: line {number}: {exc}") from None
                raise AnonymizationError(
                    f"{path}: line {number}: not a JSON object ({exc.msg})"
                ) from None
            if not isinstance(obj, dict):
                raise AnonymizationError(f"{path}: line {number}: not a JSON object")
            if any(not key.strip() for key in obj):
                raise AnonymizationError(
                    f"{path}: line {number}: a key has no name; name every field so each "
                    "column can have its own policy entry"
                )
            yield number, obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json.loads would keep the last)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing one too large to hold (1e400 is not infinity)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def _constant(name: str) -> None:
    """JSON's non-standard constants: NaN is a missing value, infinities are refused."""
    if name == "NaN":
        return None
    raise ValueError(f"{name} is not a finite number")


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = [obj for _, obj in jsonl_objects(path)]
    names: dict[str, None] = {}
    for obj in rows:
        for key in obj:
            names.setdefault(key, None)
    # Cell by cell, never through a float column: a key absent from a row is missing
    # (not "NaN"), and 1 stays "1" (not "1.0") whatever the other rows hold.
    return pd.DataFrame(
        {
            name: pd.Series([jsonl_cell(obj.get(name)) for obj in rows], dtype="string")
            for name in names
        },
        columns=list(names),
    )


def jsonl_cell(value: object) -> str | None:
    """The text of one JSON value: strings as they are, other values as JSON, null missing.

    JSON numbers become their text, so every format reaches the operators the same way.
    """
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        # 1.0 and 1 are one JSON number: keyed alike, as in Parquet and CSV.
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def encode_table(table: pd.DataFrame, path: Path) -> bytes:
    """Encode ``table`` in the format of ``path`` (Parquet, JSON Lines or UTF-8 CSV), in memory.

    Returns
    -------
    bytes
        The file content; missing cells are Parquet nulls, JSON ``null`` or empty CSV cells.
    """
    fmt = table_format(path)
    buf = io.BytesIO()
    if fmt == "parquet":
        table.to_parquet(buf, index=False, engine="pyarrow")
    elif fmt == "jsonl":
        table.to_json(buf, orient="records", lines=True, force_ascii=False)
    else:
        table.to_csv(buf, index=False, encoding="utf-8", lineterminator="\n")
    return buf.getvalue()


def decode_table(data: bytes, path: Path) -> pd.DataFrame:
    """Read back bytes written by :func:`encode_table` (the format follows ``path``)."""
    fmt = table_format(path)
    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    if fmt == "jsonl":
        return pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    return pd.read_csv(io.BytesIO(data), dtype="string", keep_default_na=False, na_values=[""])
