"""An anonymization run never overwrites its own inputs and never half-writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.pipeline import anonymize_file

POLICY = """
k = 1

[columns.email]
operator = "hmac"
role = "direct_identifier"
type = "text"

[columns.city]
operator = "keep"
role = "other"
type = "categorical"
domain = ["Utrecht", "Köln"]
"""


@pytest.fixture
def inputs(write, key_path: Path, signer: tuple[Path, Path]) -> dict[str, Path]:
    raw = write("raw.csv", "email,city\nalice@example.org,Utrecht\nbob@example.org,Köln\n")
    policy = write("policy.toml", POLICY)
    return {"raw": raw, "policy": policy, "key": key_path, "skey": signer[0], "cert": signer[1]}


@pytest.mark.parametrize("clash", ["raw", "policy", "key", "skey", "cert"])
def test_output_may_not_overwrite_an_input(inputs: dict[str, Path], clash: str) -> None:
    """--out equal to the raw table, the policy, the key or the signing files is refused,
    and the input is left byte for byte as it was."""
    before = inputs[clash].read_bytes()
    with pytest.raises(AnonymizationError, match="would overwrite the input"):
        anonymize_file(inputs["raw"], inputs["policy"], inputs["key"], inputs[clash],
                       signing_key_path=inputs["skey"], signing_cert_path=inputs["cert"])
    assert inputs[clash].read_bytes() == before


def test_output_that_is_a_folder_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    """A folder is not a file name."""
    with pytest.raises(AnonymizationError, match="is a folder"):
        anonymize_file(inputs["raw"], inputs["policy"], inputs["key"], tmp_path,
                       signing_key_path=inputs["skey"], signing_cert_path=inputs["cert"])


def test_unknown_encoding_is_a_clear_error(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Not a LookupError traceback."""
    with pytest.raises(AnonymizationError, match="unknown text encoding"):
        anonymize_file(inputs["raw"], inputs["policy"], inputs["key"], tmp_path / "o.parquet",
                       signing_key_path=inputs["skey"], signing_cert_path=inputs["cert"],
                       encoding="nonsense")
    assert not (tmp_path / "o.parquet").exists()
