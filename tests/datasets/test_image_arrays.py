"""Packed image datasets: the digits source, the safetensors layout, the signed manifest, and the
data owner's random train/test split."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from privtrain.anonymize.errors import ManifestError
from privtrain.anonymize.manifest import sign_manifest, verify_manifest
from privtrain.datasets import image_arrays
from privtrain.datasets.digits import fetch_digits
from privtrain.datasets.image_arrays import (
    check_image_file,
    draw_split,
    encode_image_arrays,
    read_image_arrays,
)
from privtrain.datasets.pack_images import image_manifest, pack_images
from privtrain.errors import InvalidInput
from privtrain.platform.cli import main
from privtrain.secure_transport.issuing import ClientBundle, issue_bundle
from privtrain.secure_transport.pki import init_pki
from privtrain.secure_transport.roles import Role

# Images per digit 0..9 in the UCI optical digits test set that scikit-learn ships.
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> ClientBundle:
    """A data owner's bundle from a fresh CA: the manifests' signer."""
    folder = tmp_path_factory.mktemp("pki")
    bundle = ClientBundle(folder / "alice")
    issue_bundle(init_pki(folder / "pki"), role=Role.DATA_OWNER, name="alice", out=bundle.directory)
    return bundle


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, owner: ClientBundle) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits.safetensors"
    pack_images("digits", out, signing_key_path=owner.key,
                signing_cert_path=owner.cert)
    return out


def _manifest(packed: Path) -> dict:
    return json.loads(packed.with_name(packed.name + ".manifest.json").read_text())["manifest"]


def _train_only(rows: int) -> np.ndarray:
    """A split tensor that marks every row a training row."""
    return np.zeros(rows, np.uint8)


def test_digits_are_the_1797_real_images_scaled_to_unit_range() -> None:
    images, labels = fetch_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == DIGIT_COUNTS
    # Every value is a count of set pixels (0..16) divided by 16.
    assert np.array_equal(images * 16, np.round(images * 16))


def test_packed_file_verifies_against_its_signed_manifest(packed: Path, owner: ClientBundle) -> None:
    manifest_file = packed.with_name(packed.name + ".manifest.json")
    verified = verify_manifest(manifest_file.read_bytes(), packed.read_bytes())
    m = verified.manifest
    assert m["kind"] == "image_array" and m["source"] == "digits"
    assert m["output_rows"] == 1797 and m["feature_shape"] == [1, 8, 8]
    assert m["feature_dtype"] == "float32" and m["n_classes"] == 10
    assert m["label_values"] == list(range(10))
    assert m["output_bytes"] == packed.stat().st_size
    assert m["split"] == {"method": "random_holdout", "tensor": "split", "test_share": 0.2}
    features, classes, is_test = read_image_arrays(packed.read_bytes(), m)
    images, labels = fetch_digits()
    assert np.array_equal(features, images) and np.array_equal(classes, labels)
    # The owner's hold-out: about 20% of the 1,797 images (359 expected, std 17).
    assert is_test.dtype == bool and is_test.shape == (1797,)
    assert 270 <= int(is_test.sum()) <= 450
    check_image_file(packed, m)


def test_a_flipped_byte_fails_verification(packed: Path) -> None:
    data = bytearray(packed.read_bytes())
    data[-1] ^= 0x01
    manifest_file = packed.with_name(packed.name + ".manifest.json")
    with pytest.raises(ManifestError, match="output_sha256 mismatch"):
        verify_manifest(manifest_file.read_bytes(), bytes(data))


@pytest.mark.parametrize(("change", "needle"), [
    (lambda m: m.pop("feature_shape"), "feature_shape"),
    (lambda m: m.update(feature_shape=[8, 8]), "feature_shape"),
    (lambda m: m.update(feature_dtype="float64"), "feature_dtype"),
    (lambda m: m.update(n_classes=9), "n_classes"),
    (lambda m: m.update(label_values=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]), "label_values"),
    (lambda m: m.update(kind="audio"), "audio"),
    (lambda m: m.update(output_rows="1797"), "output_rows"),
    (lambda m: m.update(label_values=[*range(9), 2**70]), "distinct int64 integers"),
    (lambda m: m.update(label_values=[*range(9), 8]), "distinct int64 integers"),
    (lambda m: m.update(n_classes=200_000, label_values=list(range(200_000))),
     "n_classes must be in 2..100000, got 200000"),
    (lambda m: m.update(n_classes=1, label_values=[0]), "n_classes must be in 2..100000, got 1"),
    (lambda m: m.update(feature_shape=[1, 8, 2**16 + 1]), "feature_shape must be"),
    (lambda m: m.update(feature_shape=[3, 2**14, 2**14]), "more than the 268435456 allowed"),
    (lambda m: m.update(output_rows=2**63), "output_rows must be in"),
    (lambda m: m.update(split={"method": "seeded", "tensor": "split", "test_share": 0.2}),
     "image manifest split must be"),
    (lambda m: m.update(split={"method": "random_holdout", "tensor": "split", "test_share": 1.5}),
     "image manifest split must be"),
    (lambda m: m.update(split={"method": "random_holdout", "tensor": "label", "test_share": 0.2}),
     "image manifest split must be"),
    (lambda m: m.update(split={"method": "random_holdout", "tensor": "split", "test_share": 0.2,
                               "seed": 1}), "image manifest split must be"),
])
def test_malformed_image_manifest_is_refused_naming_the_field(packed: Path, owner: ClientBundle,
                                                              change, needle: str) -> None:
    manifest = copy.deepcopy(_manifest(packed))
    change(manifest)
    with pytest.raises(ManifestError, match=needle):
        sign_manifest(manifest, owner.key.read_bytes(), owner.cert.read_bytes())


def test_layout_other_than_the_manifest_is_refused(packed: Path) -> None:
    manifest = _manifest(packed)
    data = packed.read_bytes()
    with pytest.raises(InvalidInput, match="'features' is \\[1797, 1, 8, 8\\]"):
        read_image_arrays(data, {**manifest, "feature_shape": [1, 8, 9]})
    with pytest.raises(InvalidInput, match="'features' is"):
        check_image_file(packed, {**manifest, "feature_shape": [3, 8, 8]})
    with pytest.raises(InvalidInput, match="outside the declared label_values"):
        read_image_arrays(data, {**manifest, "label_values": list(range(9))})
    extra = encode_image_arrays(np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64), _train_only(4))
    with pytest.raises(InvalidInput, match="not a readable safetensors"):
        read_image_arrays(extra[:-3], manifest)


def test_a_file_packed_without_the_owners_split_is_refused_with_a_hint(tmp_path: Path) -> None:
    """A two-tensor file (packed before the owner's split existed) is refused, saying to pack again."""
    features, labels = np.zeros((4, 1, 2, 2), np.float32), np.array([0, 1, 0, 1], np.int64)
    old = safetensors.numpy.save({"features": features, "label": labels})
    manifest = image_manifest("test", old, 4, (1, 2, 2), (0, 1))
    with pytest.raises(InvalidInput, match=r"found \['features', 'label'\] \(a file packed without "
                                           r"the owner's train/test split: pack it again\)"):
        read_image_arrays(old, manifest)
    path = tmp_path / "old.safetensors"
    path.write_bytes(old)
    with pytest.raises(InvalidInput, match="pack it again"):
        check_image_file(path, manifest)


def test_labels_map_to_indices_of_the_declared_values() -> None:
    data = encode_image_arrays(np.zeros((3, 1, 2, 2), np.float32), np.array([7, 3, 7], np.int64),
                               np.array([0, 1, 0], np.uint8))
    manifest = image_manifest("test", data, 3, (1, 2, 2), (3, 7))
    _, classes, is_test = read_image_arrays(data, manifest)
    assert classes.tolist() == [1, 0, 1]
    assert is_test.tolist() == [False, True, False]


def test_owners_split_is_a_fresh_independent_draw_of_each_row() -> None:
    """``draw_split``: uint8 of 0 and 1, each row a test row with the given share (within 5
    standard errors on 100,000 rows), from the OS's CSPRNG: two draws differ, nothing seeds them."""
    rows = 100_000
    first, second = draw_split(rows), draw_split(rows)
    assert first.dtype == np.uint8 and first.shape == (rows,) and set(np.unique(first)) <= {0, 1}
    for split, share in ((first, 0.2), (second, 0.2), (draw_split(rows, 0.5), 0.5)):
        assert abs(split.mean() - share) < 5 * np.sqrt(share * (1 - share) / rows)
    assert not np.array_equal(first, second)
    # Rows are independent: the share of test rows among the test rows' neighbours is the same.
    assert abs(first[1:][first[:-1] == 1].mean() - 0.2) < 0.02
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(InvalidInput, match="test_fraction must be in"):
            draw_split(10, bad)


def test_split_tensor_must_hold_only_zeros_and_ones(tmp_path: Path) -> None:
    """``encode_image_arrays`` refuses a split of the wrong dtype, length or values; a stored file
    whose split holds a 2 is refused by both the stored-file check and the trainer's reader."""
    features, labels = np.zeros((4, 1, 2, 2), np.float32), np.array([0, 1, 0, 1], np.int64)
    for split in (np.zeros(4, np.int64), np.zeros(3, np.uint8), np.array([0, 1, 2, 0], np.uint8)):
        with pytest.raises(InvalidInput, match="split must be"):
            encode_image_arrays(features, labels, split)
    bad = safetensors.numpy.save({"features": features, "label": labels,
                                  "split": np.array([0, 1, 2, 0], np.uint8)})
    manifest = image_manifest("test", bad, 4, (1, 2, 2), (0, 1))
    with pytest.raises(InvalidInput, match="values other than 0 \\(train\\) and 1 \\(test\\)"):
        read_image_arrays(bad, manifest)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bad)
    with pytest.raises(InvalidInput, match="values other than 0"):
        check_image_file(path, manifest)


def test_manifest_without_a_split_still_signs(packed: Path, owner: ClientBundle) -> None:
    """``split`` is optional in older manifests; when present it declares the random hold-out."""
    manifest = {k: v for k, v in _manifest(packed).items() if k != "split"}
    sign_manifest(manifest, owner.key.read_bytes(), owner.cert.read_bytes())


def test_pack_refuses_unknown_source_and_overwriting_the_key(tmp_path: Path, owner: ClientBundle) -> None:
    with pytest.raises(InvalidInput, match="unknown image source 'cifar'"):
        pack_images("cifar", tmp_path / "x.safetensors", signing_key_path=owner.key,
                    signing_cert_path=owner.cert)
    with pytest.raises(InvalidInput, match="would overwrite the signing key"):
        pack_images("digits", owner.key, signing_key_path=owner.key,
                    signing_cert_path=owner.cert)


def test_manifest_bounds_admit_int64_extremes_and_100000_classes(packed: Path, owner: ClientBundle) -> None:
    """The bounds refuse only the impossible: int64's own extremes, exactly MAX_CLASSES classes
    and a 3 x 4096 x 4096 image still sign, as the packed digits manifest does."""
    key, cert = owner.key.read_bytes(), owner.cert.read_bytes()
    base = _manifest(packed)
    sign_manifest(base, key, cert)
    sign_manifest({**base, "n_classes": 2, "label_values": [-(2**63), 2**63 - 1]}, key, cert)
    sign_manifest({**base, "n_classes": 100_000, "label_values": list(range(100_000))}, key, cert)
    sign_manifest({**base, "feature_shape": [3, 4096, 4096]}, key, cert)


@pytest.mark.parametrize(("row", "value", "needle"), [
    (0, np.nan, "NaN or infinite"),
    (99, np.inf, "NaN or infinite"),
    (57, -np.inf, "NaN or infinite"),
])
def test_stored_file_check_finds_bad_pixels_in_any_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         row: int, value: float, needle: str) -> None:
    """check_image_file reads the features in blocks (here 8 rows of 1x4x4 a block, 13 blocks):
    a bad pixel in the first, a middle or the last, partial, block is found."""
    monkeypatch.setattr(image_arrays, "CHECK_BLOCK_BYTES", 8 * 16 * 4)
    features = np.random.default_rng(0).random((100, 1, 4, 4), dtype=np.float32)
    labels = np.arange(100, dtype=np.int64) % 3
    path = tmp_path / "clean.safetensors"
    path.write_bytes(encode_image_arrays(features, labels, _train_only(100)))
    manifest = image_manifest("test", path.read_bytes(), 100, (1, 4, 4), (0, 1, 2))
    check_image_file(path, manifest)
    features[row, 0, 3, 3] = value
    path.write_bytes(encode_image_arrays(features, labels, _train_only(100)))
    with pytest.raises(InvalidInput, match=needle):
        check_image_file(path, manifest)


def test_stored_file_check_refuses_undeclared_labels_like_the_trainer(tmp_path: Path) -> None:
    """A label outside label_values: the stored-file check and read_image_arrays give one message."""
    labels = np.array([0, 1, 42, 1], np.int64)
    data = encode_image_arrays(np.zeros((4, 1, 2, 2), np.float32), labels, _train_only(4))
    path = tmp_path / "labels.safetensors"
    path.write_bytes(data)
    manifest = image_manifest("test", data, 4, (1, 2, 2), (0, 1))
    with pytest.raises(InvalidInput) as from_file:
        check_image_file(path, manifest)
    with pytest.raises(InvalidInput) as from_bytes:
        read_image_arrays(data, manifest)
    assert str(from_file.value) == str(from_bytes.value)
    assert str(from_file.value) == ("image dataset labels [42] are outside the declared label_values "
                                    "(2 values: [0, 1])")


def _pack_cli(out: Path, owner: ClientBundle, *extra: str) -> int:
    return main(["dataset", "pack-images", "--source", "digits", "--out", str(out),
                 "--signing-key", str(owner.key), "--signing-cert", str(owner.cert),
                 *extra])


@pytest.mark.parametrize("existing", ["out", "manifest"])
def test_pack_refuses_an_existing_output_without_force(tmp_path: Path, owner: ClientBundle, existing: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An existing --out or OUT.manifest.json: exit 2, one line naming it and --force, nothing
    written; with --force both are replaced by a verifying pair."""
    out = tmp_path / "existing.txt"
    manifest = tmp_path / "existing.txt.manifest.json"
    kept = out if existing == "out" else manifest
    kept.write_text("keep me\n")
    capsys.readouterr()
    assert _pack_cli(out, owner) == 2
    err = capsys.readouterr().err
    assert err == f"error: {kept} already exists; pass --force to replace\n"
    assert kept.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
    assert _pack_cli(out, owner, "--force") == 0
    verified = verify_manifest(manifest.read_bytes(), out.read_bytes())
    assert verified.manifest["output_rows"] == 1797
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, manifest.name]


def test_pack_refuses_a_directory_out_naming_it(tmp_path: Path, owner: ClientBundle,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming a folder, with or without --force: exit 2, a line naming the folder the user
    gave (no temporary file), nothing written."""
    folder = tmp_path / "d"
    folder.mkdir()
    for extra in ((), ("--force",)):
        capsys.readouterr()
        assert _pack_cli(folder, owner, *extra) == 2
        err = capsys.readouterr().err
        assert err == (f"error: --out {folder} is a directory; give a file name such as "
                       f"{folder / 'images.safetensors'}\n")
        assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and list(folder.iterdir()) == []
    capsys.readouterr()
    assert _pack_cli(tmp_path / "missing" / "x.safetensors", owner) == 2
    assert capsys.readouterr().err == (f"error: cannot write --out {tmp_path / 'missing' / 'x.safetensors'}: "
                                       f"folder {tmp_path / 'missing'} does not exist\n")
