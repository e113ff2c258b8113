"""Image datasets through the real platform: pack, signed upload, DP-SGD job, sealed download,
client re-evaluation; refusals at upload and at submission (before any ε is reserved)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import safetensors.numpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from server_harness import PEOPLE, RunningServer, make_people, start_server, wait_terminal

from privtrain.anonymize.manifest import ECDSA_P256, ED25519, canonical_json, sign_manifest
from privtrain.datasets.image_arrays import encode_image_arrays, read_image_arrays
from privtrain.datasets.pack_images import image_manifest
from privtrain.platform.cli import main
from privtrain.platform.client import job_spec
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pki import PkiLayout
from privtrain.trainer.evaluate import evaluate_image_parameters

# Two 3x3 convolutions with pooling: (1, 8, 8) -> (16, 4, 4) -> (32, 2, 2) -> 10 logits.
DIGITS_NET = {"layers": [
    {"name": "conv1", "type": "Conv2d", "args": [1, 16, 3], "kwargs": {"padding": 1}},
    {"name": "act1", "type": "ReLU"},
    {"name": "pool1", "type": "AvgPool2d", "args": [2]},
    {"name": "conv2", "type": "Conv2d", "args": [16, 32, 3], "kwargs": {"padding": 1}},
    {"name": "act2", "type": "ReLU"},
    {"name": "pool2", "type": "AvgPool2d", "args": [2]},
    {"name": "flat", "type": "Flatten"},
    {"name": "head", "type": "Linear", "args": [128, 10]},
]}


def _events(events: list[pb.JobEvent], kind: str) -> list:
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


def _pack(owner: ClientBundle, source: str, out: Path) -> Path:
    """Pack through the CLI, as a data owner would (signed with their bundle's key)."""
    code = main(["dataset", "pack-images", "--source", source, "--out", str(out),
                 "--signing-key", str(owner.key), "--signing-cert", str(owner.cert)])
    assert code == 0
    return out


def _upload(rs: RunningServer, path: Path, *, epsilon: float = 5.0, manifest: Path | None = None,
            name: str = "digits") -> pb.Dataset:
    with rs.client("data-owner") as owner:
        ds = owner.upload(path, manifest or path.with_name(path.name + ".manifest.json"), name=name,
                          epsilon_budget=epsilon, delta_budget=1e-4)
        owner.grant(ds.id, PEOPLE["trainer"])
        return ds


def digits_spec(dataset_id: str, **overrides: object) -> pb.JobSpec:
    fields: dict[str, object] = {
        "dataset_id": dataset_id, "model": "sequential", "model_options_json": json.dumps(DIGITS_NET),
        "target_column": "label", "target_epsilon": 3.0, "target_delta": 1e-5, "epochs": 10,
        "batch_size": 128, "max_physical_batch_size": 256, "max_grad_norm": 1.0, "learning_rate": 0.5,
        "seed": 0, "accountant": "rdp",
    }
    fields.update(overrides)
    return job_spec(**fields)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> tuple[PkiLayout, dict[str, ClientBundle]]:
    return make_people(tmp_path_factory.mktemp("people"))


@pytest.fixture(scope="module")
def owner(people: tuple[PkiLayout, dict[str, ClientBundle]]) -> ClientBundle:
    return people[1]["data-owner"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, owner: ClientBundle) -> Path:
    return _pack(owner, "digits", tmp_path_factory.mktemp("owner") / "digits.safetensors")


@pytest.fixture
def server(tmp_path: Path, people: tuple[PkiLayout, dict[str, ClientBundle]]) -> Iterator[RunningServer]:
    rs = start_server(tmp_path / "home", *people)
    yield rs
    rs.server.stop(1.0)


@dataclass(frozen=True)
class TrainedDigits:
    """One digits job run to its end on its own server, what the trainer got back, and the
    operator's view of the same job (exact figures)."""

    dataset: pb.Dataset
    stored: list[str]
    events: list[pb.JobEvent]
    job: pb.Job
    admin_job: pb.Job
    parameters: Path
    remaining_epsilon: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, people: tuple[PkiLayout, dict[str, ClientBundle]],
            digits: Path) -> Iterator[TrainedDigits]:
    """Signed upload → DP-SGD job → sealed download, once for the tests that read its outcome."""
    folder = tmp_path_factory.mktemp("trained")
    rs = start_server(folder / "home", *people)
    try:
        ds = _upload(rs, digits)
        assert (ds.kind, ds.k_anonymity, ds.rows) == ("image_array", 0, 1797)
        stored = sorted(p.name for p in rs.server.config.datasets_dir.glob("*.safetensors"))
        with rs.client("trainer") as trainer, rs.client("admin") as admin:
            job = trainer.submit(digits_spec(ds.id))
            assert job.state == "PENDING"  # work is never inside the unary handler
            events = wait_terminal(trainer, job.id)
            done = trainer.get_job(job.id)
            assert done.state == "SUCCEEDED", done.error
            params = folder / "params.safetensors"
            params.write_bytes(trainer.download_parameters(job.id).plaintext)
            [listed] = trainer.list_datasets()
            seen_by_admin = admin.get_job(job.id)
        yield TrainedDigits(ds, stored, events, done, seen_by_admin, params, listed.epsilon_remaining)
    finally:
        rs.server.stop(1.0)


def test_digits_train_through_the_platform_and_client_gets_the_same_accuracy(
    trained: TrainedDigits, digits: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pack → signed upload → DP-SGD job → SUCCEEDED within ε → sealed download → the owner's
    file gives the operator's exact accuracy, through the API and through `job evaluate`; the
    trainer's accuracy is the noisy release, its row counts the published ones."""
    assert trained.dataset.rows == 1797 and trained.dataset.size_bytes == digits.stat().st_size
    assert trained.stored == [f"{trained.dataset.id}.safetensors"]
    assert [s.state for s in _events(trained.events, "state")] == ["PENDING", "RUNNING", "SUCCEEDED"]
    epochs = _events(trained.events, "epoch")
    result = trained.job.result
    assert [e.epoch for e in epochs] == list(range(1, 11))
    assert epochs[-1].test_accuracy == pytest.approx(result.test_accuracy)
    assert not any(e.HasField("exact_test_accuracy") for e in epochs)
    assert 2.5 < result.epsilon <= 3.0
    assert trained.job.epsilon_spent == pytest.approx(result.epsilon)
    assert (result.train_rows, result.test_rows) == (trained.dataset.published_train_rows,
                                                     trained.dataset.published_test_rows)
    exact = trained.admin_job.monitoring
    assert exact.train_rows + exact.test_rows == 1797
    assert exact.test_accuracy >= 0.6  # 10 classes: chance is 0.1
    assert 0 < 5.0 - trained.remaining_epsilon <= result.epsilon + 0.3
    accuracy, rows = evaluate_image_parameters(trained.parameters.read_bytes(), digits.read_bytes())
    assert accuracy == pytest.approx(exact.test_accuracy, abs=1e-12) and rows == exact.test_rows
    capsys.readouterr()
    assert main(["job", "evaluate", "--params", str(trained.parameters), "--data", str(digits),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"test_accuracy": pytest.approx(exact.test_accuracy, abs=1e-12),
                       "test_rows": exact.test_rows}


def test_owner_split_is_drawn_per_image_and_kept_in_the_file(digits: Path) -> None:
    """The test rows are the owner's: the packed file's ``split`` tensor, about a fifth of the
    images, each drawn on its own (no seed a trainer could choose)."""
    _, _, is_test = _digits_arrays(digits)
    assert 0.15 < is_test.mean() < 0.25
    manifest = json.loads(digits.with_name(digits.name + ".manifest.json").read_text())["manifest"]
    assert manifest["split"] == {"method": "random_holdout", "tensor": "split", "test_share": 0.2}


def test_tampered_image_file_is_refused_at_upload(server: RunningServer, digits: Path, tmp_path: Path) -> None:
    """One flipped byte: INVALID_ARGUMENT naming the hash mismatch; nothing stored, no dataset."""
    tampered = tmp_path / "digits.safetensors"
    data = bytearray(digits.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, tampered, manifest=digits.with_name(digits.name + ".manifest.json"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "output_sha256 mismatch" in err.value.details()
    assert list(server.server.config.datasets_dir.glob("*.safetensors")) == []
    with server.client("trainer") as trainer:
        assert trainer.list_datasets() == []


def test_file_whose_tensors_differ_from_its_signed_manifest_is_refused(
    server: RunningServer, digits: Path, owner: ClientBundle, tmp_path: Path
) -> None:
    """A correctly hashed and signed file whose manifest lies about the image shape is refused
    at upload naming the tensor, not later in a worker."""
    features, classes, is_test = _digits_arrays(digits)
    data = encode_image_arrays(features.reshape(1797, 1, 4, 16), classes, is_test.astype(np.uint8))
    out = tmp_path / "wrong.safetensors"
    out.write_bytes(data)
    manifest = image_manifest("digits", data, 1797, (1, 8, 8), tuple(range(10)))
    signed = tmp_path / "wrong.safetensors.manifest.json"
    signed.write_bytes(sign_manifest(manifest, owner.key.read_bytes(),
                                     owner.cert.read_bytes()))
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, out)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'features' is [1797, 1, 4, 16]" in err.value.details()
    assert list(server.server.config.datasets_dir.glob("*.safetensors")) == []


def _digits_arrays(digits: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed digits as (1797, 1, 8, 8) float32 features, (1797,) int64 labels 0..9 and the
    (1797,) bool test rows."""
    return read_image_arrays(digits.read_bytes(), {
        "output_rows": 1797, "feature_shape": [1, 8, 8], "label_values": list(range(10))})


def _sign_bypassing_field_checks(manifest: dict, owner: ClientBundle) -> bytes:
    """Sign as the data owner without the client's field checks, as a forger with the owner's
    key can: only the server's own checks stand between this manifest and a dataset."""
    key = serialization.load_pem_private_key(owner.key.read_bytes(), password=None)
    payload = canonical_json(manifest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature, algorithm = key.sign(payload, ec.ECDSA(hashes.SHA256())), ECDSA_P256
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        signature, algorithm = key.sign(payload), ED25519
    return json.dumps({"manifest": manifest, "signature": base64.b64encode(signature).decode(),
                       "signature_algorithm": algorithm,
                       "signer_certificate": owner.cert.read_text()}).encode()


def _nan_pixel(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    features[1796, 0, 7, 7] = np.nan
    return features, labels, tuple(range(10))


def _undeclared_label(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    labels[5] = 42
    return features, labels, tuple(range(10))


def _label_past_int64(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    return features, labels, (*range(9), 2**70)


def _200000_label_values(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    return features, labels, tuple(range(200_000))


def _split_value_two(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    return features, labels, tuple(range(10))


@pytest.mark.parametrize(("forge", "needle"), [
    (_nan_pixel, "image dataset features hold NaN or infinite values"),
    (_undeclared_label, "image dataset labels [42] are outside the declared label_values"),
    (_label_past_int64, "label_values must be distinct int64 integers"),
    (_200000_label_values, "n_classes must be in 2..100000, got 200000"),
    (_split_value_two, "split tensor holds values other than 0 (train) and 1 (test)"),
])
def test_bad_image_content_under_a_valid_owner_signature_is_refused_at_upload(
    server: RunningServer, digits: Path, owner: ClientBundle, tmp_path: Path, forge, needle: str
) -> None:
    """A correctly hashed file whose manifest the data owner signed, but whose pixels or labels
    the worker would refuse (NaN, a label not declared, a label value past int64, 200,000
    declared classes): INVALID_ARGUMENT at upload naming the problem, no file kept, no dataset."""
    features, labels, is_test = _digits_arrays(digits)
    features, labels, label_values = forge(features, labels)
    split = is_test.astype(np.uint8)
    if forge is _split_value_two:
        split[3] = 2
    data = safetensors.numpy.save({"features": features, "label": labels, "split": split})
    out = tmp_path / "forged.safetensors"
    out.write_bytes(data)
    manifest = image_manifest("digits", data, 1797, (1, 8, 8), label_values)
    out.with_name(out.name + ".manifest.json").write_bytes(_sign_bypassing_field_checks(manifest, owner))
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, out)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    assert list(server.server.config.datasets_dir.iterdir()) == []
    with server.client("trainer") as trainer:
        assert trainer.list_datasets() == []


def test_stored_image_file_changed_after_upload_fails_the_job(server: RunningServer,
                                                              digits: Path) -> None:
    """The worker re-hashes the very bytes it trains on: a stored file changed since its
    verified upload fails the job instead of training on unverified data."""
    ds = _upload(server, digits)
    [stored] = server.server.config.datasets_dir.glob("*.safetensors")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0x01
    stored.write_bytes(bytes(data))
    with server.client("trainer") as trainer, server.client("admin") as admin:
        job = trainer.submit(digits_spec(ds.id, epochs=1))
        wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
        detail = admin.get_job(job.id).monitoring.error_detail
    assert final.state == "FAILED"
    assert "changed since its verified upload" in detail


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"model": "mlp", "model_options_json": ""}, "model 'mlp' does not take images"),
    ({"model": "logistic_regression", "model_options_json": ""}, "does not take images"),
    ({"target_column": "income"}, "the label of an image dataset is the tensor 'label'"),
    ({"feature_columns": ["pixel0"]}, "feature_columns do not apply"),
    ({"model": "cnn", "model_options_json": ""}, "(the dataset's images are (1, 8, 8)"),
])
def test_wrong_job_for_an_image_dataset_is_invalid_argument_before_any_reservation(
    server: RunningServer, digits: Path, overrides: dict, needle: str
) -> None:
    """A table model, table options, or a CNN too deep for 8x8 images: refused naming what is
    wrong; no job, no ε reserved."""
    ds = _upload(server, digits, epsilon=2.0)
    with server.client("trainer") as trainer:
        with pytest.raises(grpc.RpcError) as err:
            trainer.submit(digits_spec(ds.id, target_epsilon=1.0, **overrides))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert needle in err.value.details()
        assert trainer.list_jobs() == []
        assert trainer.list_datasets()[0].epsilon_remaining == ds.epsilon_remaining


@pytest.mark.slow
def test_mnist_subset_cnn_trains_through_the_platform(server: RunningServer, owner: ClientBundle,
                                                      tmp_path: Path) -> None:
    """The 5,000-image MNIST subset with the Opacus MNIST CNN: SUCCEEDED within ε, well above
    chance, and the client's accuracy equals the server's."""
    packed = _pack(owner, "mnist-subset", tmp_path / "mnist.safetensors")
    ds = _upload(server, packed, name="mnist-subset")
    assert ds.rows == 5000
    with server.client("trainer") as trainer:
        job = trainer.submit(digits_spec(ds.id, model="cnn", model_options_json="", epochs=5,
                                         batch_size=256, learning_rate=0.25))
        wait_terminal(trainer, job.id)
        done = trainer.get_job(job.id)
        assert done.state == "SUCCEEDED", done.error
        blob = trainer.download_parameters(job.id)
    assert done.result.epsilon <= 3.0
    assert abs(done.result.train_rows + done.result.test_rows - 5000) < 200  # published, noisy
    accuracy, rows = evaluate_image_parameters(blob.plaintext, packed.read_bytes())
    assert accuracy >= 0.6
    assert abs(done.result.test_accuracy - accuracy) < 0.1
