"""Dataset upload: only a valid manifest signed by the uploader gets stored; its split is the
owner's, its row counts are published with noise, and its budget follows its source."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pandas as pd
import pytest

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.manifest import sign_manifest
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.datasets.adult import fetch_adult
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb

from server_harness import POLICY, AnonymizedAdult, RunningServer, upload_adult


def _stored_files(rs: RunningServer) -> list[Path]:
    return sorted(rs.server.config.datasets_dir.glob("*"))


def test_valid_upload_is_stored_with_its_budget(running: RunningServer, adult: AnonymizedAdult) -> None:
    """The owner sees rows and hash from the verified manifest; a trainer sees the published
    (noisy) counts and the policy's k, never figures computed from the rows."""
    ds = upload_adult(running, adult, epsilon=4.0, delta=2e-5)
    manifest = adult.manifest_dict
    assert ds.rows == manifest["output_rows"]
    assert ds.k_anonymity == manifest["k_target"] == 10
    assert ds.kind == "table"
    assert ds.sha256 == manifest["output_sha256"]
    assert ds.epsilon_budget == 4.0 and ds.delta_budget == 2e-5
    # Publishing the split's counts is one Gaussian mechanism (σ = 20, sensitivity 1), charged.
    assert 0.1 < 4.0 - ds.epsilon_remaining < 0.3
    exact = pd.read_parquet(adult.parquet, columns=["split"])["split"].value_counts()
    assert abs(ds.published_train_rows - exact["train"]) < 200
    assert abs(ds.published_test_rows - exact["test"]) < 200
    assert [p.name for p in _stored_files(running)] == [f"{ds.id}.parquet"]
    assert (running.server.config.datasets_dir.stat().st_mode & 0o777) == 0o700
    assert (_stored_files(running)[0].stat().st_mode & 0o777) == 0o600
    with running.client("trainer") as trainer:
        (seen,) = trainer.list_datasets()
    assert (seen.rows, seen.sha256, seen.size_bytes) == (0, "", 0)
    assert (seen.published_train_rows, seen.published_test_rows) == (ds.published_train_rows,
                                                                      ds.published_test_rows)


def test_published_counts_are_noisy_not_exact(tmp_path: Path, adult: AnonymizedAdult) -> None:
    """Exact split sizes differ between neighbouring datasets (issue 9, point 4): five uploads
    of the same rows publish five different counts."""
    from server_harness import start_server

    published = set()
    for i in range(5):
        rs = start_server(tmp_path / f"home{i}", adult.pki, adult.bundles)
        try:
            published.add(upload_adult(rs, adult).published_train_rows)
        finally:
            rs.server.stop(1.0)
    assert len(published) >= 4


def test_tampered_data_is_refused_and_nothing_kept(running: RunningServer, adult: AnonymizedAdult,
                                                   tmp_path: Path) -> None:
    """One flipped byte in the Parquet: the hash no longer matches the signed manifest."""
    data = bytearray(adult.parquet.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(bad, adult.manifest, name="bad", epsilon_budget=1, delta_budget=1e-5,
                     split=adult.split)
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
        owner.upload(adult.parquet, forged, name="forged", epsilon_budget=1, delta_budget=1e-5,
                     split=adult.split)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signature" in err.value.details()


def test_manifest_signed_by_someone_else_is_refused(running: RunningServer, adult: AnonymizedAdult,
                                                    tmp_path: Path) -> None:
    """A manifest validly signed, but by the trainer's key, is not the uploader's."""
    manifest = adult.manifest_dict
    resigned = sign_manifest(manifest, adult.bundles["trainer"].key.read_bytes(),
                             adult.bundles["trainer"].cert.read_bytes())
    path = tmp_path / "resigned.manifest.json"
    path.write_bytes(resigned)
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(adult.parquet, path, name="resigned", epsilon_budget=1, delta_budget=1e-5,
                     split=adult.split)
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
        owner.upload(adult.parquet, adult.manifest, name="b", epsilon_budget=epsilon, delta_budget=delta,
                     split=adult.split)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("delta", [1e-3, 0.5])
def test_budget_delta_not_below_one_over_n_is_refused(running: RunningServer, adult: AnonymizedAdult,
                                                      delta: float) -> None:
    """Issue 9, point 5: δ = 0.001 (or 0.5) on ~47k rows would allow releasing rows outright."""
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(adult.parquet, adult.manifest, name="d", epsilon_budget=1, delta_budget=delta,
                     split=adult.split)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "must be below 1/" in err.value.details()
    assert _stored_files(running) == []
    ds = upload_adult(running, adult)
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.set_budget(ds.id, 5.0, delta)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_same_file_under_another_name_gets_no_fresh_budget(running: RunningServer,
                                                           adult: AnonymizedAdult) -> None:
    """Issue 9, point 5: the same file again, renamed, is refused (it would not get a budget)."""
    first = upload_adult(running, adult, name="adult")
    with running.client("data-owner") as owner, pytest.raises(grpc.RpcError) as err:
        owner.upload(adult.parquet, adult.manifest, name="adult-again", epsilon_budget=5.0,
                     delta_budget=2e-5, split=adult.split)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already uploaded as dataset 'adult'" in err.value.details()
    with running.client("trainer") as trainer:
        assert [d.id for d in trainer.list_datasets()] == [first.id]


def test_later_release_of_the_same_source_draws_on_the_same_budget(
    running: RunningServer, adult: AnonymizedAdult, tmp_path: Path,
) -> None:
    """A release made with --previous-manifest of an uploaded one (or from the same input
    file) joins that dataset's ledger: the people in it keep one budget."""
    first = upload_adult(running, adult, name="adult", epsilon=5.0)
    key = tmp_path / "owner.hmac"
    generate_key(key)
    later = tmp_path / "adult.v2.parquet"
    anonymize_file(fetch_adult(), POLICY, key, later, signing_key_path=adult.bundles["data-owner"].key,
                   signing_cert_path=adult.bundles["data-owner"].cert, previous_manifest=adult.manifest,
                   rotate_key=True)
    with running.client("data-owner") as owner:
        second = owner.upload(later, later.with_name(later.name + ".manifest.json"), name="adult-v2",
                              epsilon_budget=5.0, delta_budget=2e-5, split=adult.split)
        with pytest.raises(grpc.RpcError) as err:  # a joined ledger keeps its budget
            third, key3 = tmp_path / "adult.v3.parquet", tmp_path / "owner3.hmac"
            generate_key(key3)
            anonymize_file(fetch_adult(), POLICY, key3, third,
                           signing_key_path=adult.bundles["data-owner"].key,
                           signing_cert_path=adult.bundles["data-owner"].cert,
                           previous_manifest=later.with_name(later.name + ".manifest.json"),
                           rotate_key=True)
            owner.upload(third, third.with_name(third.name + ".manifest.json"), name="adult-v3",
                         epsilon_budget=50.0, delta_budget=2e-5, split=adult.split)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    # Linked by its previous manifest (adult-v2) and by its input (all three): the ledger's
    # first release is named.
    assert "shares the privacy budget of dataset 'adult'" in err.value.details()
    assert second.ledger_id == first.ledger_id
    # Both uploads' count releases are composed on the one ledger: more spent than by one.
    assert second.epsilon_remaining < first.epsilon_remaining
    with running.client("data-owner") as owner:
        budgets = {d.name: (d.ledger_id, d.epsilon_remaining) for d in owner.list_datasets()}
    assert budgets["adult"] == budgets["adult-v2"]


def test_withdrawal_deletes_the_file_cancels_running_jobs_and_keeps_the_ledger(
    running: RunningServer, adult: AnonymizedAdult
) -> None:
    """The owner withdraws a dataset a job is training on: the file is gone, the job ends
    CANCELLED (charged what it took), no new job is admitted, trainers no longer see it, and the
    ledger with the job's entry stays readable by the owner."""
    from server_harness import adult_spec, ledger_entry, wait_terminal

    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer, running.client("data-owner") as owner:
        job = trainer.submit(adult_spec(ds.id, epochs=3, batch_size=64))
        for event in trainer.watch(job.id, timeout_s=120):
            if event.WhichOneof("event") == "step":
                break
        withdrawn = owner.withdraw(ds.id)
        assert withdrawn.HasField("withdrawn_at")
        assert _stored_files(running) == []
        wait_terminal(trainer, job.id)
        assert trainer.get_job(job.id).state == "CANCELLED"
        assert trainer.list_datasets() == []
        with pytest.raises(grpc.RpcError) as err:
            trainer.submit(adult_spec(ds.id))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            owner.withdraw(ds.id)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        ledger = owner.ledger(ds.id)
    assert [e.job_id for e in ledger.entries if e.kind == "job"] == [job.id]
    assert ledger_entry(running, job.id).settled
