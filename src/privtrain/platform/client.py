"""Python client of the privtrain API, used by the CLI, the demo and the tests."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from privtrain.platform.convert import sealed_from_proto
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.channels import ClientTLS, TransportLimits, create_channel
from privtrain.secure_transport.envelope import OpenedBlob, generate_recipient_keypair, open_sealed
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pki import load_certificate

UPLOAD_CHUNK_BYTES = 1024 * 1024


class PrivtrainClient:
    """One mTLS channel to a privtrain server, authenticated as one person.

    Parameters
    ----------
    target : str
        ``host:port`` of the server.
    bundle_dir : Path
        The person's bundle from ``privtrain certs issue`` (their key and certificate,
        and the CA certificate); their role is the one their certificate carries.
    timeout_s : float
        Deadline of unary calls in seconds.
    """

    def __init__(self, target: str, bundle_dir: Path, *, timeout_s: float = 30.0,
                 limits: TransportLimits | None = None) -> None:
        self.target = target
        self.bundle = ClientBundle(Path(bundle_dir))
        self.tls = ClientTLS.from_bundle(self.bundle)
        self.limits = limits or TransportLimits()
        self.timeout_s = timeout_s
        self.channel = create_channel(target, self.tls, limits=self.limits)
        self.datasets = pb_grpc.DatasetServiceStub(self.channel)
        self.training = pb_grpc.TrainingServiceStub(self.channel)
        self.monitoring = pb_grpc.MonitoringServiceStub(self.channel)
        self.admin = pb_grpc.AdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> PrivtrainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_until_serving(self, timeout_s: float = 30.0) -> None:
        """Block until the standard health service answers SERVING (raises grpc.RpcError)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"server health is {reply.status}")

    # ---------------------------------------------------------------- datasets
    def upload(self, path: Path, manifest: Path, *, name: str, epsilon_budget: float,
               delta_budget: float, progress: Callable[[int, int], None] | None = None,
               split: tuple[str, str, str] | None = None) -> pb.Dataset:
        """Stream a dataset file and its signed manifest (role data-owner).

        ``path`` is an anonymized Parquet table (``privtrain anonymize run``) or a
        packed image array (``privtrain dataset pack-images``); the manifest says which.
        ``split`` (column, train value, test value) declares the owner's train/test split
        of a table whose manifest declares none. ``progress(sent_bytes, total_bytes)`` is
        called after every chunk.
        """
        manifest_bytes = manifest.read_bytes()
        total = path.stat().st_size

        def parts() -> Iterator[pb.UploadRequest]:
            column, train, test = split or ("", "", "")
            yield pb.UploadRequest(header=pb.UploadHeader(
                name=name, manifest=manifest_bytes, epsilon_budget=epsilon_budget,
                delta_budget=delta_budget, total_bytes=total, split_column=column,
                train_split=train, test_split=test,
            ))
            sent = 0
            with path.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                    sent += len(chunk)
                    if progress:
                        progress(sent, total)
                    yield pb.UploadRequest(chunk=chunk)

        reply: pb.Dataset = self.datasets.Upload(parts(), timeout=max(self.timeout_s, total / 2**20))
        return reply

    def list_datasets(self) -> list[pb.Dataset]:
        """The datasets this caller may see (their own; those granted to them; all for an
        admin), with their remaining budgets."""
        return list(self.datasets.ListDatasets(pb.ListDatasetsRequest(), timeout=self.timeout_s).datasets)

    def set_budget(self, dataset_id: str, epsilon: float, delta: float) -> pb.Dataset:
        """Change a dataset's (ε, δ) budget (role data-owner, owner only)."""
        reply: pb.Dataset = self.datasets.SetBudget(
            pb.SetBudgetRequest(dataset_id=dataset_id, epsilon_budget=epsilon, delta_budget=delta),
            timeout=self.timeout_s,
        )
        return reply

    def grant(self, dataset_id: str, trainer: str) -> pb.Dataset:
        """Allow a trainer (by name) on a dataset (its owner only)."""
        reply: pb.Dataset = self.datasets.GrantTrainer(
            pb.GrantRequest(dataset_id=dataset_id, trainer=trainer), timeout=self.timeout_s)
        return reply

    def revoke_grant(self, dataset_id: str, trainer: str) -> pb.Dataset:
        """Withdraw a trainer's grant on a dataset (its owner only)."""
        reply: pb.Dataset = self.datasets.RevokeTrainer(
            pb.GrantRequest(dataset_id=dataset_id, trainer=trainer), timeout=self.timeout_s)
        return reply

    def ledger(self, dataset_id: str) -> pb.DatasetLedger:
        """Every charge on the dataset's ledger, with who and when (owner or admin)."""
        reply: pb.DatasetLedger = self.datasets.GetLedger(
            pb.GetLedgerRequest(dataset_id=dataset_id), timeout=self.timeout_s)
        return reply

    def withdraw(self, dataset_id: str) -> pb.Dataset:
        """Withdraw a dataset: file deleted, unfinished jobs cancelled, ledger kept."""
        reply: pb.Dataset = self.datasets.WithdrawDataset(
            pb.WithdrawDatasetRequest(dataset_id=dataset_id), timeout=self.timeout_s)
        return reply

    # ---------------------------------------------------------------- jobs
    def submit(self, spec: pb.JobSpec, request_id: str | None = None) -> pb.Job:
        """Submit a job; a retry with the same ``request_id`` returns the same job."""
        reply: pb.Job = self.training.SubmitJob(
            pb.SubmitJobRequest(request_id=request_id or str(uuid.uuid4()), spec=spec),
            timeout=self.timeout_s,
        )
        return reply

    def submit_audit(self, spec: pb.JobSpec, audit: pb.AuditSettings,
                     request_id: str | None = None) -> pb.Job:
        """Submit a privacy audit (a job with canaries); watch it like a job."""
        reply: pb.Job = self.training.SubmitAudit(
            pb.SubmitAuditRequest(request_id=request_id or str(uuid.uuid4()), spec=spec, audit=audit),
            timeout=self.timeout_s,
        )
        return reply

    def get_job(self, job_id: str) -> pb.Job:
        """One job."""
        reply: pb.Job = self.training.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout_s)
        return reply

    def list_jobs(self, state: str = "") -> list[pb.Job]:
        """Jobs visible to this caller, optionally of one state."""
        return list(self.training.ListJobs(pb.ListJobsRequest(state=state), timeout=self.timeout_s).jobs)

    def cancel(self, job_id: str) -> pb.Job:
        """Cancel a PENDING or RUNNING job."""
        reply: pb.Job = self.training.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=self.timeout_s)
        return reply

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator[pb.JobEvent]:
        """Every event of the job from the first, until it reaches a terminal state."""
        yield from self.training.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout_s)

    def download_parameters(self, job_id: str) -> OpenedBlob:
        """Fetch, verify and decrypt a SUCCEEDED job's parameters.

        A fresh X25519 key pair is made for the download; the server seals to
        its public half. The blob is accepted only if it decrypts and its
        signature verifies under a parameter-signer certificate of our CA.

        Raises
        ------
        TamperedEnvelope
            Any chunk, the order, the length, the hash or the signature is wrong.
        """
        private_key, public_key = generate_recipient_keypair()
        stream = self.training.DownloadParameters(
            pb.DownloadParametersRequest(job_id=job_id, recipient_public_key=public_key),
            timeout=max(self.timeout_s, 600.0),
        )
        return open_sealed(
            (sealed_from_proto(part) for part in stream), private_key,
            load_certificate(self.bundle.ca_cert),
        )

    # ---------------------------------------------------------------- monitoring
    def list_alerts(self, state: str = "", job_id: str = "") -> list[pb.Alert]:
        """Stored alerts (role admin)."""
        return list(self.monitoring.ListAlerts(
            pb.ListAlertsRequest(state=state, job_id=job_id), timeout=self.timeout_s
        ).alerts)


    # ---------------------------------------------------------------- administration
    def list_certificates(self, name: str = "") -> list[pb.CertificateInfo]:
        """People's certificates (role admin)."""
        return list(self.admin.ListCertificates(pb.ListCertificatesRequest(name=name),
                                                timeout=self.timeout_s).certificates)

    def revoke_certificate(self, *, serial: str = "", name: str = "",
                           reason: str = "") -> pb.RevokeCertificateResponse:
        """Revoke a certificate (serial) or every valid one of a person (name) (role admin)."""
        reply: pb.RevokeCertificateResponse = self.admin.RevokeCertificate(
            pb.RevokeCertificateRequest(serial=serial, name=name, reason=reason),
            timeout=self.timeout_s)
        return reply

    def audit_log(self, after_seq: int = 0, since: Any = None,
                  page: int = 1000) -> tuple[list[pb.AuditEntry], int, str]:
        """Every audit-log entry after ``after_seq`` (and from ``since``, an aware datetime),
        fetched page by page; returns them with the head (seq, hash) (role admin)."""
        entries: list[pb.AuditEntry] = []
        while True:
            request = pb.ListAuditLogRequest(after_seq=after_seq, limit=page)
            if since is not None:
                request.since.FromDatetime(since)
            reply = self.admin.ListAuditLog(request, timeout=self.timeout_s)
            entries.extend(reply.entries)
            if len(reply.entries) < page:
                return entries, reply.head_seq, reply.head_hash
            after_seq = reply.entries[-1].seq

    def audit_signatures(self) -> list[pb.AuditSignature]:
        """Every signed head of the audit log (role admin)."""
        return list(self.admin.ListAuditSignatures(pb.ListAuditSignaturesRequest(),
                                                   timeout=self.timeout_s).signatures)

    def sign_audit_log(self) -> pb.AuditSignature:
        """Have the server sign the audit log's head now (role admin)."""
        reply: pb.AuditSignature = self.admin.SignAuditLog(pb.SignAuditLogRequest(),
                                                           timeout=self.timeout_s)
        return reply


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def job_spec(**fields: Any) -> pb.JobSpec:
    """A JobSpec message from keyword fields (lists for repeated fields)."""
    return pb.JobSpec(**fields)
