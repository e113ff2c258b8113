"""TrainingService: submission, watching, cancelling and sealed parameter download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privtrain.datasets.image_arrays import split_sizes
from privtrain.datasets.image_manifest import IMAGE_KIND, manifest_kind
from privtrain.errors import FailedPrecondition, InvalidInput, PermissionDenied
from privtrain.platform.convert import (
    event_to_proto,
    job_to_proto,
    sealed_to_proto,
    spec_from_proto,
)
from privtrain.platform.db.records import DatasetRecord, JobRecord
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.job_states import TERMINAL_STATES, JobState
from privtrain.platform.rpc import allow
from privtrain.platform.runner import JobRunner
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.envelope import seal
from privtrain.secure_transport.roles import PeerIdentity, Role
from privtrain.trainer.device import resolve_device
from privtrain.trainer.dp_sgd import preflight
from privtrain.trainer.engine import build_encoder, check_image_model_spec, check_model_spec
from privtrain.trainer.spec import TrainingSpec

X25519_PUBLIC_KEY_BYTES = 32


def count_rows(parquet: Path, column: str, value: str) -> int:
    """Rows of a stored dataset whose ``column`` equals ``value`` (reads that column only).

    Raises
    ------
    InvalidInput
        The column does not exist.
    FailedPrecondition
        The stored file is missing or unreadable.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(parquet)
        if column not in schema.names:
            raise InvalidInput(f"split_column {column!r} is not a column of the dataset")
        values = pq.read_table(parquet, columns=[column]).column(column).cast("string")
    except OSError as exc:
        raise FailedPrecondition(f"the stored dataset file cannot be read: {exc}") from None
    return int(pc.sum(pc.equal(values, value)).as_py() or 0)


def check_spec_on_dataset(spec: TrainingSpec, dataset: DatasetRecord) -> int:
    """Run the submission checks of the model for the dataset's kind; return its training rows.

    Raises
    ------
    InvalidInput
        See :func:`privtrain.trainer.engine.check_model_spec` (tables) and
        :func:`privtrain.trainer.engine.check_image_model_spec` (image arrays).
    FailedPrecondition
        The stored table cannot be read.
    """
    if manifest_kind(dataset.manifest) == IMAGE_KIND:
        check_image_model_spec(spec, dataset.manifest)
        return split_sizes(int(dataset.manifest["output_rows"]))[0]
    check_model_spec(spec, build_encoder(spec, dataset.manifest["columns"]))
    return count_rows(Path(dataset.storage_path), spec.split_column, spec.train_split)


class TrainingServicer(pb_grpc.TrainingServiceServicer):
    """Unary handlers only touch the database; training happens in worker processes."""

    def __init__(self, db: Database, hub: EventHub, runner: JobRunner, *,
                 signing_key: Ed25519PrivateKey, signing_cert_pem: bytes, chunk_bytes: int) -> None:
        self._db = db
        self._hub = hub
        self._runner = runner
        self._signing_key = signing_key
        self._signing_cert_pem = signing_cert_pem
        self._chunk_bytes = chunk_bytes

    def _visible_job(self, job_id: str, identity: PeerIdentity) -> JobRecord:
        if not job_id:
            raise InvalidInput("job_id is empty")
        job = self._db.jobs.get(job_id)
        if identity.role is not Role.ADMIN and job.submitter_common_name != identity.common_name:
            raise PermissionDenied(f"job {job_id} was submitted by someone else")
        return job

    def _job_message(self, job: JobRecord) -> pb.Job:
        spend = self._db.budget.spend(job.id)
        return job_to_proto(job, epsilon_spent=spend.epsilon_spent,
                            worker_pid=self._runner.worker_pid(job.id))

    @allow(Role.TRAINER)
    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext,
                  identity: PeerIdentity) -> pb.Job:
        spec = spec_from_proto(request.spec)
        dataset = self._db.datasets.get(spec.dataset_id)
        # Everything that can be checked without training is checked before ε is reserved.
        train_rows = check_spec_on_dataset(spec, dataset)
        device = resolve_device(spec.device)
        if device.type == "cuda" and spec.world_size > torch.cuda.device_count():
            raise FailedPrecondition(
                f"world_size {spec.world_size} needs one GPU per process; this server has "
                f"{torch.cuda.device_count()}"
            )
        preflight(spec, train_rows)
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        job, created = self._db.jobs.submit(
            request_id=request.request_id or None, dataset_id=dataset.id,
            submitter_common_name=identity.common_name, spec_json=spec_json,
            epsilon=spec.target_epsilon, delta=spec.target_delta,
        )
        if not created and (json.loads(job.spec_json) != spec.to_dict()
                            or job.submitter_common_name != identity.common_name):
            raise FailedPrecondition(
                f"request_id {request.request_id!r} was already used for job {job.id} with a "
                "different spec; use a new request_id for a new job"
            )
        if created:
            self._hub.publish(job.id, "state", {"state": JobState.PENDING.value, "error": ""})
            self._runner.wake()
        return self._job_message(job)

    @allow(Role.TRAINER, Role.ADMIN)
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext,
               identity: PeerIdentity) -> pb.Job:
        return self._job_message(self._visible_job(request.job_id, identity))

    @allow(Role.TRAINER, Role.ADMIN)
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext,
                 identity: PeerIdentity) -> pb.ListJobsResponse:
        state = None
        if request.state:
            try:
                state = JobState(request.state)
            except ValueError:
                raise InvalidInput(f"unknown job state {request.state!r}") from None
        jobs = self._db.jobs.list(state=state)
        if identity.role is not Role.ADMIN:
            jobs = [j for j in jobs if j.submitter_common_name == identity.common_name]
        return pb.ListJobsResponse(jobs=[self._job_message(j) for j in jobs])

    @allow(Role.TRAINER, Role.ADMIN)
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext,
                  identity: PeerIdentity) -> pb.Job:
        job = self._visible_job(request.job_id, identity)
        if job.state in TERMINAL_STATES:
            raise FailedPrecondition(f"job {job.id} is already {job.state.value}")
        self._runner.cancel(job.id)
        return self._job_message(self._db.jobs.get(job.id))

    @allow(Role.TRAINER, Role.ADMIN)
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext,
                 identity: PeerIdentity) -> Iterator[pb.JobEvent]:
        job = self._visible_job(request.job_id, identity)
        last_id = 0
        while context.is_active():
            for event in self._hub.wait_for(job.id, last_id, timeout_s=1.0):
                last_id = event.id
                message = event_to_proto(event)
                if message is not None:
                    yield message
                if event.kind == "state" and JobState(event.payload["state"]) in TERMINAL_STATES:
                    return

    @allow(Role.TRAINER)
    def DownloadParameters(self, request: pb.DownloadParametersRequest,
                           context: grpc.ServicerContext,
                           identity: PeerIdentity) -> Iterator[pb.SealedPart]:
        job = self._visible_job(request.job_id, identity)
        if job.state is not JobState.SUCCEEDED:
            raise FailedPrecondition(f"job {job.id} is {job.state.value}; parameters exist only "
                                     "for SUCCEEDED jobs")
        if len(request.recipient_public_key) != X25519_PUBLIC_KEY_BYTES:
            raise InvalidInput(
                f"recipient_public_key must be a raw X25519 key of {X25519_PUBLIC_KEY_BYTES} "
                f"bytes, got {len(request.recipient_public_key)}"
            )
        result = job.result or {}
        path = Path(result.get("parameters_path", ""))
        if not path.is_file():
            raise FailedPrecondition(f"parameters of job {job.id} are missing on the server")
        plaintext = path.read_bytes()
        for part in seal(
            plaintext, request.recipient_public_key, self._signing_key, self._signing_cert_pem,
            chunk_bytes=self._chunk_bytes,
            metadata={"job_id": job.id, "parameters_sha256": result.get("parameters_sha256", "")},
        ):
            yield sealed_to_proto(part)
