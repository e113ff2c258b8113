"""mTLS and roles at the real server: who may call what."""

from __future__ import annotations

import grpc
import pytest

from privtrain.platform.client import PrivtrainClient
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.channels import ClientTLS, create_channel
from server_harness import RunningServer, adult_spec, make_people


def test_client_without_certificate_is_refused(running: RunningServer) -> None:
    """No client certificate: the TLS handshake fails, the call is UNAVAILABLE."""
    ca = running.pki.ca_cert.read_bytes()
    channel = create_channel(running.target, ClientTLS(ca_pem=ca))
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.DatasetServiceStub(channel).ListDatasets(pb.ListDatasetsRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_client_certificate_from_another_ca_is_refused(running: RunningServer, tmp_path) -> None:
    """A trainer certificate issued by another CA is not trusted: UNAVAILABLE."""
    _, other = make_people(tmp_path / "other")
    mixed = ClientTLS(ca_pem=running.pki.ca_cert.read_bytes(),
                      cert_pem=other["trainer"].cert.read_bytes(),
                      key_pem=other["trainer"].key.read_bytes())
    channel = create_channel(running.target, mixed)
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.TrainingServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    channel.close()


@pytest.mark.parametrize(
    ("role", "call"),
    [
        ("trainer", lambda c: c.set_budget("any", 1.0, 1e-5)),
        ("data-owner", lambda c: c.submit(adult_spec("any"))),
        ("trainer", lambda c: c.list_alerts()),
        ("data-owner", lambda c: c.list_jobs()),
        ("admin", lambda c: c.submit(adult_spec("any"))),
    ],
)
def test_wrong_role_is_permission_denied(running: RunningServer, role: str, call) -> None:
    """The role comes from the verified certificate; the wrong one gets PERMISSION_DENIED."""
    with running.client(role) as client:
        with pytest.raises(grpc.RpcError) as err:
            call(client)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert role in err.value.details()


def test_role_metadata_is_ignored(running: RunningServer) -> None:
    """Claiming another role in request metadata changes nothing."""
    with running.client("trainer") as client:
        with pytest.raises(grpc.RpcError) as err:
            client.monitoring.ListAlerts(pb.ListAlertsRequest(), timeout=5,
                                         metadata=(("x-privtrain-role", "admin"), ("role", "admin")))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_answer(running: RunningServer) -> None:
    """The standard health service reports SERVING to an authenticated client."""
    client: PrivtrainClient = running.client("admin")
    client.wait_until_serving(timeout_s=5)
    client.close()
