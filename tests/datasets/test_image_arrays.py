"""Packed image datasets: the digits source, the safetensors layout, the signed manifest, the split."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from privtrain.anonymize.errors import ManifestError
from privtrain.anonymize.manifest import sign_manifest, verify_manifest
from privtrain.datasets.digits import fetch_digits
from privtrain.datasets.image_arrays import (
    check_image_file,
    encode_image_arrays,
    read_image_arrays,
    split_indices,
)
from privtrain.datasets.pack_images import image_manifest, pack_images
from privtrain.errors import InvalidInput
from privtrain.secure_transport.pki import PkiLayout, init_pki

# Images per digit 0..9 in the UCI optical digits test set that scikit-learn ships.
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki")


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, pki: PkiLayout) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits.safetensors"
    pack_images("digits", out, signing_key_path=pki.key("data-owner"),
                signing_cert_path=pki.cert("data-owner"))
    return out


def _manifest(packed: Path) -> dict:
    return json.loads(packed.with_name(packed.name + ".manifest.json").read_text())["manifest"]


def test_digits_are_the_1797_real_images_scaled_to_unit_range() -> None:
    images, labels = fetch_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == DIGIT_COUNTS
    # Every value is a count of set pixels (0..16) divided by 16.
    assert np.array_equal(images * 16, np.round(images * 16))


def test_packed_file_verifies_against_its_signed_manifest(packed: Path, pki: PkiLayout) -> None:
    manifest_file = packed.with_name(packed.name + ".manifest.json")
    verified = verify_manifest(manifest_file.read_bytes(), packed.read_bytes())
    m = verified.manifest
    assert m["kind"] == "image_array" and m["source"] == "digits"
    assert m["output_rows"] == 1797 and m["feature_shape"] == [1, 8, 8]
    assert m["feature_dtype"] == "float32" and m["n_classes"] == 10
    assert m["label_values"] == list(range(10))
    assert m["output_bytes"] == packed.stat().st_size
    features, classes = read_image_arrays(packed.read_bytes(), m)
    images, labels = fetch_digits()
    assert np.array_equal(features, images) and np.array_equal(classes, labels)
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
])
def test_malformed_image_manifest_is_refused_naming_the_field(packed: Path, pki: PkiLayout,
                                                              change, needle: str) -> None:
    manifest = copy.deepcopy(_manifest(packed))
    change(manifest)
    with pytest.raises(ManifestError, match=needle):
        sign_manifest(manifest, pki.key("data-owner").read_bytes(), pki.cert("data-owner").read_bytes())


def test_layout_other_than_the_manifest_is_refused(packed: Path) -> None:
    manifest = _manifest(packed)
    data = packed.read_bytes()
    with pytest.raises(InvalidInput, match="'features' is \\[1797, 1, 8, 8\\]"):
        read_image_arrays(data, {**manifest, "feature_shape": [1, 8, 9]})
    with pytest.raises(InvalidInput, match="'features' is"):
        check_image_file(packed, {**manifest, "feature_shape": [3, 8, 8]})
    with pytest.raises(InvalidInput, match="outside the declared label_values"):
        read_image_arrays(data, {**manifest, "label_values": list(range(9))})
    extra = encode_image_arrays(np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64))
    with pytest.raises(InvalidInput, match="not a readable safetensors"):
        read_image_arrays(extra[:-3], manifest)


def test_labels_map_to_indices_of_the_declared_values() -> None:
    data = encode_image_arrays(np.zeros((3, 1, 2, 2), np.float32), np.array([7, 3, 7], np.int64))
    manifest = image_manifest("test", data, 3, (1, 2, 2), (3, 7))
    _, classes = read_image_arrays(data, manifest)
    assert classes.tolist() == [1, 0, 1]


def test_split_is_seeded_disjoint_and_covers_every_row() -> None:
    train, test = split_indices(1797, seed=0)
    again_train, again_test = split_indices(1797, seed=0)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert len(test) == 359 and len(train) == 1438
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    _, other = split_indices(1797, seed=1)
    assert not np.array_equal(test, other)
    with pytest.raises(InvalidInput, match="at least 2 rows"):
        split_indices(1, seed=0)


def test_pack_refuses_unknown_source_and_overwriting_the_key(tmp_path: Path, pki: PkiLayout) -> None:
    with pytest.raises(InvalidInput, match="unknown image source 'cifar'"):
        pack_images("cifar", tmp_path / "x.safetensors", signing_key_path=pki.key("data-owner"),
                    signing_cert_path=pki.cert("data-owner"))
    with pytest.raises(InvalidInput, match="would overwrite the signing key"):
        pack_images("digits", pki.key("data-owner"), signing_key_path=pki.key("data-owner"),
                    signing_cert_path=pki.cert("data-owner"))
