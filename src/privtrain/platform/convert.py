"""Conversions between stored records / engine types and protobuf messages."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from privtrain import bounded_json
from privtrain.datasets.image_manifest import manifest_kind
from privtrain.errors import InvalidInput, shown
from privtrain.platform.db.budget import EntryRecord, LedgerRecord, compose
from privtrain.platform.db.records import DatasetRecord, EventRecord, JobRecord
from privtrain.platform.proto_time import timestamp
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.secure_transport.envelope import SealedChunk, SealedHeader, SealedPart, SealedTrailer
from privtrain.trainer.audit import AuditSettings
from privtrain.trainer.spec import TrainingSpec

_SPEC_FIELDS = (
    "dataset_id", "model", "target_column", "target_epsilon", "target_delta", "epochs", "batch_size", "max_physical_batch_size",
    "max_grad_norm", "learning_rate", "momentum", "weight_decay", "seed", "device", "accountant",
    "noise_multiplier", "optimizer", "nesterov", "lr_schedule", "fix_model", "freeze_unused", "clipping", "world_size",
    "target_unclipped_quantile", "clipbound_learning_rate", "min_clipbound", "max_clipbound",
    "unclipped_num_std", "noise_schedule", "noise_gamma", "noise_step_epochs", "precision", "compile",
    "release_test_accuracy", "test_accuracy_noise",
)
_OPTIONAL_SPEC_FIELDS = frozenset({
    "target_epsilon", "target_delta", "epochs", "batch_size", "max_physical_batch_size",
    "max_grad_norm", "learning_rate", "momentum", "weight_decay", "seed", "noise_multiplier",
    "world_size", "target_unclipped_quantile", "clipbound_learning_rate", "min_clipbound",
    "max_clipbound", "unclipped_num_std", "noise_gamma", "noise_step_epochs", "test_accuracy_noise",
})
_REQUIRED_SPEC_FIELDS = frozenset({"dataset_id", "target_column"})
MAX_MODEL_OPTIONS_CHARS = 64 * 1024
"""Longest ``model_options_json`` (characters): a declarative model of hundreds of layers."""
MAX_MODEL_OPTIONS_DEPTH = 8
"""Deepest nesting of ``model_options_json`` (a layer's kwargs sit at depth 4)."""
# Options that only mean something with another setting: (field, needed field, needed values).
_DEPENDENT_OPTIONS = (
    *((name, "clipping", ("adaptive",)) for name in (
        "target_unclipped_quantile", "clipbound_learning_rate", "min_clipbound", "max_clipbound",
        "unclipped_num_std")),
    ("noise_gamma", "noise_schedule", ("exponential", "step")),
    ("noise_step_epochs", "noise_schedule", ("step",)),
    ("hidden_sizes", "model", ("mlp",)),
    ("test_accuracy_noise", "release_test_accuracy", ("every_epoch", "final")),
)
# Result fields any viewer of the job may read: DP releases, public plan figures, the
# parameters' digest and size (functions of the model alone).
_RESULT_FIELDS = (
    "epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps", "test_rows",
    "train_rows", "parameters_sha256", "parameters_bytes", "device",
)
_AUDIT_FIELDS = ("mechanism", "canaries", "guesses", "correct", "confidence", "delta", "epsilon_lower")


def spec_from_proto(msg: pb.JobSpec) -> TrainingSpec:
    """Build a validated :class:`TrainingSpec`; unset fields (and empty strings) take the defaults.

    Raises
    ------
    InvalidInput
        A field is out of range, or set while the setting it belongs to is off (e.g.
        ``noise_gamma`` with the constant noise schedule); ``model_options_json`` is not a
        JSON object within :func:`privtrain.bounded_json.loads`' limits (depth
        :data:`MAX_MODEL_OPTIONS_DEPTH`, :data:`MAX_MODEL_OPTIONS_CHARS` characters, finite
        numbers, integers of at most 32 digits); the message names it.
    """
    _refuse_inapplicable(msg)
    values: dict[str, Any] = {}
    for name in _SPEC_FIELDS:
        if name in _OPTIONAL_SPEC_FIELDS:
            if msg.HasField(name):
                values[name] = getattr(msg, name)
        elif name in _REQUIRED_SPEC_FIELDS or getattr(msg, name) not in ("", False):
            values[name] = getattr(msg, name)
    if msg.hidden_sizes:
        values["hidden_sizes"] = tuple(msg.hidden_sizes)
    if msg.model_options_json:
        try:
            options = bounded_json.loads(msg.model_options_json, what="model_options_json",
                                         max_depth=MAX_MODEL_OPTIONS_DEPTH,
                                         max_chars=MAX_MODEL_OPTIONS_CHARS)
        except bounded_json.JSONLimitError as exc:
            raise InvalidInput(str(exc)) from None
        if not isinstance(options, dict):
            raise InvalidInput("model_options_json must be a JSON object")
        values["model_options"] = options
    if msg.feature_columns:
        values["feature_columns"] = tuple(msg.feature_columns)
    return TrainingSpec(**values)


def audit_from_proto(msg: pb.AuditSettings) -> AuditSettings:
    """Validated audit settings; 0 means the default for ``guesses`` and ``confidence``.

    Raises
    ------
    InvalidInput
        See :class:`privtrain.trainer.audit.AuditSettings`.
    """
    return AuditSettings(canaries=msg.canaries, mechanism=msg.mechanism or "dp", guesses=msg.guesses,
                         confidence=msg.confidence or 0.95)


def _is_set(msg: pb.JobSpec, name: str) -> bool:
    if name == "hidden_sizes":
        return bool(msg.hidden_sizes)
    return msg.HasField(name)


def _refuse_inapplicable(msg: pb.JobSpec) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingSpec)}
    problems = []
    for name, needs, values in _DEPENDENT_OPTIONS:
        setting = getattr(msg, needs) or defaults[needs]
        if _is_set(msg, name) and setting not in values:
            wanted = " or ".join(repr(v) for v in values)
            problems.append(f"{name} applies only with {needs} {wanted}, not {shown(setting)}")
    if problems:
        raise InvalidInput("invalid job spec: " + "; ".join(problems))


def _applies(spec: dict[str, Any], name: str) -> bool:
    return all(spec.get(needs) in values for field, needs, values in _DEPENDENT_OPTIONS
               if field == name)


def spec_to_proto(spec: dict[str, Any]) -> pb.JobSpec:
    """The stored spec dict as a JobSpec message, without options its settings leave unused
    (so the message can be submitted again as it is)."""
    msg = pb.JobSpec(**{k: spec[k] for k in _SPEC_FIELDS
                        if spec.get(k) is not None and _applies(spec, k)})
    if _applies(spec, "hidden_sizes"):
        msg.hidden_sizes.extend(spec.get("hidden_sizes", []))
    if spec.get("model_options"):
        msg.model_options_json = json.dumps(spec["model_options"], sort_keys=True)
    msg.feature_columns.extend(spec.get("feature_columns", []))
    return msg


def job_to_proto(job: JobRecord, *, epsilon_spent: float, admin: bool,
                 worker_pid: int | None = None) -> pb.Job:
    """A stored job as a Job message; ``monitoring`` (exact figures) only for ``admin``."""
    msg = pb.Job(
        id=job.id, state=job.state.value, spec=spec_to_proto(job.spec), kind=job.kind,
        submitter=job.submitter_common_name, error=job.error or "", epsilon_spent=epsilon_spent,
    )
    plan = job.plan
    if plan is not None:
        msg.plan.CopyFrom(pb.JobPlan(
            noise_multiplier=plan["scale"], sample_rate=plan["sample_rate"],
            steps=plan["steps_per_epoch"] * len(plan["shape"]), train_rows=plan["train_rows"],
            test_rows=plan["test_rows"], epsilon=plan["epsilon"], delta=plan["delta"],
            accountant=plan["accountant"], test_accuracy_releases=len(plan["release_epochs"]),
        ))
    result = job.result
    if result:
        msg.result.CopyFrom(pb.JobResult(**{k: result[k] for k in _RESULT_FIELDS
                                             if result.get(k) is not None}))
        if result.get("test_accuracy") is not None:
            msg.result.test_accuracy = result["test_accuracy"]
        audit = result.get("audit")
        if audit is not None and (admin or audit.get("mechanism") == "dp"):
            msg.result.audit.CopyFrom(pb.AuditResult(**{k: audit[k] for k in _AUDIT_FIELDS}))
    if admin:
        monitoring = pb.JobMonitoring(error_detail=job.error_detail or "", worker_pid=worker_pid or 0,
                                      worker_host=job.lease_owner or "", attempts=job.attempts,
                                      failed_attempts=job.failed_attempts)
        if result:
            monitoring.test_accuracy = _finite(result.get("exact_test_accuracy"))
            monitoring.train_rows = result.get("exact_train_rows", 0)
            monitoring.test_rows = result.get("exact_test_rows", 0)
            monitoring.final_loss = _finite(result.get("final_loss"))
            monitoring.train_seconds = result.get("train_seconds", 0.0)
        msg.monitoring.CopyFrom(monitoring)
    for name in ("created_at", "started_at", "finished_at"):
        ts = timestamp(getattr(job, name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    return msg


def _finite(value: Any) -> float:
    """A stored figure as a float (NaN for a missing or non-finite one)."""
    return float(value) if isinstance(value, (int, float)) else float("nan")


def dataset_to_proto(ds: DatasetRecord, ledger: LedgerRecord, *, full: bool,
                     trainers: list[str] | None = None) -> pb.Dataset:
    """A stored dataset with its ledger's budget and remaining (ε, δ) as a Dataset message.

    ``full`` (the dataset's owner, an admin) adds what is computed from the rows
    themselves (the exact row count, the file's SHA-256 and size), the ``trainers``
    granted on it and when it was withdrawn.
    """
    manifest = ds.manifest
    msg = pb.Dataset(
        id=ds.id, name=ds.name, owner=ds.owner_common_name, ledger_id=ds.ledger_id,
        epsilon_budget=ledger.epsilon_budget, delta_budget=ledger.delta_budget,
        epsilon_remaining=ledger.epsilon_remaining, delta_remaining=ledger.delta_remaining,
        k_anonymity=int(manifest.get("k_target", 0)), kind=manifest_kind(manifest),
        published_train_rows=ds.published_train_rows or 0,
        published_test_rows=ds.published_test_rows or 0,
    )
    if full:
        msg.rows, msg.sha256, msg.size_bytes = ds.rows, ds.sha256, ds.size_bytes
        msg.trainers.extend(trainers or [])
        if ds.withdrawn_at is not None:
            msg.withdrawn_at.CopyFrom(timestamp(ds.withdrawn_at))
    msg.created_at.CopyFrom(timestamp(ds.created_at))
    return msg


def ledger_to_proto(ledger: LedgerRecord, entries: list[EntryRecord], dataset_names: dict[str, str],
                    jobs: dict[str, JobRecord]) -> pb.DatasetLedger:
    """A ledger and every charge on it, with who and when: for the data owner and admins only.

    A job's line carries its plan's ε and δ (its own accountant) and the ε it spent; a
    release or fixed charge, its ε alone at the ledger's δ by the ledger's accountant.
    ``created_at`` is when the charge was made (a job's: its admission).
    """
    msg = pb.DatasetLedger(ledger_id=ledger.id, accountant=ledger.accountant,
                           epsilon_budget=ledger.epsilon_budget, delta_budget=ledger.delta_budget,
                           epsilon_committed=ledger.epsilon_committed)
    for entry in entries:
        line = pb.LedgerLine(id=entry.id, kind=entry.kind, dataset_id=entry.dataset_id,
                             dataset_name=dataset_names.get(entry.dataset_id, ""),
                             epsilon_spent=entry.epsilon_spent, settled=entry.settled)
        if entry.created_at is not None:
            line.created_at.CopyFrom(timestamp(entry.created_at))
        job = jobs.get(entry.job_id or "")
        if job is not None:
            plan = job.plan or {}
            line.job_id, line.job_kind, line.job_state = job.id, job.kind, job.state.value
            line.submitter = job.submitter_common_name
            line.planned_epsilon = float(plan.get("epsilon", 0.0))
            line.planned_delta = float(plan.get("delta", 0.0))
            if job.finished_at is not None:
                line.finished_at.CopyFrom(timestamp(job.finished_at))
        else:
            line.planned_epsilon = compose(ledger.accountant, [entry], ledger.delta_budget)
            line.planned_delta = entry.delta_fixed if entry.kind == "fixed" else ledger.delta_budget
        msg.entries.append(line)
    return msg


def alert_to_proto(payload: dict[str, Any]) -> pb.Alert:
    """An alert payload (see :func:`privtrain.platform.alerting.alert_payload`) as a message."""
    msg = pb.Alert(
        id=payload["id"], job_id=payload["job_id"], kind=payload["kind"],
        state=payload["state"], message=payload["message"],
    )
    msg.fired_at.FromJsonString(payload["fired_at"])
    if payload.get("resolved_at"):
        msg.resolved_at.FromJsonString(payload["resolved_at"])
    return msg


def event_to_proto(event: EventRecord, *, admin: bool) -> pb.JobEvent | None:
    """A stored job event as a JobEvent message (None for kinds this viewer does not get).

    A trainer gets state changes, resumptions, each step's number and ε, and the released
    accuracies; alerts and the exact figures (loss, batch sizes, throughput, exact
    accuracy) go to admins only.
    """
    msg = pb.JobEvent(id=event.id, job_id=event.job_id)
    msg.time.CopyFrom(timestamp(event.created_at))
    p = event.payload
    if event.kind == "state":
        msg.state.CopyFrom(pb.StateChange(state=p["state"], error=p.get("error", "")))
    elif event.kind == "step":
        step = pb.StepMetrics(step=p["step"], total_steps=p["total_steps"], epoch=p["epoch"],
                              epsilon=math.inf if p["epsilon"] is None else p["epsilon"])
        if admin:
            step.monitoring.CopyFrom(pb.StepMonitoring(batch_size=p["batch_size"],
                                                       samples_per_s=p["samples_per_s"]))
            if p["loss"] is not None:
                step.monitoring.loss = p["loss"]
            elif p.get("loss_nonfinite"):
                step.monitoring.loss = float(p["loss_nonfinite"])
        msg.step.CopyFrom(step)
    elif event.kind == "epoch":
        epoch = pb.EpochSummary(epoch=p["epoch"], epsilon=p["epsilon"])
        if p.get("test_accuracy") is not None:
            epoch.test_accuracy = p["test_accuracy"]
        if admin and p.get("exact_test_accuracy") is not None:
            epoch.exact_test_accuracy = p["exact_test_accuracy"]
        msg.epoch.CopyFrom(epoch)
    elif event.kind == "alert" and admin:
        msg.alert.CopyFrom(alert_to_proto(p))
    elif event.kind == "resumed":
        # Public: when a job resumes depends on faults of the service, not on the rows.
        msg.resumed.CopyFrom(pb.Resumed(attempt=p["attempt"], from_checkpoint=p["from_checkpoint"]))
    else:
        return None
    return msg


def sealed_to_proto(part: SealedPart) -> pb.SealedPart:
    """One envelope part as a SealedPart message."""
    if isinstance(part, SealedHeader):
        return pb.SealedPart(header=pb.SealedHeader(
            version=part.version, ephemeral_public_key=part.ephemeral_public_key, salt=part.salt,
            nonce_prefix=part.nonce_prefix, chunk_bytes=part.chunk_bytes,
            total_bytes=part.total_bytes, chunk_count=part.chunk_count,
            plaintext_sha256=part.plaintext_sha256,
            signer_certificate_pem=part.signer_certificate_pem, content_type=part.content_type,
            metadata=dict(part.metadata),
        ))
    if isinstance(part, SealedChunk):
        return pb.SealedPart(chunk=pb.SealedChunk(index=part.index, ciphertext=part.ciphertext))
    return pb.SealedPart(trailer=pb.SealedTrailer(signature=part.signature))


def sealed_from_proto(msg: pb.SealedPart) -> SealedPart:
    """Inverse of :func:`sealed_to_proto`; an empty part becomes an empty trailer (rejected later)."""
    which = msg.WhichOneof("part")
    if which == "header":
        h = msg.header
        return SealedHeader(
            version=h.version, ephemeral_public_key=h.ephemeral_public_key, salt=h.salt,
            nonce_prefix=h.nonce_prefix, chunk_bytes=h.chunk_bytes, total_bytes=h.total_bytes,
            chunk_count=h.chunk_count, plaintext_sha256=h.plaintext_sha256,
            signer_certificate_pem=h.signer_certificate_pem, content_type=h.content_type,
            metadata=dict(h.metadata),
        )
    if which == "chunk":
        return SealedChunk(index=msg.chunk.index, ciphertext=msg.chunk.ciphertext)
    return SealedTrailer(signature=msg.trailer.signature)
