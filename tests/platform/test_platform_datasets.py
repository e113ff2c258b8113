"""Dataset upload: only a valid manifest signed by the uploader gets stored."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from privtrain.anonymize.manifest import sign_manifest
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb

from server_harness import AnonymizedAdult, RunningServer, upload_adult


def _stored_files(rs: RunningServer) -> list[Path]:
    return sorted(rs.server.config.datasets_dir.glob("*"))


def test_valid_upload_is_stored_with_its_budget(running: RunningServer, adult: AnonymizedAdult) -> None:
    """Rows, k and hash come from the verified manifest; the budget is the owner's."""
    ds = upload_adult(running, adult, epsilon=4.0, delta=1e-4)
    manifest = adult.manifest_dict
    assert ds.rows == manifest["output_rows"]
    assert ds.k_anonymity == manifest["k_achieved"] >= 10
    assert ds.kind == "table"
    assert ds.sha256 == manifest["output_sha256"]
    assert (ds.epsilon_remaining, ds.delta_remaining) == (4.0, 1e-4)
    assert [p.name for p in _stored_files(running)] == [f"{ds.id}.parquet"]


def test_tampered_data_is_refused_and_nothing_kept(running: RunningServer, adult: AnonymizedAdult,
                                                   tmp_path: Path) -> None:
    """One flipped byte in the Parquet: the hash no longer matches the signed manifest."""
    data = bytearray(adult.parquet.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(bad, adult.manifest, name="bad", epsilon_budget=1, delta_budget=1e-5)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "output_sha256 mismatch" in err.value.details()
    assert _stored_files(running) == []
    with running.client("trainer") as trainer:
        assert trainer.list_datasets() == []


def test_edited_manifest_is_refused(running: RunningServer, adult: AnonymizedAdult, tmp_path: Path) -> None:
    """Raising the claimed k after signing breaks the signature."""
    signed = json.loads(adult.manifest.read_text())
    signed["manifest"]["k_achieved"] = 50
    forged = tmp_path / "forged.manifest.json"
    forged.write_text(json.dumps(signed))
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(adult.parquet, forged, name="forged", epsilon_budget=1, delta_budget=1e-5)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signature" in err.value.details()


def test_manifest_signed_by_someone_else_is_refused(running: RunningServer, adult: AnonymizedAdult,
                                                    tmp_path: Path) -> None:
    """A manifest validly signed, but by the trainer's key, is not the uploader's."""
    manifest = adult.manifest_dict
    resigned = sign_manifest(manifest, adult.pki.key("trainer").read_bytes(),
                             adult.pki.cert("trainer").read_bytes())
    path = tmp_path / "resigned.manifest.json"
    path.write_bytes(resigned)
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(adult.parquet, path, name="resigned", epsilon_budget=1, delta_budget=1e-5)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_upload_without_header_or_manifest_is_refused(running: RunningServer) -> None:
    """A stream that starts with data, or with a header holding no manifest."""
    with running.client("data-owner") as owner:
        for first in (pb.UploadRequest(chunk=b"PAR1"),
                      pb.UploadRequest(header=pb.UploadHeader(name="x", manifest=b"{}",
                                                              epsilon_budget=1, delta_budget=1e-5))):
            with pytest.raises(grpc.RpcError) as err:
                owner.datasets.Upload(iter([first]), timeout=5)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _stored_files(running) == []


@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (float("inf"), 1e-5), (1.0, 1.5)])
def test_bad_budget_is_refused(running: RunningServer, adult: AnonymizedAdult, epsilon: float,
                               delta: float) -> None:
    """ε must be finite and > 0, δ in (0, 1)."""
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(adult.parquet, adult.manifest, name="b", epsilon_budget=epsilon, delta_budget=delta)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
