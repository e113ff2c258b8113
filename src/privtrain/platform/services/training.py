"""TrainingService: submission, privacy audits, watching, cancelling and sealed parameter download.

Every message leaving here is converted for its reader (:mod:`privtrain.platform.convert`):
a trainer gets DP releases, figures of its job's public plan and public declarations;
an admin also gets the exact monitoring figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privtrain.datasets.image_manifest import IMAGE_KIND, manifest_kind
from privtrain.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied, shown
from privtrain.platform.audit_trail import AuditTrail
from privtrain.platform.convert import (
    audit_from_proto,
    event_to_proto,
    job_to_proto,
    sealed_to_proto,
    spec_from_proto,
)
from privtrain.platform.db.records import DatasetRecord, JobRecord
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.ids import checked_id
from privtrain.platform.job_states import TERMINAL_STATES, JobState
from privtrain.platform.model_checks import ModelChecks
from privtrain.platform.revocations import RevocationCache
from privtrain.platform.rpc import allow
from privtrain.platform.runner import JobRunner
from privtrain.platform.splits import check_delta, table_split
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.envelope import seal
from privtrain.secure_transport.roles import PeerIdentity, Role
from privtrain.trainer.audit import AuditSettings
from privtrain.trainer.device import resolve_device
from privtrain.trainer.engine import build_encoder, check_image_model_spec, check_model_spec
from privtrain.trainer.plan import schedule
from privtrain.trainer.spec import TrainingSpec
from privtrain.trainer.validation import PreparedModel

log = logging.getLogger(__name__)
X25519_PUBLIC_KEY_BYTES = 32
MAX_REQUEST_ID_CHARS = 255


def check_spec_on_dataset(spec: TrainingSpec, dataset: DatasetRecord, delta_budget: float) -> PreparedModel:
    """The submission checks that need no calibration: model, columns, δ, batch and device.

    Everything here is decided from the spec, the manifest's public domains, the
    owner's split declaration and the published row counts, never from the rows, so
    an error quotes nothing private.

    Raises
    ------
    InvalidInput
        See :func:`privtrain.trainer.engine.check_model_spec` (tables) and
        :func:`privtrain.trainer.engine.check_image_model_spec` (image arrays); also a δ
        not below 1/n or above the budget's, or a batch above the published training rows.
    FailedPrecondition
        The dataset has no declared split, or the server lacks the GPUs asked for.
    """
    split = dataset.split
    if split is None or dataset.published_train_rows is None:
        raise FailedPrecondition(f"dataset {dataset.name!r} has no declared train/test split; its "
                                 "owner must upload it again with one")
    if manifest_kind(dataset.manifest) == IMAGE_KIND:
        prepared = check_image_model_spec(spec, dataset.manifest)
    else:
        if spec.target_column == split["column"]:
            raise InvalidInput(f"target_column {shown(spec.target_column)} is the owner's split "
                               "column")
        prepared = check_model_spec(spec, build_encoder(spec, dataset.manifest["columns"],
                                                        table_split(split)))
    published = dataset.published_train_rows + (dataset.published_test_rows or 0)
    check_delta(spec.target_delta, published, "target_delta")
    if spec.target_delta > delta_budget:
        raise InvalidInput(f"target_delta {spec.target_delta:g} exceeds the dataset's delta budget "
                           f"{delta_budget:g}")
    schedule(spec, dataset.published_train_rows)
    device = resolve_device(spec.device)
    if device.type == "cuda" and spec.world_size > torch.cuda.device_count():
        raise FailedPrecondition(
            f"world_size {spec.world_size} needs one GPU per process; this server has "
            f"{torch.cuda.device_count()}"
        )
    return prepared


def default_target(dataset: DatasetRecord) -> str:
    """The label an audit trains on when none is named: an image dataset's ``label``, else the
    last categorical column the manifest declares (other than the split column).

    Raises
    ------
    InvalidInput
        The manifest declares no such column.
    """
    if manifest_kind(dataset.manifest) == IMAGE_KIND:
        return "label"
    split_column = (dataset.split or {}).get("column")
    labels = [name for name, domain in dataset.manifest["columns"].items()
              if name != split_column and domain.get("type") == "categorical"
              and len(domain.get("values", [])) >= 2]
    if not labels:
        raise InvalidInput("the dataset declares no categorical column to train the audit on; "
                           "name one with --target")
    return labels[-1]


def _submitted(request: pb.SubmitJobRequest | pb.SubmitAuditRequest, reply: pb.Job | None) -> str:
    on = f"dataset {request.spec.dataset_id}"
    return on if reply is None else f"job {reply.id} on {on}"


def _job(request: pb.CancelJobRequest | pb.DownloadParametersRequest, reply: object) -> str:
    return f"job {request.job_id}"


def trainable_dataset(db: Database, dataset_id: str, identity: PeerIdentity) -> DatasetRecord:
    """The dataset a job is submitted on, if this caller may train on it now.

    Raises
    ------
    NotFound
        No such dataset.
    PermissionDenied
        A trainer its owner has not granted (admins audit any dataset).
    FailedPrecondition
        The owner withdrew it.
    """
    dataset = db.datasets.get(checked_id(dataset_id, "dataset_id", "dataset"))
    if identity.role is not Role.ADMIN and not db.grants.is_granted(dataset.id, identity.common_name):
        raise PermissionDenied(f"dataset {dataset.id} is not granted to you ({identity.common_name});"
                               " its owner grants trainers with `privtrain dataset grant`")
    if dataset.withdrawn:
        raise FailedPrecondition(f"dataset {dataset.id} was withdrawn by its owner; no new jobs")
    return dataset


class TrainingServicer(pb_grpc.TrainingServiceServicer):
    """Unary handlers only touch the database; the model's checks run on
    :class:`~privtrain.platform.model_checks.ModelChecks`' threads, admission (σ
    calibration) on the scheduler's and training in worker processes.

    A job belongs to its submitter: another trainer's job answers NOT_FOUND, as one that
    does not exist (its id tells nothing).
    """

    def __init__(self, db: Database, hub: EventHub, runner: JobRunner, *,
                 signing_key: Ed25519PrivateKey, signing_cert_pem: bytes, chunk_bytes: int,
                 audit_trail: AuditTrail, revocations: RevocationCache,
                 model_checks: ModelChecks | None = None) -> None:
        self._db = db
        self._model_checks = model_checks or ModelChecks()
        self._hub = hub
        self._runner = runner
        self._signing_key = signing_key
        self._signing_cert_pem = signing_cert_pem
        self._chunk_bytes = chunk_bytes
        self.audit_trail = audit_trail
        self._revocations = revocations

    def _visible_job(self, job_id: str, identity: PeerIdentity) -> JobRecord:
        job = self._db.jobs.get(checked_id(job_id, "job_id", "job"))
        if identity.role is not Role.ADMIN and job.submitter_common_name != identity.common_name:
            raise NotFound(f"job {job_id!r} not found")
        return job

    def _job_message(self, job: JobRecord, identity: PeerIdentity) -> pb.Job:
        entry = self._db.budget.entry_of_job(job.id)
        admin = identity.role is Role.ADMIN
        return job_to_proto(job, epsilon_spent=entry.epsilon_spent if entry else 0.0, admin=admin,
                            worker_pid=self._runner.worker_pid(job.id) if admin else None)

    def _submit(self, request_id: str, spec: TrainingSpec, identity: PeerIdentity, *,
                audit: AuditSettings | None = None) -> pb.Job:
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidInput(f"request_id {shown(request_id)} is longer than "
                               f"{MAX_REQUEST_ID_CHARS} characters")
        dataset = trainable_dataset(self._db, spec.dataset_id, identity)
        ledger = self._db.budget.ledger(dataset.ledger_id)

        def check() -> None:
            prepared = check_spec_on_dataset(spec, dataset, ledger.delta_budget)
            if audit is not None:
                trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
                if audit.canaries > trainable:
                    raise InvalidInput(f"{audit.canaries} canaries need as many trainable "
                                       f"parameters; the model has {trainable}")

        self._model_checks.run(check)
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        audit_json = None if audit is None else json.dumps(audit.__dict__, sort_keys=True)
        job, created = self._db.jobs.submit(
            request_id=request_id or None, dataset_id=dataset.id,
            submitter_common_name=identity.common_name, spec_json=spec_json,
            kind="train" if audit is None else "audit", audit_json=audit_json,
        )
        if not created and (job.submitter_common_name != identity.common_name
                            or json.loads(job.spec_json) != spec.to_dict()
                            or job.audit_json != audit_json):
            # Never name the other job: the request id may be someone else's.
            raise FailedPrecondition(
                f"request_id {shown(request_id)} was already used for another request; use a new "
                "request_id for a new job"
            )
        if created:
            self._hub.publish(job.id, "state", {"state": JobState.PENDING.value, "error": ""})
            log.info("job %s PENDING: %s submitted by %s on dataset %s", job.id, job.kind,
                     identity.common_name, dataset.id)
            self._runner.wake()
        return self._job_message(job, identity)

    @allow(Role.TRAINER, audit="job.submit", target=_submitted)
    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext,
                  identity: PeerIdentity) -> pb.Job:
        return self._submit(request.request_id, spec_from_proto(request.spec), identity)

    @allow(Role.TRAINER, Role.ADMIN, audit="audit.submit", target=_submitted)
    def SubmitAudit(self, request: pb.SubmitAuditRequest, context: grpc.ServicerContext,
                    identity: PeerIdentity) -> pb.Job:
        audit = audit_from_proto(request.audit)
        if audit.mechanism == "none" and identity.role is not Role.ADMIN:
            raise PermissionDenied("an audit with mechanism 'none' (no noise, no clipping) is for "
                                   "admins only: its figures are exact")
        message = pb.JobSpec()
        message.CopyFrom(request.spec)
        if not message.target_column and message.dataset_id:
            message.target_column = default_target(
                trainable_dataset(self._db, message.dataset_id, identity))
        spec = spec_from_proto(message)
        if spec.clipping != "flat" or spec.noise_schedule != "constant" or spec.world_size != 1:
            raise InvalidInput("the privacy audit trains with flat clipping, a constant noise "
                               "schedule and world_size 1")
        return self._submit(request.request_id, spec, identity, audit=audit)

    @allow(Role.TRAINER, Role.ADMIN)
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext,
               identity: PeerIdentity) -> pb.Job:
        return self._job_message(self._visible_job(request.job_id, identity), identity)

    @allow(Role.TRAINER, Role.ADMIN)
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext,
                 identity: PeerIdentity) -> pb.ListJobsResponse:
        state = None
        if request.state:
            try:
                state = JobState(request.state)
            except ValueError:
                raise InvalidInput(f"unknown job state {shown(request.state)}") from None
        jobs = self._db.jobs.list(state=state)
        if identity.role is not Role.ADMIN:
            jobs = [j for j in jobs if j.submitter_common_name == identity.common_name]
        return pb.ListJobsResponse(jobs=[self._job_message(j, identity) for j in jobs])

    @allow(Role.TRAINER, Role.ADMIN, audit="job.cancel", target=_job)
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext,
                  identity: PeerIdentity) -> pb.Job:
        job = self._visible_job(request.job_id, identity)
        if job.state in TERMINAL_STATES:
            raise FailedPrecondition(f"job {job.id} is already {job.state.value}")
        self._runner.cancel(job.id)
        return self._job_message(self._db.jobs.get(job.id), identity)

    @allow(Role.TRAINER, Role.ADMIN)
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext,
                 identity: PeerIdentity) -> Iterator[pb.JobEvent]:
        job = self._visible_job(request.job_id, identity)
        admin = identity.role is Role.ADMIN
        last_id = 0
        while context.is_active():
            self._revocations.check(identity)  # an open stream ends within a second of revocation
            for event in self._hub.wait_for(job.id, last_id, timeout_s=0.5):
                last_id = event.id
                message = event_to_proto(event, admin=admin)
                if message is not None:
                    yield message
                if event.kind == "state" and JobState(event.payload["state"]) in TERMINAL_STATES:
                    return

    @allow(Role.TRAINER, audit="job.download", target=_job)
    def DownloadParameters(self, request: pb.DownloadParametersRequest,
                           context: grpc.ServicerContext,
                           identity: PeerIdentity) -> Iterator[pb.SealedPart]:
        job = self._visible_job(request.job_id, identity)
        if job.kind != "train":
            raise FailedPrecondition(f"job {job.id} is a privacy audit; its parameters are never "
                                     "released")
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
