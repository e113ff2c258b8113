"""C-T05: parameter blobs past gRPC's per-message cap travel through the sealed stream."""

from __future__ import annotations

import hashlib
import json

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save
from server_harness import PEOPLE, AnonymizedAdult, RunningServer, adult_spec, upload_adult

from privtrain.platform.job_states import JobState


def _succeeded_job_with_blob(rs: RunningServer, adult: AnonymizedAdult, mib: int) -> tuple[str, str]:
    """Register a SUCCEEDED job whose parameter file holds ``mib`` MiB of random float32."""
    ds = upload_adult(rs, adult, name=f"blob-{mib}")
    values = np.random.default_rng(mib).standard_normal(mib * 2**18, dtype=np.float32)
    data = save({"weight": torch.from_numpy(values)})
    path = rs.server.config.home / f"blob-{mib}.safetensors"
    path.write_bytes(data)
    db = rs.server.db
    job, _ = db.jobs.submit(request_id=None, dataset_id=ds.id,
                            submitter_common_name=PEOPLE["trainer"],
                            spec_json=json.dumps({"dataset_id": ds.id}))
    assert db.jobs.transition(job.id, JobState.PENDING, JobState.RUNNING)
    db.jobs.set_result(job.id, {"parameters_path": str(path),
                                "parameters_sha256": hashlib.sha256(data).hexdigest()})
    assert db.jobs.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
    return job.id, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mib", [3, 5])
def test_blobs_past_the_message_cap_arrive_whole(running: RunningServer, adult: AnonymizedAdult, mib: int) -> None:
    """3 MiB and 5 MiB (the cap is 4 MiB): chunked, sealed, verified, byte-identical."""
    job_id, digest = _succeeded_job_with_blob(running, adult, mib)
    assert running.server.config.limits.max_message_bytes == 4 * 2**20
    with running.client("trainer") as trainer:
        blob = trainer.download_parameters(job_id)
    assert hashlib.sha256(blob.plaintext).hexdigest() == digest
    assert blob.header.chunk_count == -(-len(blob.plaintext) // running.server.config.limits.chunk_bytes)


@pytest.mark.slow
def test_600_mib_blob_arrives_whole(running: RunningServer, adult: AnonymizedAdult) -> None:
    """600 MiB of float32 parameters through the same stream."""
    job_id, digest = _succeeded_job_with_blob(running, adult, 600)
    with running.client("trainer") as trainer:
        blob = trainer.download_parameters(job_id)
    assert hashlib.sha256(blob.plaintext).hexdigest() == digest


def test_oversize_unary_payload_is_resource_exhausted(running: RunningServer, adult: AnonymizedAdult) -> None:
    """A 5 MiB unary request exceeds the one configured limit: RESOURCE_EXHAUSTED naming it."""
    ds = upload_adult(running, adult)
    spec = adult_spec(ds.id, feature_columns=["x" * (5 * 2**20)])
    with running.client("trainer") as trainer, pytest.raises(grpc.RpcError) as err:
        trainer.submit(spec)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(4 * 2**20) in err.value.details()
