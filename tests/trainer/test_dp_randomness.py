"""The job's secret DP randomness: keyed streams, their distributions, the key file, Poisson batches."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import TensorDataset

from privtrain.errors import FailedPrecondition
from privtrain.trainer import dp_randomness
from privtrain.trainer.dp_randomness import SECRET_FILE, DPRandomness, Stream
from privtrain.trainer.sampling import poisson_loader

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MILLION = 1_000_000


# ---------------------------------------------------------------------------- keyed streams
def test_a_draw_is_a_function_of_key_stream_index_and_lane_alone() -> None:
    """Same (key, stream, index, lane): the same words, whatever the objects or counters; change
    any one of key, stream, index or lane and the words differ."""
    a, b = DPRandomness(KEY), DPRandomness(KEY, {Stream.SAMPLING: 99})
    base = a.words(Stream.SAMPLING, 5, 64)
    assert base.dtype == np.uint32 and base.shape == (64,)
    assert np.array_equal(base, b.words(Stream.SAMPLING, 5, 64))
    assert np.array_equal(base[:10], a.words(Stream.SAMPLING, 5, 10))  # a prefix of the same keystream
    others = [
        DPRandomness(OTHER_KEY).words(Stream.SAMPLING, 5, 64),
        a.words(Stream.NOISE, 5, 64),
        a.words(Stream.SAMPLING, 6, 64),
        a.words(Stream.SAMPLING, 5, 64, lane=1),
    ]
    assert len({w.tobytes() for w in [base, *others]}) == 5
    for other in others:
        assert (other != base).mean() > 0.99
    torch.testing.assert_close(a.standard_normal(Stream.NOISE, 3, 100),
                               DPRandomness(KEY).standard_normal(Stream.NOISE, 3, 100), rtol=0, atol=0)
    assert not torch.equal(a.standard_normal(Stream.NOISE, 3, 100),
                           DPRandomness(OTHER_KEY).standard_normal(Stream.NOISE, 3, 100))
    with pytest.raises(ValueError, match="out of range"):
        a.words(Stream.NOISE, 0, 4, lane=1 << 16)
    with pytest.raises(ValueError, match="32 bytes"):
        DPRandomness(KEY[:16])


def test_fresh_randomness_comes_from_os_urandom_and_never_repeats(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """A new job's key is 32 bytes of ``os.urandom``: no seed (torch's, numpy's) decides it, 500
    fresh jobs all draw differently, and a new job folder never gets an existing job's key."""
    firsts = set()
    for _ in range(500):
        torch.manual_seed(0)
        np.random.seed(0)
        firsts.add(DPRandomness.fresh().words(Stream.NOISE, 0, 4).tobytes())
    assert len(firsts) == 500
    saved = []
    for i in range(20):
        DPRandomness.load_or_create(tmp_path / f"job-{i}")
        saved.append(json.loads((tmp_path / f"job-{i}" / SECRET_FILE).read_text())["key"])
    assert len(set(saved)) == 20 and all(len(bytes.fromhex(k)) == 32 for k in saved)

    calls: list[int] = []

    def fake_urandom(size: int) -> bytes:
        calls.append(size)
        return OTHER_KEY

    monkeypatch.setattr(dp_randomness.os, "urandom", fake_urandom)
    fresh = DPRandomness.fresh()
    assert calls == [32]
    assert np.array_equal(fresh.words(Stream.NOISE, 0, 8), DPRandomness(OTHER_KEY).words(Stream.NOISE, 0, 8))


def test_counters_advance_per_stream_and_survive_state_restore_and_pickling() -> None:
    """``take`` numbers a stream's draws; ``state`` (what a checkpoint stores) holds the counters
    by stream name and no key; ``restore`` and a pickled copy (a spawned rank) continue them."""
    r = DPRandomness(KEY)
    assert [r.take(Stream.NOISE) for _ in range(3)] == [0, 1, 2]
    assert r.take(Stream.SAMPLING) == 0 and r.peek(Stream.NOISE) == 3
    state = r.state()
    assert state == {"SAMPLING": 1, "NOISE": 3, "COUNT": 0, "RELEASE": 0, "CANARY": 0, "ROW_COUNTS": 0}
    assert KEY.hex() not in json.dumps(state)
    resumed = DPRandomness(KEY)
    resumed.restore(state)
    assert resumed.state() == state and resumed.take(Stream.NOISE) == 3
    copy = pickle.loads(pickle.dumps(r))
    assert copy.state() == state
    assert np.array_equal(copy.words(Stream.COUNT, 7, 4), r.words(Stream.COUNT, 7, 4))


# ---------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standard_normal_is_n01(dtype: torch.dtype) -> None:
    """10^6 draws: mean within 5 standard errors of 0, std within 5 standard errors of 1, the
    Kolmogorov–Smirnov test against N(0, 1) does not reject at 0.1%, the tails have their
    Gaussian mass, and consecutive values are uncorrelated."""
    z = DPRandomness(KEY).standard_normal(Stream.NOISE, 0, MILLION, dtype=dtype)
    assert z.dtype == dtype and z.shape == (MILLION,) and bool(torch.isfinite(z).all())
    values = z.double().numpy()
    assert abs(values.mean()) < 5 / math.sqrt(MILLION)
    assert abs(values.std() - 1) < 5 * math.sqrt(0.5 / MILLION)
    assert stats.kstest(values, "norm").pvalue > 1e-3
    beyond_3 = float((np.abs(values) > 3).mean())
    assert abs(beyond_3 - 2 * stats.norm.sf(3)) < 5 * math.sqrt(2 * stats.norm.sf(3) / MILLION)
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 5 / math.sqrt(MILLION)
    other = DPRandomness(KEY).standard_normal(Stream.NOISE, 1, MILLION, dtype=dtype).double().numpy()
    assert abs(np.corrcoef(values, other)[0, 1]) < 5 / math.sqrt(MILLION)


def test_float64_and_float32_paths_agree_on_the_same_uniforms() -> None:
    """Both transform the same keystream words: the values agree to float32 precision."""
    r = DPRandomness(KEY)
    single = r.standard_normal(Stream.NOISE, 4, 10_000, dtype=torch.float32)
    double = r.standard_normal(Stream.NOISE, 4, 10_000, dtype=torch.float64)
    torch.testing.assert_close(single.double(), double, rtol=1e-5, atol=1e-5)


def test_step_noise_is_the_noise_streams_draw_of_that_step() -> None:
    """``step_noise`` takes the NOISE counter; its value is exactly ``standard_normal(NOISE, i)``,
    whatever the size of the draw."""
    r = DPRandomness(KEY)
    direct = DPRandomness(KEY)
    for index, count in enumerate((1000, 1000, 1000, 77, 77)):
        noise = r.step_noise(count, torch.device("cpu"), torch.float32)
        assert torch.equal(noise, direct.standard_normal(Stream.NOISE, index, count))
    assert r.peek(Stream.NOISE) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_transform_the_same_words_as_the_cpu() -> None:
    """On CUDA the uniforms are the CPU's keystream, transformed on the GPU: the values match the
    CPU's to float32 rounding, and step noise comes back on the GPU."""
    r = DPRandomness(KEY)
    cpu = r.standard_normal(Stream.NOISE, 2, 100_000)
    gpu = r.standard_normal(Stream.NOISE, 2, 100_000, device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    step = r.step_noise(100_000, torch.device("cuda"), torch.float32)
    assert step.device.type == "cuda"
    torch.testing.assert_close(step.cpu(), r.standard_normal(Stream.NOISE, 0, 100_000),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_bernoulli_rate_is_p_within_five_standard_errors(p: float) -> None:
    mask = DPRandomness(KEY).bernoulli(Stream.SAMPLING, 0, MILLION, p)
    assert mask.dtype == bool and mask.shape == (MILLION,)
    assert abs(mask.mean() - p) < 5 * math.sqrt(p * (1 - p) / MILLION)


def test_bernoulli_is_never_more_likely_than_p() -> None:
    """True exactly when the word is below ⌊p·2^32⌋: probability ⌊p·2^32⌋ / 2^32 ≤ p, so a p
    below 2^-32 never fires, p = 0 never, p = 1 always."""
    r = DPRandomness(KEY)
    words = r.words(Stream.SAMPLING, 3, MILLION)
    for p in (0.3, 1 / 3, 2**-20, 1 - 2**-40):
        threshold = math.floor(p * 2**32)
        assert threshold / 2**32 <= p
        assert np.array_equal(r.bernoulli(Stream.SAMPLING, 3, MILLION, p), words < threshold)
    assert not r.bernoulli(Stream.SAMPLING, 3, MILLION, 2**-33).any()
    assert not r.bernoulli(Stream.SAMPLING, 3, MILLION, 0.0).any()
    assert r.bernoulli(Stream.SAMPLING, 3, MILLION, 1.0).all()


# ---------------------------------------------------------------------------- the key file
def test_key_is_saved_0600_in_a_0700_folder_and_loads_back(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    r = DPRandomness(KEY)
    path = r.save(folder)
    assert path == folder / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    loaded = DPRandomness.load(folder)
    assert np.array_equal(loaded.words(Stream.NOISE, 1, 16), r.words(Stream.NOISE, 1, 16))
    assert loaded.state() == DPRandomness(KEY).state()  # counters start at 0
    again = DPRandomness.load_or_create(folder)
    assert np.array_equal(again.words(Stream.NOISE, 1, 16), r.words(Stream.NOISE, 1, 16))
    new = tmp_path / "new" / "job"
    created = DPRandomness.load_or_create(new)
    assert (new / SECRET_FILE).stat().st_mode & 0o777 == 0o600 and new.stat().st_mode & 0o777 == 0o700
    assert np.array_equal(DPRandomness.load(new).words(Stream.NOISE, 0, 8), created.words(Stream.NOISE, 0, 8))


@pytest.mark.parametrize("content", [
    None,  # missing
    "",  # empty
    "not json",
    json.dumps({"secret": KEY.hex()}),
    json.dumps({"key": KEY.hex()[:-2]}),  # 31 bytes
    json.dumps({"key": KEY.hex()[:-1] + "z"}),  # not hex
    json.dumps({"key": 7}),
])
def test_a_missing_or_corrupt_key_is_failed_precondition_without_quoting_it(tmp_path: Path,
                                                                            content: str | None) -> None:
    if content is not None:
        (tmp_path / SECRET_FILE).write_text(content)
    with pytest.raises(FailedPrecondition, match="DP randomness key cannot be read") as info:
        DPRandomness.load(tmp_path)
    message = str(info.value)
    assert KEY.hex()[:16] not in message and "\n" not in message
    assert info.value.grpc_code == "FAILED_PRECONDITION"
    if content is not None:
        with pytest.raises(FailedPrecondition):
            DPRandomness.load_or_create(tmp_path)  # never silently replaced by a fresh key
        assert (tmp_path / SECRET_FILE).read_text() == content


# ---------------------------------------------------------------------------- Poisson batches
def _rows(n: int = 20) -> TensorDataset:
    x = torch.arange(n * 4, dtype=torch.float32).view(n, 4)
    return TensorDataset(x, torch.arange(n, dtype=torch.int64) % 2)


def _batches(loader) -> list[list[int]]:
    """Each batch's row numbers (the features' first column / 4)."""
    return [(x[:, 0] / 4).long().tolist() for x, _ in loader]


def test_poisson_loader_yields_empty_batches_with_shapes_and_dtypes() -> None:
    """C-T01: 20 rows × 4 features, q = 0.05, 600 steps: every step yields a batch, about
    (0.95)^20 ≈ 36% of them empty, each empty one ``(0, 4)`` float32 and ``(0,)`` int64; the
    batch sizes average q × 20 = 1 row."""
    loader = poisson_loader(_rows(), sample_rate=0.05, steps=600, randomness=DPRandomness.fresh())
    batches = list(loader)
    assert len(batches) == 600
    empty = [(x, y) for x, y in batches if len(y) == 0]
    assert 150 < len(empty) < 280
    for x, y in empty:
        assert x.shape == (0, 4) and x.dtype == torch.float32
        assert y.shape == (0,) and y.dtype == torch.int64
    for x, y in batches:
        assert x.shape == (len(y), 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.8 < sum(len(y) for _, y in batches) / 600 < 1.2


def test_poisson_batches_follow_the_key_and_the_sampling_counter() -> None:
    """Same key: the same batches; another key: other batches; the next epoch continues the
    SAMPLING counter (new batches), and restoring the counter replays them."""
    def loader(randomness: DPRandomness):
        return poisson_loader(_rows(100), sample_rate=0.1, steps=10, randomness=randomness)

    first = DPRandomness(KEY)
    epoch_1 = _batches(loader(first))
    assert epoch_1 == _batches(loader(DPRandomness(KEY)))
    assert epoch_1 != _batches(loader(DPRandomness(OTHER_KEY)))
    assert first.peek(Stream.SAMPLING) == 10
    same_loader = loader(first)
    epoch_2 = _batches(same_loader)
    assert epoch_2 != epoch_1
    replay = DPRandomness(KEY)
    replay.restore({"SAMPLING": 10})
    assert _batches(loader(replay)) == epoch_2
    masks = [DPRandomness(KEY).bernoulli(Stream.SAMPLING, i, 100, 0.1) for i in range(10)]
    assert epoch_1 == [np.flatnonzero(m).tolist() for m in masks]


def test_poisson_loader_draws_only_from_its_rows_on_its_lane() -> None:
    """A rank's share of the rows, on its lane: batches hold only those rows, drawn by that lane."""
    rows = np.arange(1, 100, 2)
    loader = poisson_loader(_rows(100), sample_rate=0.2, steps=20, randomness=DPRandomness(KEY),
                            rows=rows, lane=3)
    batches = _batches(loader)
    assert set().union(*map(set, batches)) <= set(rows.tolist())
    expected = [rows[DPRandomness(KEY).bernoulli(Stream.SAMPLING, i, len(rows), 0.2, lane=3)].tolist()
                for i in range(20)]
    assert batches == expected
