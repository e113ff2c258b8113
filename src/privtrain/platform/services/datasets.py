"""DatasetService: verified uploads of anonymized tables and packed image arrays, their budgets,
the trainers their owners grant, their ledgers, and withdrawal."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from privtrain.anonymize.manifest import verify_manifest
from privtrain.datasets.image_arrays import check_image_file
from privtrain.datasets.image_manifest import IMAGE_KIND, TABLE_KIND, manifest_kind
from privtrain.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied, shown
from privtrain.platform.audit_trail import AuditTrail
from privtrain.platform.convert import dataset_to_proto, ledger_to_proto
from privtrain.platform.db.records import DatasetRecord, NewDataset
from privtrain.platform.db.repositories import Database
from privtrain.platform.ids import checked_id
from privtrain.platform.job_states import TERMINAL_STATES
from privtrain.platform.rpc import allow
from privtrain.platform.runner import JobRunner
from privtrain.platform.splits import (
    check_delta,
    count_split,
    declared_split,
    publish_counts,
    split_json,
)
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.issuing import check_person_name
from privtrain.secure_transport.roles import PeerIdentity, Role
from privtrain.trainer.checkpoints import private_folder

log = logging.getLogger(__name__)

MAX_EPSILON_BUDGET = 100.0
SUFFIXES = {IMAGE_KIND: ".safetensors", TABLE_KIND: ".parquet"}
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# σ of the noise on the published row counts (sensitivity 1): ±20 rows hides any one row
# and costs about ε = 0.15 alone at δ = 2e-5 (much less composed with the jobs after it).
ROW_COUNT_NOISE = 20.0


def check_budget(epsilon: float, delta: float) -> None:
    """A budget is 0 < ε ≤ 100 and 0 < δ < 1.

    Past ε = 100 the guarantee (a likelihood ratio of e^100) means nothing, so
    such a budget is a typo rather than a policy.

    Raises
    ------
    InvalidInput
        Naming the bad value.
    """
    if not (math.isfinite(epsilon) and 0 < epsilon <= MAX_EPSILON_BUDGET):
        raise InvalidInput(f"epsilon_budget must be in (0, {MAX_EPSILON_BUDGET:g}], got {epsilon}")
    if not (0 < delta < 1):
        raise InvalidInput(f"delta_budget must be in (0, 1), got {delta}")


def _uploaded(first: pb.UploadRequest | None, reply: pb.Dataset | None) -> str:
    if reply is not None:
        return f"dataset {reply.id} ({reply.name})"
    named = first is not None and first.WhichOneof("part") == "header"
    return f"dataset {first.header.name[:128]}" if named else "dataset (no header)"  # type: ignore[union-attr]


def _budget(request: pb.SetBudgetRequest, reply: object) -> str:
    return (f"dataset {request.dataset_id} epsilon={request.epsilon_budget:g} "
            f"delta={request.delta_budget:g}")


def _grant(request: pb.GrantRequest, reply: object) -> str:
    return f"dataset {request.dataset_id} trainer {request.trainer[:64]}"


def _dataset(request: pb.WithdrawDatasetRequest | pb.GetLedgerRequest, reply: object) -> str:
    return f"dataset {request.dataset_id}"


class DatasetServicer(pb_grpc.DatasetServiceServicer):
    """Stores a dataset only after its manifest verifies against the uploader and the bytes.

    A table is stored as ``<id>.parquet``; a packed image array as ``<id>.safetensors``,
    after it passes the checks the worker runs before training (tensor names, shapes and
    dtypes as the manifest declares, finite pixels, labels among ``label_values``), so bad
    content is INVALID_ARGUMENT at upload, with nothing stored or recorded, not a failed job.
    The owner's split is resolved, its noisy row counts published and charged, and the
    dataset bound to the ledger of its source (see :meth:`DatasetRepository.create`).
    """

    def __init__(self, db: Database, storage_dir: Path, max_dataset_bytes: int = 64 * 2**30, *,
                 runner: JobRunner, audit_trail: AuditTrail, row_count_noise: float = ROW_COUNT_NOISE,
                 ledger_accountant: str = "prv") -> None:
        self._db = db
        self._storage = private_folder(storage_dir)
        self._max_bytes = max_dataset_bytes
        self._runner = runner
        self.audit_trail = audit_trail
        self._row_count_noise = row_count_noise
        self._accountant = ledger_accountant

    def _message(self, ds: DatasetRecord, identity: PeerIdentity) -> pb.Dataset:
        full = identity.role is Role.ADMIN or ds.owner_common_name == identity.common_name
        trainers = self._db.grants.trainers(ds.id) if full else []
        return dataset_to_proto(ds, self._db.budget.ledger(ds.ledger_id), full=full,
                                trainers=trainers)

    def _owned(self, dataset_id: str, identity: PeerIdentity, *, admin_too: bool = False) -> DatasetRecord:
        """The dataset, if the caller owns it (or is an admin, where ``admin_too``).

        Raises
        ------
        NotFound
            No such dataset.
        PermissionDenied
            Someone else's dataset.
        """
        dataset = self._db.datasets.get(checked_id(dataset_id, "dataset_id", "dataset"))
        if dataset.owner_common_name != identity.common_name and not (
                admin_too and identity.role is Role.ADMIN):
            raise PermissionDenied(f"dataset {dataset.id} belongs to another data owner")
        return dataset

    @allow(Role.DATA_OWNER, audit="dataset.upload", target=_uploaded)
    def Upload(self, request_iterator: Iterator[pb.UploadRequest], context: grpc.ServicerContext,
               identity: PeerIdentity) -> pb.Dataset:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("the first Upload message must be an UploadHeader")
        header = first.header
        if not DATASET_NAME.fullmatch(header.name):
            raise InvalidInput(
                f"dataset name {shown(header.name)} must be 1-128 characters of letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        check_budget(header.epsilon_budget, header.delta_budget)
        verified = verify_manifest(header.manifest)
        if verified.signer_fingerprint_sha256 != identity.fingerprint_sha256:
            raise PermissionDenied(
                f"the manifest is signed by another certificate (SHA-256 "
                f"{verified.signer_fingerprint_sha256[:16]}...) than the uploader's "
                f"({identity.common_name}, {identity.fingerprint_sha256[:16]}...): sign it with the "
                "data-owner key and certificate you connect with (same name from another CA counts "
                "as another certificate)"
            )
        manifest = verified.manifest
        expected_bytes = int(manifest["output_bytes"])
        if header.total_bytes != expected_bytes:
            raise InvalidInput(
                f"header announces {header.total_bytes} bytes, the manifest says {expected_bytes}"
            )
        if expected_bytes > self._max_bytes:
            raise InvalidInput(f"dataset of {expected_bytes} bytes exceeds the limit {self._max_bytes}")
        kind = manifest_kind(manifest)
        split = declared_split(manifest, header.split_column, header.train_split, header.test_split)
        dataset_id = str(uuid.uuid4())
        final = self._storage / f"{dataset_id}{SUFFIXES[kind]}"
        digest, size = self._receive(request_iterator, final, expected_bytes)
        try:
            if digest != manifest["output_sha256"]:
                raise InvalidInput(
                    f"output_sha256 mismatch: manifest says {manifest['output_sha256']}, "
                    f"uploaded bytes hash to {digest}"
                )
            if kind == IMAGE_KIND:
                check_image_file(final, manifest)
            published = publish_counts(*count_split(final, kind, split), self._row_count_noise)
            check_delta(header.delta_budget, published.rows, "delta_budget")
            record, _ = self._db.datasets.create(NewDataset(
                name=header.name, owner_common_name=identity.common_name, storage_path=str(final),
                sha256=digest, size_bytes=size, rows=int(manifest["output_rows"]),
                manifest_json=json.dumps(manifest),
                manifest_sha256=hashlib.sha256(header.manifest).hexdigest(),
                input_sha256=manifest.get("input_sha256"),
                previous_manifest_sha256=manifest.get("previous_manifest_sha256"),
                split_json=split_json(split), published_train_rows=published.train_rows,
                published_test_rows=published.test_rows, dataset_id=dataset_id,
            ), epsilon_budget=header.epsilon_budget, delta_budget=header.delta_budget,
                accountant=self._accountant)
            try:
                self._db.budget.charge_release(record.ledger_id, record.id, published.history)
            except BaseException:
                self._db.datasets.remove_unused(record.id)
                raise
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return self._message(record, identity)

    def _receive(self, parts: Iterator[pb.UploadRequest], final: Path, expected: int) -> tuple[str, int]:
        """Stream chunks into a temporary file, then rename; returns (sha256 hex, bytes)."""
        sha = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self._storage, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    if part.WhichOneof("part") != "chunk":
                        raise InvalidInput("only data chunks may follow the UploadHeader")
                    size += len(part.chunk)
                    if size > expected:
                        raise InvalidInput(f"upload exceeds the announced {expected} bytes")
                    sha.update(part.chunk)
                    out.write(part.chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != expected:
                raise InvalidInput(f"upload ended after {size} of {expected} announced bytes")
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha.hexdigest(), size

    @allow(Role.DATA_OWNER, Role.TRAINER, Role.ADMIN)
    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext,
                     identity: PeerIdentity) -> pb.ListDatasetsResponse:
        datasets = self._db.datasets.list()
        if identity.role is Role.DATA_OWNER:
            datasets = [d for d in datasets if d.owner_common_name == identity.common_name]
        elif identity.role is Role.TRAINER:
            granted = self._db.grants.datasets_of(identity.common_name)
            datasets = [d for d in datasets if d.id in granted and not d.withdrawn]
        return pb.ListDatasetsResponse(datasets=[self._message(ds, identity) for ds in datasets])

    @allow(Role.DATA_OWNER, audit="dataset.budget", target=_budget)
    def SetBudget(self, request: pb.SetBudgetRequest, context: grpc.ServicerContext,
                  identity: PeerIdentity) -> pb.Dataset:
        check_budget(request.epsilon_budget, request.delta_budget)
        dataset = self._owned(request.dataset_id, identity)
        for other in self._db.datasets.on_ledger(dataset.ledger_id):
            if other.published_train_rows is not None:
                check_delta(request.delta_budget,
                            other.published_train_rows + (other.published_test_rows or 0),
                            f"delta_budget (dataset {other.name!r})")
        self._db.budget.set_budget(dataset.ledger_id, request.epsilon_budget, request.delta_budget)
        return self._message(self._db.datasets.get(dataset.id), identity)

    @allow(Role.DATA_OWNER, audit="dataset.grant", target=_grant)
    def GrantTrainer(self, request: pb.GrantRequest, context: grpc.ServicerContext,
                     identity: PeerIdentity) -> pb.Dataset:
        dataset = self._owned(request.dataset_id, identity)
        trainer = check_person_name(request.trainer)
        role = self._db.certificates.role_of(trainer)
        if role is None:
            raise NotFound(f"no certificate was issued to {shown(trainer)}; ask the operator for "
                           "the trainer's name (privtrain certs list)")
        if role != Role.TRAINER.value:
            raise InvalidInput(f"{shown(trainer)} has role {role}, not trainer")
        if dataset.withdrawn:
            raise FailedPrecondition(f"dataset {dataset.id} is withdrawn")
        if self._db.grants.grant(dataset.id, trainer, by=identity.common_name):
            log.info("dataset %s: %s granted to trainer %s", dataset.id, identity.common_name, trainer)
        return self._message(dataset, identity)

    @allow(Role.DATA_OWNER, audit="dataset.revoke_grant", target=_grant)
    def RevokeTrainer(self, request: pb.GrantRequest, context: grpc.ServicerContext,
                      identity: PeerIdentity) -> pb.Dataset:
        dataset = self._owned(request.dataset_id, identity)
        if not self._db.grants.revoke(dataset.id, request.trainer):
            raise FailedPrecondition(f"{shown(request.trainer)} holds no grant on dataset "
                                     f"{dataset.id}")
        log.info("dataset %s: %s revoked trainer %s", dataset.id, identity.common_name, request.trainer)
        return self._message(dataset, identity)

    @allow(Role.DATA_OWNER, Role.ADMIN)
    def GetLedger(self, request: pb.GetLedgerRequest, context: grpc.ServicerContext,
                  identity: PeerIdentity) -> pb.DatasetLedger:
        dataset = self._owned(request.dataset_id, identity, admin_too=True)
        ledger = self._db.budget.ledger(dataset.ledger_id)
        entries = self._db.budget.entries(ledger.id)
        names = {d.id: d.name for d in self._db.datasets.on_ledger(ledger.id)}
        jobs = {e.job_id: self._db.jobs.get(e.job_id) for e in entries if e.job_id is not None}
        return ledger_to_proto(ledger, entries, names, jobs)

    @allow(Role.DATA_OWNER, Role.ADMIN, audit="dataset.withdraw", target=_dataset)
    def WithdrawDataset(self, request: pb.WithdrawDatasetRequest, context: grpc.ServicerContext,
                        identity: PeerIdentity) -> pb.Dataset:
        """Mark it withdrawn first (the scheduler then neither admits nor starts its jobs),
        cancel its unfinished jobs, then delete its file; the ledger stays."""
        dataset = self._db.datasets.withdraw(
            self._owned(request.dataset_id, identity, admin_too=True).id)
        unfinished = [j for j in self._db.jobs.list(dataset_id=dataset.id)
                      if j.state not in TERMINAL_STATES]
        for job in unfinished:
            self._runner.cancel(job.id)
        Path(dataset.storage_path).unlink(missing_ok=True)
        log.info("dataset %s withdrawn by %s: file deleted, %d unfinished job(s) cancelled",
                 dataset.id, identity.common_name, len(unfinished))
        return self._message(dataset, identity)
