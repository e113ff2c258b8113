import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadHeader(_message.Message):
    __slots__ = ("name", "manifest", "epsilon_budget", "delta_budget", "total_bytes", "split_column", "train_split", "test_split")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DELTA_BUDGET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SPLIT_FIELD_NUMBER: _ClassVar[int]
    TEST_SPLIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest: bytes
    epsilon_budget: float
    delta_budget: float
    total_bytes: int
    split_column: str
    train_split: str
    test_split: str
    def __init__(self, name: _Optional[str] = ..., manifest: _Optional[bytes] = ..., epsilon_budget: _Optional[float] = ..., delta_budget: _Optional[float] = ..., total_bytes: _Optional[int] = ..., split_column: _Optional[str] = ..., train_split: _Optional[str] = ..., test_split: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "name", "owner", "rows", "sha256", "size_bytes", "epsilon_budget", "delta_budget", "epsilon_remaining", "delta_remaining", "k_anonymity", "created_at", "kind", "published_train_rows", "published_test_rows", "ledger_id", "trainers", "withdrawn_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DELTA_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DELTA_REMAINING_FIELD_NUMBER: _ClassVar[int]
    K_ANONYMITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINERS_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    owner: str
    rows: int
    sha256: str
    size_bytes: int
    epsilon_budget: float
    delta_budget: float
    epsilon_remaining: float
    delta_remaining: float
    k_anonymity: int
    created_at: _timestamp_pb2.Timestamp
    kind: str
    published_train_rows: int
    published_test_rows: int
    ledger_id: str
    trainers: _containers.RepeatedScalarFieldContainer[str]
    withdrawn_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., rows: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., epsilon_budget: _Optional[float] = ..., delta_budget: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., delta_remaining: _Optional[float] = ..., k_anonymity: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., published_train_rows: _Optional[int] = ..., published_test_rows: _Optional[int] = ..., ledger_id: _Optional[str] = ..., trainers: _Optional[_Iterable[str]] = ..., withdrawn_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("dataset_id", "trainer")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    trainer: str
    def __init__(self, dataset_id: _Optional[str] = ..., trainer: _Optional[str] = ...) -> None: ...

class GetLedgerRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class WithdrawDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class LedgerLine(_message.Message):
    __slots__ = ("id", "kind", "dataset_id", "dataset_name", "job_id", "job_kind", "submitter", "job_state", "planned_epsilon", "planned_delta", "epsilon_spent", "settled", "created_at", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    PLANNED_EPSILON_FIELD_NUMBER: _ClassVar[int]
    PLANNED_DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    dataset_id: str
    dataset_name: str
    job_id: str
    job_kind: str
    submitter: str
    job_state: str
    planned_epsilon: float
    planned_delta: float
    epsilon_spent: float
    settled: bool
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., dataset_id: _Optional[str] = ..., dataset_name: _Optional[str] = ..., job_id: _Optional[str] = ..., job_kind: _Optional[str] = ..., submitter: _Optional[str] = ..., job_state: _Optional[str] = ..., planned_epsilon: _Optional[float] = ..., planned_delta: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., settled: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DatasetLedger(_message.Message):
    __slots__ = ("ledger_id", "accountant", "epsilon_budget", "delta_budget", "epsilon_committed", "entries")
    LEDGER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DELTA_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ledger_id: str
    accountant: str
    epsilon_budget: float
    delta_budget: float
    epsilon_committed: float
    entries: _containers.RepeatedCompositeFieldContainer[LedgerLine]
    def __init__(self, ledger_id: _Optional[str] = ..., accountant: _Optional[str] = ..., epsilon_budget: _Optional[float] = ..., delta_budget: _Optional[float] = ..., epsilon_committed: _Optional[float] = ..., entries: _Optional[_Iterable[_Union[LedgerLine, _Mapping]]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("dataset_id", "epsilon_budget", "delta_budget")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DELTA_BUDGET_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    epsilon_budget: float
    delta_budget: float
    def __init__(self, dataset_id: _Optional[str] = ..., epsilon_budget: _Optional[float] = ..., delta_budget: _Optional[float] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("dataset_id", "model", "hidden_sizes", "target_column", "feature_columns", "target_epsilon", "target_delta", "epochs", "batch_size", "max_physical_batch_size", "max_grad_norm", "learning_rate", "momentum", "weight_decay", "seed", "device", "accountant", "noise_multiplier", "optimizer", "nesterov", "lr_schedule", "model_options_json", "fix_model", "freeze_unused", "world_size", "clipping", "target_unclipped_quantile", "clipbound_learning_rate", "min_clipbound", "max_clipbound", "unclipped_num_std", "noise_schedule", "noise_gamma", "noise_step_epochs", "precision", "compile", "release_test_accuracy", "test_accuracy_noise")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZES_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TARGET_DELTA_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PHYSICAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MODEL_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    FIX_MODEL_FIELD_NUMBER: _ClassVar[int]
    FREEZE_UNUSED_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLIPPING_FIELD_NUMBER: _ClassVar[int]
    TARGET_UNCLIPPED_QUANTILE_FIELD_NUMBER: _ClassVar[int]
    CLIPBOUND_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIPBOUND_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIPBOUND_FIELD_NUMBER: _ClassVar[int]
    UNCLIPPED_NUM_STD_FIELD_NUMBER: _ClassVar[int]
    NOISE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NOISE_GAMMA_FIELD_NUMBER: _ClassVar[int]
    NOISE_STEP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_NOISE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    model: str
    hidden_sizes: _containers.RepeatedScalarFieldContainer[int]
    target_column: str
    feature_columns: _containers.RepeatedScalarFieldContainer[str]
    target_epsilon: float
    target_delta: float
    epochs: int
    batch_size: int
    max_physical_batch_size: int
    max_grad_norm: float
    learning_rate: float
    momentum: float
    weight_decay: float
    seed: int
    device: str
    accountant: str
    noise_multiplier: float
    optimizer: str
    nesterov: bool
    lr_schedule: str
    model_options_json: str
    fix_model: bool
    freeze_unused: bool
    world_size: int
    clipping: str
    target_unclipped_quantile: float
    clipbound_learning_rate: float
    min_clipbound: float
    max_clipbound: float
    unclipped_num_std: float
    noise_schedule: str
    noise_gamma: float
    noise_step_epochs: int
    precision: str
    compile: bool
    release_test_accuracy: str
    test_accuracy_noise: float
    def __init__(self, dataset_id: _Optional[str] = ..., model: _Optional[str] = ..., hidden_sizes: _Optional[_Iterable[int]] = ..., target_column: _Optional[str] = ..., feature_columns: _Optional[_Iterable[str]] = ..., target_epsilon: _Optional[float] = ..., target_delta: _Optional[float] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., max_physical_batch_size: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., accountant: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., optimizer: _Optional[str] = ..., nesterov: _Optional[bool] = ..., lr_schedule: _Optional[str] = ..., model_options_json: _Optional[str] = ..., fix_model: _Optional[bool] = ..., freeze_unused: _Optional[bool] = ..., world_size: _Optional[int] = ..., clipping: _Optional[str] = ..., target_unclipped_quantile: _Optional[float] = ..., clipbound_learning_rate: _Optional[float] = ..., min_clipbound: _Optional[float] = ..., max_clipbound: _Optional[float] = ..., unclipped_num_std: _Optional[float] = ..., noise_schedule: _Optional[str] = ..., noise_gamma: _Optional[float] = ..., noise_step_epochs: _Optional[int] = ..., precision: _Optional[str] = ..., compile: _Optional[bool] = ..., release_test_accuracy: _Optional[str] = ..., test_accuracy_noise: _Optional[float] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("request_id", "spec")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: JobSpec
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class AuditSettings(_message.Message):
    __slots__ = ("canaries", "mechanism", "guesses", "confidence")
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    GUESSES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    canaries: int
    mechanism: str
    guesses: int
    confidence: float
    def __init__(self, canaries: _Optional[int] = ..., mechanism: _Optional[str] = ..., guesses: _Optional[int] = ..., confidence: _Optional[float] = ...) -> None: ...

class SubmitAuditRequest(_message.Message):
    __slots__ = ("request_id", "spec", "audit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: JobSpec
    audit: AuditSettings
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., audit: _Optional[_Union[AuditSettings, _Mapping]] = ...) -> None: ...

class AuditResult(_message.Message):
    __slots__ = ("mechanism", "canaries", "guesses", "correct", "confidence", "delta", "epsilon_lower")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    GUESSES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_LOWER_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower: float
    def __init__(self, mechanism: _Optional[str] = ..., canaries: _Optional[int] = ..., guesses: _Optional[int] = ..., correct: _Optional[int] = ..., confidence: _Optional[float] = ..., delta: _Optional[float] = ..., epsilon_lower: _Optional[float] = ...) -> None: ...

class JobPlan(_message.Message):
    __slots__ = ("noise_multiplier", "sample_rate", "steps", "train_rows", "test_rows", "epsilon", "delta", "accountant", "test_accuracy_releases")
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_RELEASES_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    sample_rate: float
    steps: int
    train_rows: int
    test_rows: int
    epsilon: float
    delta: float
    accountant: str
    test_accuracy_releases: int
    def __init__(self, noise_multiplier: _Optional[float] = ..., sample_rate: _Optional[float] = ..., steps: _Optional[int] = ..., train_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., accountant: _Optional[str] = ..., test_accuracy_releases: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps", "test_accuracy", "test_rows", "train_rows", "parameters_sha256", "parameters_bytes", "device", "audit")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    test_accuracy: float
    test_rows: int
    train_rows: int
    parameters_sha256: str
    parameters_bytes: int
    device: str
    audit: AuditResult
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., accountant: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., sample_rate: _Optional[float] = ..., steps: _Optional[int] = ..., test_accuracy: _Optional[float] = ..., test_rows: _Optional[int] = ..., train_rows: _Optional[int] = ..., parameters_sha256: _Optional[str] = ..., parameters_bytes: _Optional[int] = ..., device: _Optional[str] = ..., audit: _Optional[_Union[AuditResult, _Mapping]] = ...) -> None: ...

class JobMonitoring(_message.Message):
    __slots__ = ("test_accuracy", "train_rows", "test_rows", "final_loss", "train_seconds", "error_detail", "worker_pid", "worker_host", "attempts", "failed_attempts")
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    WORKER_HOST_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    test_accuracy: float
    train_rows: int
    test_rows: int
    final_loss: float
    train_seconds: float
    error_detail: str
    worker_pid: int
    worker_host: str
    attempts: int
    failed_attempts: int
    def __init__(self, test_accuracy: _Optional[float] = ..., train_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., final_loss: _Optional[float] = ..., train_seconds: _Optional[float] = ..., error_detail: _Optional[str] = ..., worker_pid: _Optional[int] = ..., worker_host: _Optional[str] = ..., attempts: _Optional[int] = ..., failed_attempts: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "spec", "submitter", "error", "result", "epsilon_spent", "created_at", "started_at", "finished_at", "plan", "kind", "monitoring")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MONITORING_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    spec: JobSpec
    submitter: str
    error: str
    result: JobResult
    epsilon_spent: float
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    plan: JobPlan
    kind: str
    monitoring: JobMonitoring
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., submitter: _Optional[str] = ..., error: _Optional[str] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., epsilon_spent: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plan: _Optional[_Union[JobPlan, _Mapping]] = ..., kind: _Optional[str] = ..., monitoring: _Optional[_Union[JobMonitoring, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("state", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: str
    error: str
    def __init__(self, state: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "epsilon", "monitoring")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    MONITORING_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: int
    epsilon: float
    monitoring: StepMonitoring
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., epsilon: _Optional[float] = ..., monitoring: _Optional[_Union[StepMonitoring, _Mapping]] = ...) -> None: ...

class StepMonitoring(_message.Message):
    __slots__ = ("loss", "batch_size", "samples_per_s")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    loss: float
    batch_size: int
    samples_per_s: float
    def __init__(self, loss: _Optional[float] = ..., batch_size: _Optional[int] = ..., samples_per_s: _Optional[float] = ...) -> None: ...

class EpochSummary(_message.Message):
    __slots__ = ("epoch", "test_accuracy", "epsilon", "exact_test_accuracy")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EXACT_TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    test_accuracy: float
    epsilon: float
    exact_test_accuracy: float
    def __init__(self, epoch: _Optional[int] = ..., test_accuracy: _Optional[float] = ..., epsilon: _Optional[float] = ..., exact_test_accuracy: _Optional[float] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("id", "job_id", "time", "state", "step", "alert", "epoch", "resumed")
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    id: int
    job_id: str
    time: _timestamp_pb2.Timestamp
    state: StateChange
    step: StepMetrics
    alert: Alert
    epoch: EpochSummary
    resumed: Resumed
    def __init__(self, id: _Optional[int] = ..., job_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[StateChange, _Mapping]] = ..., step: _Optional[_Union[StepMetrics, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ..., epoch: _Optional[_Union[EpochSummary, _Mapping]] = ..., resumed: _Optional[_Union[Resumed, _Mapping]] = ...) -> None: ...

class Resumed(_message.Message):
    __slots__ = ("attempt", "from_checkpoint")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    from_checkpoint: bool
    def __init__(self, attempt: _Optional[int] = ..., from_checkpoint: _Optional[bool] = ...) -> None: ...

class DownloadParametersRequest(_message.Message):
    __slots__ = ("job_id", "recipient_public_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    recipient_public_key: bytes
    def __init__(self, job_id: _Optional[str] = ..., recipient_public_key: _Optional[bytes] = ...) -> None: ...

class SealedHeader(_message.Message):
    __slots__ = ("version", "ephemeral_public_key", "salt", "nonce_prefix", "chunk_bytes", "total_bytes", "chunk_count", "plaintext_sha256", "signer_certificate_pem", "content_type", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    NONCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    version: int
    ephemeral_public_key: bytes
    salt: bytes
    nonce_prefix: bytes
    chunk_bytes: int
    total_bytes: int
    chunk_count: int
    plaintext_sha256: bytes
    signer_certificate_pem: bytes
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, version: _Optional[int] = ..., ephemeral_public_key: _Optional[bytes] = ..., salt: _Optional[bytes] = ..., nonce_prefix: _Optional[bytes] = ..., chunk_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., chunk_count: _Optional[int] = ..., plaintext_sha256: _Optional[bytes] = ..., signer_certificate_pem: _Optional[bytes] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SealedChunk(_message.Message):
    __slots__ = ("index", "ciphertext")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    ciphertext: bytes
    def __init__(self, index: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SealedTrailer(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class SealedPart(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: SealedHeader
    chunk: SealedChunk
    trailer: SealedTrailer
    def __init__(self, header: _Optional[_Union[SealedHeader, _Mapping]] = ..., chunk: _Optional[_Union[SealedChunk, _Mapping]] = ..., trailer: _Optional[_Union[SealedTrailer, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "job_id", "kind", "state", "message", "fired_at", "resolved_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    job_id: str
    kind: str
    state: str
    message: str
    fired_at: _timestamp_pb2.Timestamp
    resolved_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., fired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("state", "job_id")
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    state: str
    job_id: str
    def __init__(self, state: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class CertificateInfo(_message.Message):
    __slots__ = ("serial", "name", "role", "fingerprint_sha256", "not_before", "not_after", "issued_at", "revoked_at", "revoked_by", "revocation_reason", "status")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    serial: str
    name: str
    role: str
    fingerprint_sha256: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    issued_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    revoked_by: str
    revocation_reason: str
    status: str
    def __init__(self, serial: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., fingerprint_sha256: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ..., revocation_reason: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class ListCertificatesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCertificatesResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[CertificateInfo]
    def __init__(self, certificates: _Optional[_Iterable[_Union[CertificateInfo, _Mapping]]] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("serial", "name", "reason")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serial: str
    name: str
    reason: str
    def __init__(self, serial: _Optional[str] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeCertificateResponse(_message.Message):
    __slots__ = ("revoked", "crl_published")
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CRL_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    revoked: _containers.RepeatedCompositeFieldContainer[CertificateInfo]
    crl_published: bool
    def __init__(self, revoked: _Optional[_Iterable[_Union[CertificateInfo, _Mapping]]] = ..., crl_published: _Optional[bool] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "time", "subject", "serial", "role", "action", "target", "outcome", "detail", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    subject: str
    serial: str
    role: str
    action: str
    target: str
    outcome: str
    detail: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subject: _Optional[str] = ..., serial: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditLogRequest(_message.Message):
    __slots__ = ("after_seq", "since", "limit")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    since: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, after_seq: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditLogResponse(_message.Message):
    __slots__ = ("entries", "head_seq", "head_hash")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    head_seq: int
    head_hash: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ...) -> None: ...

class AuditSignature(_message.Message):
    __slots__ = ("seq", "hash", "signed_at", "signature", "signer_certificate_pem")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: str
    signed_at: _timestamp_pb2.Timestamp
    signature: str
    signer_certificate_pem: bytes
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[str] = ..., signed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signature: _Optional[str] = ..., signer_certificate_pem: _Optional[bytes] = ...) -> None: ...

class ListAuditSignaturesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAuditSignaturesResponse(_message.Message):
    __slots__ = ("signatures",)
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    signatures: _containers.RepeatedCompositeFieldContainer[AuditSignature]
    def __init__(self, signatures: _Optional[_Iterable[_Union[AuditSignature, _Mapping]]] = ...) -> None: ...

class SignAuditLogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
