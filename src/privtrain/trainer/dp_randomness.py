"""Secret randomness of one DP job: Poisson sampling, Gaussian noise, and the job's other draws.

The privacy analysis of DP-SGD assumes that the party receiving the model cannot
predict the noise or the batches. Every random draw a DP mechanism makes therefore
comes from a 256-bit key drawn from the operating system's CSPRNG (``os.urandom``)
for that job alone, never from anything in the job spec (the trainer's ``seed`` only
fixes initialisation). The key is expanded with AES-256 in counter mode (NIST SP
800-38A; OpenSSL through ``cryptography``, AES-NI where the CPU has it): draw ``index``
of stream ``purpose`` is the keystream under the initial counter block
``purpose (4 bytes) || index (8 bytes) || 0 (4 bytes)``, so every draw has its own
counter range (2^32 blocks, 64 GiB, far above any draw), and the draw of a step
depends only on the key and the step. A resumed job therefore replays exactly the
randomness of the steps it repeats: a repeated step releases nothing new.

Gaussian noise resists the floating-point attacks on DP-SGD (Mironov 2012, "On
Significance of the Least Significant Bits for Differential Privacy"; Jin et al.
2022, "Are We There Yet? Timing and Floating-Point Attacks on Differential Privacy
Systems") as Opacus' ``secure_mode`` does: each value is the sum of four independent
floating-point Gaussians, from four different Box-Muller pairs, divided by two
(Holohan & Braghin 2021, section 5.1), here from the CSPRNG keystream instead of
torchcsprng, which no longer builds against current torch. Uniforms carry 24 random
bits, as float32 Box-Muller in torch does.

The key is the only state besides per-stream counters; :meth:`DPRandomness.save`
writes it 0600 in the job's server-side folder so a resumed worker continues the same
streams. It never leaves the server.
"""

from __future__ import annotations

import enum
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privtrain.atomic_files import atomic_write_bytes
from privtrain.errors import FailedPrecondition
from privtrain.trainer.keystream import keystream

KEY_BYTES = 32
SECRET_FILE = "dp-randomness.json"
_UNIFORM_BITS = 24
_UNIFORM_MASK = (1 << _UNIFORM_BITS) - 1
_TWO_PI = 2.0 * math.pi
# Words of keystream per released Gaussian: four Gaussians, from two Box-Muller pairs.
_WORDS_PER_GAUSSIAN = 4


class Stream(enum.IntEnum):
    """What a draw is for; each has its own counter range under the key."""

    SAMPLING = 1  # Poisson sampling of the training rows (one draw per logical step and rank)
    NOISE = 2  # Gaussian noise on the summed clipped gradients (one draw per logical step)
    COUNT = 3  # adaptive clipping: noise on the unclipped count (one draw per logical step)
    RELEASE = 4  # noise of released statistics: test accuracy (one draw per release)
    CANARY = 5  # privacy audit: which canaries are included, and in which steps
    ROW_COUNTS = 6  # noisy row counts published at upload


class DPRandomness:
    """A job's CSPRNG-keyed streams of uniform bits, Bernoulli masks and Gaussian noise.

    Parameters
    ----------
    key : bytes
        32 secret bytes; use :meth:`fresh` (``os.urandom``) for a new job and
        :meth:`load` to resume one.
    counters : dict, optional
        Next draw index per :class:`Stream` (default 0 for every stream).

    Notes
    -----
    Methods taking an ``index`` are pure functions of (key, stream, index); the
    ``next_*`` methods use and advance the stream's counter, which :meth:`state`
    records so a checkpoint can restore it.
    """

    def __init__(self, key: bytes, counters: dict[int, int] | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a DP randomness key has {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self._counters = {int(s): 0 for s in Stream}
        self._counters.update({int(k): int(v) for k, v in (counters or {}).items()})
        self._lock = threading.Lock()

    @classmethod
    def fresh(cls) -> DPRandomness:
        """A new job's randomness: 32 bytes from the operating system's CSPRNG."""
        return cls(os.urandom(KEY_BYTES))

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, int]:
        """The stream counters (JSON-able); the key is kept apart (see :meth:`save`)."""
        with self._lock:
            return {Stream(k).name: v for k, v in self._counters.items()}

    def restore(self, state: dict[str, int]) -> None:
        """Set the stream counters from :meth:`state` output (a checkpoint)."""
        with self._lock:
            self._counters.update({int(Stream[name]): int(v) for name, v in state.items()})

    def save(self, directory: Path) -> Path:
        """Write the key to ``directory/dp-randomness.json``, mode 0600, folder 0700.

        Only the server reads it (to resume the job); it is never part of a result,
        a parameter file or a message.
        """
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)  # the job's folder holds the key, checkpoints and parameters
        path = directory / SECRET_FILE
        atomic_write_bytes(path, json.dumps({"key": self._key.hex()}).encode(), mode=0o600)
        return path

    @classmethod
    def load(cls, directory: Path) -> DPRandomness:
        """The key :meth:`save` wrote (stream counters start at 0; restore them from a checkpoint).

        Raises
        ------
        FailedPrecondition
            No key, or an unreadable one, in ``directory``.
        """
        path = directory / SECRET_FILE
        try:
            return cls(bytes.fromhex(json.loads(path.read_text())["key"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"the job's DP randomness key cannot be read ({type(exc).__name__})") \
                from None

    @classmethod
    def load_or_create(cls, directory: Path) -> DPRandomness:
        """The job's saved key if there is one, else a fresh key saved there first."""
        if (directory / SECRET_FILE).is_file():
            return cls.load(directory)
        randomness = cls.fresh()
        randomness.save(directory)
        return randomness

    # ------------------------------------------------------------------ counters
    def take(self, stream: Stream) -> int:
        """The stream's next draw index, advancing its counter."""
        with self._lock:
            index = self._counters[int(stream)]
            self._counters[int(stream)] = index + 1
            return index

    def peek(self, stream: Stream) -> int:
        """The stream's next draw index, without advancing it."""
        with self._lock:
            return self._counters[int(stream)]

    # ------------------------------------------------------------------ raw bits
    def words(self, stream: Stream, index: int, count: int, *, lane: int = 0) -> np.ndarray:
        """``count`` uniform 32-bit words (``uint32``, ``(count,)``) of draw ``index``.

        ``lane`` (< 2^16) separates parallel users of one draw index, e.g. the ranks
        of a multi-process job sampling their shares of the rows.
        """
        if not 0 <= lane < 1 << 16 or not 0 <= index < 1 << 64:
            raise ValueError(f"draw index {index} or lane {lane} out of range")
        nonce = (int(stream) << 16 | lane).to_bytes(4, "big") + index.to_bytes(8, "big") + bytes(4)
        return keystream(self._key, nonce, 4 * count).view(np.uint32)

    # ------------------------------------------------------------------ distributions
    def bernoulli(self, stream: Stream, index: int, count: int, probability: float, *,
                  lane: int = 0) -> np.ndarray:
        """``count`` independent Bernoulli draws, ``bool`` ``(count,)``.

        Each is True with probability ⌊p·2^32⌋ / 2^32 ≤ p: never more likely than
        ``probability``, so an analysis at ``probability`` stays an upper bound.
        """
        if probability >= 1.0:
            return np.ones(count, dtype=bool)
        threshold = np.uint32(max(0, int(probability * 2**32)))
        return self.words(stream, index, count, lane=lane) < threshold

    def standard_normal(self, stream: Stream, index: int, count: int, *,
                        device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``count`` N(0, 1) values, ``(count,)``, each the sum of four Gaussians over two.

        The uniforms are drawn on the CPU and transformed where the values are needed
        (numpy on the CPU, torch on CUDA), in float32 (float64 when ``dtype`` is float64).
        """
        return _to_normal(self.words(stream, index, _WORDS_PER_GAUSSIAN * count), count,
                          torch.device(device), dtype)

    # ------------------------------------------------------------------ gradient noise
    def step_noise(self, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """N(0, 1) noise ``(count,)`` of the next logical step (stream NOISE), advancing it."""
        return self.standard_normal(Stream.NOISE, self.take(Stream.NOISE), count, device=device,
                                    dtype=dtype)

    def __getstate__(self) -> dict[str, Any]:
        # Spawned processes (the ranks of a multi-process job) get the key and counters only.
        return {"key": self._key, "counters": dict(self._counters)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["key"], state["counters"])  # type: ignore[misc]


def _to_normal(words: np.ndarray, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """N(0, 1) ``(count,)`` from ``4 * count`` uniform words: four Gaussians summed, halved.

    The words make ``2 * count`` Box-Muller pairs (radius r = sqrt(-2 ln u1), angle
    θ = 2π u2, u = (w mod 2^24 + 1) / 2^24 in (0, 1]), each giving two independent
    Gaussians r cos θ and r sin θ, as torch's own sampler does. Value j sums the cosines
    of pairs j and count + j and the sines of pairs j + 1 and count + j + 1 (indices
    modulo count): four floating-point Gaussians from four different pairs, as in
    Opacus' secure mode (four ``torch.normal`` draws).

    On CUDA the transform runs on the device; on the CPU, a draw of at least
    :data:`COMPILED_MIN` values runs as one fused, multi-threaded kernel
    (``torch.compile``: the noise of a large model each step), smaller ones in numpy.
    """
    raw = torch.from_numpy(words.view(np.int32)).view(4, count)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if device.type == "cuda":
        return _sum_of_four(raw.pin_memory().to(device, non_blocking=True), work).to(dtype)
    if count >= COMPILED_MIN and work == torch.float32 and _COMPILED.get("kernel", True) is not None:
        try:
            return _compiled_sum_of_four()(raw).to(dtype)
        except Exception:  # noqa: BLE001 - no compiler or a backend error: numpy from now on
            _COMPILED["kernel"] = None
    real = np.float64 if work == torch.float64 else np.float32
    grid = words.reshape(4, count)
    radius = (grid[0::2] & _UNIFORM_MASK).astype(real)
    radius += 1.0
    radius *= real(2.0 ** -_UNIFORM_BITS)
    np.log(radius, out=radius)
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = (grid[1::2] & _UNIFORM_MASK).astype(real)
    angle *= real(_TWO_PI * 2.0 ** -_UNIFORM_BITS)
    cosines = np.cos(angle)
    cosines *= radius
    np.sin(angle, out=angle)
    angle *= radius
    total = cosines[0] + cosines[1]
    total += np.roll(angle[0] + angle[1], -1)
    total *= 0.5
    return torch.from_numpy(total).to(dtype)


# Draws of at least this many values use the compiled kernel on the CPU (compiling costs a few
# seconds once per process; a model this large draws that much noise every step).
COMPILED_MIN = 1 << 18
_COMPILED: dict[str, Any] = {}


def _sum_of_four(raw: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """The torch form of :func:`_to_normal` on ``(4, count)`` int32 words."""
    radius = ((raw[0::2] & _UNIFORM_MASK).to(work) + 1.0) * (2.0 ** -_UNIFORM_BITS)
    radius = torch.sqrt(-2.0 * torch.log(radius))
    angle = (raw[1::2] & _UNIFORM_MASK).to(work) * (_TWO_PI * 2.0 ** -_UNIFORM_BITS)
    total = (torch.cos(angle) * radius).sum(dim=0)
    total = total + torch.roll((torch.sin(angle) * radius).sum(dim=0), -1)
    return total * 0.5


def _compiled_sum_of_four() -> Any:
    """:func:`_sum_of_four` compiled by inductor (float32, one kernel per draw size); where
    compiling fails, the caller draws with numpy (the same distribution, other rounding)."""
    if _COMPILED.get("kernel") is None:
        _COMPILED["kernel"] = torch.compile(lambda raw: _sum_of_four(raw, torch.float32),
                                            dynamic=False)
    return _COMPILED["kernel"]
