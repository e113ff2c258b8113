"""The inputs that once made handlers fail with INTERNAL and a traceback (issue 12), each
pinned to its deliberate status through the real server, with one log line and no traceback:
numbers beyond a float, JSON nested thousands deep, a 5,000-digit integer in a manifest,
layer arguments that pick a device, undecodable request bytes, a 20 kB job id, and a full
disk under SubmitJob and Upload."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from server_harness import AnonymizedAdult, RunningServer, adult_spec, upload_adult
from sqlalchemy.exc import OperationalError

from privtrain.platform.client import PrivtrainClient
from privtrain.platform.services import datasets as dataset_service
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb

BIG_ID = "7" * 20_000


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def _refusal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value


def _lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


@pytest.mark.parametrize(("options", "needle"), [
    ('{"width": 1e999}', "the number 1e999, beyond the range of a 64-bit float"),
    ('{"width": Infinity}', "contains Infinity"),
    ("[" * 5_000 + "]" * 5_000, "nests deeper than 8 levels"),
    ('{"layers": [{"type": "Linear", "args": [106, 2], "kwargs": {"device": "cuda"}}]}',
     "may not set 'device'"),
    ('{"layers": [{"type": "Linear", "args": [106, 2, true, "cuda"]}]}', "may not set 'device'"),
    ('{"layers": [{"type": "Linear", "args": [106, 2], "kwargs": {"dtype": "float64"}}]}',
     "may not set 'dtype'"),
    ('{"vocab_size": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ('{"layers": [{"type": "Conv1d", "args": [2, 1, 1], "kwargs": {"padding": 1000000000}}]}',
     "byte budget"),
])
def test_model_options_that_crashed_are_invalid_argument(
        running: RunningServer, adult: AnonymizedAdult, logged: pytest.LogCaptureFixture,
        options: str, needle: str) -> None:
    """OverflowError (1e999), RecursionError (deep JSON), ValueError (5,000 digits) and
    AssertionError (a layer on "cuda" on a server without CUDA) were INTERNAL; a padding of
    a million would have allocated terabytes in the dry run."""
    ds = upload_adult(running, adult)
    model = "resnet" if "width" in options else "lstm_text" if "vocab" in options else "sequential"
    with running.client("trainer") as trainer:
        err = _refusal(lambda: trainer.submit(adult_spec(ds.id, model=model,
                                                         model_options_json=options)))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert needle in err.details()
        assert len(err.details()) < 600
        assert trainer.list_jobs() == []
    assert len(_lines(logged, "refused SubmitJob")) == 1


def test_a_5000_digit_integer_in_a_manifest_is_invalid_argument(
        running: RunningServer, adult: AnonymizedAdult, logged: pytest.LogCaptureFixture) -> None:
    """json.loads raised ValueError (the interpreter's 4,300-digit limit) inside Upload."""
    text = adult.manifest.read_text()
    rows = json.loads(text)["manifest"]["output_rows"]
    huge = text.replace(f'"output_rows": {rows}', '"output_rows": ' + "9" * 5000).encode()
    assert huge != text.encode()
    header = pb.UploadHeader(name="huge", manifest=huge, epsilon_budget=1.0, delta_budget=1e-5,
                             total_bytes=adult.parquet.stat().st_size)
    with running.client("data-owner") as owner:
        err = _refusal(lambda: owner.datasets.Upload(iter([pb.UploadRequest(header=header)]),
                                                     timeout=20))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "an integer of 5000 digits; the limit is 32" in err.details()
    assert len(_lines(logged, "refused Upload")) == 1


@pytest.mark.parametrize("method", ["GetJob", "CancelJob", "WatchJob", "DownloadParameters"])
def test_a_20kb_job_id_is_refused_with_a_short_message(
        running: RunningServer, logged: pytest.LogCaptureFixture, method: str) -> None:
    """Echoed whole, the id overflowed the trailer (RESOURCE_EXHAUSTED from gRPC's client)."""
    request = (pb.DownloadParametersRequest(job_id=BIG_ID, recipient_public_key=bytes(32))
               if method == "DownloadParameters"
               else getattr(pb, f"{method}Request")(job_id=BIG_ID))
    with running.client("trainer") as trainer:
        call = getattr(trainer.training, method)

        def invoke() -> None:
            reply = call(request, timeout=10)
            if method in ("WatchJob", "DownloadParameters"):
                list(reply)

        err = _refusal(invoke)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "job_id '777" in err.details() and "(20,000 chars) is not an id" in err.details()
        assert len(err.details()) < 200
    lines = _lines(logged, f"refused {method}")
    assert len(lines) == 1 and len(lines[0]) < 400


def test_a_well_formed_id_that_names_nothing_is_not_found(running: RunningServer) -> None:
    """Short ids of id characters that are not UUIDs are NOT_FOUND without a query; UUIDs
    are looked up."""
    with running.client("trainer") as trainer:
        assert _refusal(lambda: trainer.get_job("no-such-job")).code() is grpc.StatusCode.NOT_FOUND
        unknown = str(uuid.uuid4())
        err = _refusal(lambda: trainer.get_job(unknown))
        assert err.code() is grpc.StatusCode.NOT_FOUND and unknown in err.details()
        err = _refusal(lambda: trainer.get_job("job id with spaces"))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_long_values_elsewhere_are_quoted_as_short_prefixes(
        running: RunningServer, adult: AnonymizedAdult) -> None:
    """Dataset ids, states, names and spec strings of 20 kB come back as at most a prefix."""
    ds = upload_adult(running, adult)
    with running.client("data-owner") as owner, running.client("trainer") as trainer, \
            running.client("admin") as admin:
        calls = [
            lambda: owner.set_budget(BIG_ID, 1.0, 1e-5),
            lambda: owner.grant(ds.id, BIG_ID),
            lambda: owner.datasets.GetLedger(pb.GetLedgerRequest(dataset_id=BIG_ID), timeout=10),
            lambda: trainer.submit(adult_spec(BIG_ID)),
            lambda: trainer.submit(adult_spec(ds.id, device=BIG_ID)),
            lambda: trainer.submit(adult_spec(ds.id, target_column=BIG_ID)),
            lambda: trainer.submit(adult_spec(ds.id, model=BIG_ID)),
            lambda: trainer.training.ListJobs(pb.ListJobsRequest(state=BIG_ID), timeout=10),
            lambda: trainer.training.SubmitJob(
                pb.SubmitJobRequest(request_id=BIG_ID, spec=adult_spec(ds.id)), timeout=10),
            lambda: admin.monitoring.ListAlerts(pb.ListAlertsRequest(state=BIG_ID), timeout=10),
            lambda: admin.admin.RevokeCertificate(pb.RevokeCertificateRequest(serial="f" * 20_000),
                                                  timeout=10),
            lambda: admin.admin.RevokeCertificate(pb.RevokeCertificateRequest(name=BIG_ID),
                                                  timeout=10),
        ]
        for call in calls:
            err = _refusal(call)
            assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), \
                (err.code(), err.details()[:200])
            assert len(err.details()) < 400, err.details()[:400]
            assert "7" * 100 not in err.details() and "f" * 100 not in err.details()


@pytest.mark.parametrize("streaming", [False, True])
def test_undecodable_request_bytes_are_invalid_argument_with_one_log_line(
        running: RunningServer, logged: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str], streaming: bool) -> None:
    """gRPC answered INTERNAL and logged a traceback for each (952 of them in the fuzz)."""
    garbage = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x02\xc3\x28"]
    role, path = (("data-owner", "/privtrain.v1.DatasetService/Upload") if streaming
                  else ("trainer", "/privtrain.v1.TrainingService/GetJob"))
    with running.client(role) as client:
        for data in garbage:
            if streaming:
                call = client.channel.stream_unary(path, request_serializer=None)
                err = _refusal(lambda: call(iter([data]), timeout=10))
            else:
                call = client.channel.unary_unary(path, request_serializer=None)
                err = _refusal(lambda: call(data, timeout=10))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "is not a valid privtrain.v1." in err.details()
    assert len(_lines(logged, "is not a valid privtrain.v1.")) == len(garbage)
    assert "Traceback" not in capfd.readouterr().err


def _disk_full(statement: str) -> OperationalError:
    """What SQLAlchemy raises when SQLite answers SQLITE_FULL."""
    return OperationalError(statement, {}, sqlite3.OperationalError("database or disk is full"))


def test_submit_while_the_database_is_full_is_unavailable(
        running: RunningServer, adult: AnonymizedAdult, logged: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SubmitJob answered INTERNAL while the disk was full; now UNAVAILABLE, saying so, and
    one ERROR line for the operator with the error itself (and one for the audit gap)."""
    ds = upload_adult(running, adult)

    def full(*args: object, **kwargs: object) -> None:
        raise _disk_full("INSERT INTO jobs ...")

    monkeypatch.setattr(running.server.db.jobs, "submit", full)
    monkeypatch.setattr(running.server.audit, "record", full)
    with running.client("trainer") as trainer:
        err = _refusal(lambda: trainer.submit(adult_spec(ds.id)))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.details() == "the server's database is full; retry later"
    [line] = _lines(logged, "failed SubmitJob")
    assert "UNAVAILABLE" in line and "database or disk is full" in line
    assert len(_lines(logged, "could not append job.submit")) == 1


def test_upload_while_the_disk_is_full_is_unavailable(
        running: RunningServer, adult: AnonymizedAdult, logged: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The upload's bytes go to /dev/full: the kernel answers ENOSPC on the first write."""
    def full_device(dir: object = None, prefix: object = None) -> tuple[int, str]:
        return os.open("/dev/full", os.O_WRONLY), str(tmp_path / "never-written")

    monkeypatch.setattr(dataset_service, "tempfile", SimpleNamespace(mkstemp=full_device))
    with running.client("data-owner") as owner:
        err = _refusal(lambda: owner.upload(adult.parquet, adult.manifest, name="adult",
                                            epsilon_budget=5.0, delta_budget=2e-5,
                                            split=adult.split))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.details() == "the server's disk is full; retry later"
    [line] = _lines(logged, "failed Upload")
    assert "No space left on device" in line
    monkeypatch.undo()
    assert upload_adult(running, adult).name == "adult"  # nothing was left behind


def test_health_lists_the_servers_services(running: RunningServer) -> None:
    """gRPC health's List RPC raised NotImplementedError inside gRPC (found by the fuzz)."""
    from grpc_health.v1 import health_pb2

    client = PrivtrainClient(running.target, running.bundles["admin"].directory)
    listed = client.channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=health_pb2.HealthListRequest.SerializeToString,
        response_deserializer=health_pb2.HealthListResponse.FromString,
    )(health_pb2.HealthListRequest(), timeout=5)
    assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    assert listed.statuses["privtrain.v1.TrainingService"].status == \
        health_pb2.HealthCheckResponse.SERVING
    client.close()
