"""The committed generated gRPC code matches its .proto sources."""

from __future__ import annotations

from pathlib import Path

from privtrain.proto.generate import generate, source_root


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    """Regenerate into a temp folder; every file must equal the committed one byte for byte."""
    root = source_root()
    fresh = generate(tmp_path, root)
    assert fresh, "protoc generated nothing"
    for rel in fresh:
        committed = root / rel
        assert committed.exists(), f"{rel} is generated but not committed: run `make proto`"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} differs from a fresh generation: run `make proto` and commit"
        )
