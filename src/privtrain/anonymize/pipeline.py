"""The anonymization run: raw table + policy + key -> anonymized Parquet + signed manifest.

Order of work, chosen so nothing half-done is ever left on disk and memory stays flat
whatever the file size (:mod:`privtrain.anonymize.stream`): read the input once in
chunks, validating every value and counting the quasi-identifier combinations; search
the generalization lattice on those counts; read it again, applying the column
operators, the chosen generalization and the suppression chunk by chunk into a
temporary output file; re-check k (and l, t) on what was written; hash the file, build
and sign the manifest, and only then rename the output into place and write the
manifest atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faker
import pyarrow as pa

from privtrain import __version__
from privtrain.anonymize.chunks import DEFAULT_CHUNK_ROWS, ChunkReader, ChunkWriter
from privtrain.anonymize.continuity import RunIdentity, continuity_fields
from privtrain.anonymize.errors import AnonymizationError, PolicyError
from privtrain.anonymize.keys import load_key
from privtrain.anonymize.manifest import MANIFEST_FORMAT, MANIFEST_VERSION, sign_manifest
from privtrain.anonymize.operators import pseudonym
from privtrain.anonymize.operators.registry import OperatorContext, get_operator
from privtrain.anonymize.policy import Policy, load_policy
from privtrain.anonymize.pseudonym_store import Store, default_store_path
from privtrain.anonymize.released_risk import evaluate as evaluate_release
from privtrain.anonymize.report import file_sha256
from privtrain.anonymize.stream import Streamer
from privtrain.anonymize.tableio import JSONL, PARQUET, read_table
from privtrain.anonymize.verify import verify_output
from privtrain.atomic_files import staged_bytes
from privtrain.errors import NotFound

__all__ = [
    "AnonymizationReport",
    "anonymize_file",
    "manifest_path_for",
    "read_table",
    "verify_output",
]

Progress = Callable[[str, float], None]
K_NOT_APPLICABLE = (
    "the policy declares no quasi-identifiers (no generalize column): no record is claimed "
    "to hide among look-alikes, so no k is claimed"
)


@dataclass(frozen=True)
class AnonymizationReport:
    """Outcome of :func:`anonymize_file`.

    Attributes
    ----------
    rows_raw, rows_out, rows_suppressed : int
        Input rows, output rows, rows removed because their class was smaller than k.
    k_achieved : int
        Smallest equivalence class of the output over the QIs (>= the policy's k); 0 when
        the policy declares no quasi-identifiers (no k is claimed).
    levels : dict[str, int]
        Generalization level per QI (0 = raw).
    precision_loss : float
        mean_i(level_i / height_i) in [0, 1] (Sweeney 2002).
    discernibility : int
        Discernibility metric (Bayardo & Agrawal 2005).
    aecs : float
        Average equivalence class size, rows per class.
    output_path, manifest_path : Path
        Files written.
    output_sha256 : str
        Hex SHA-256 of the Parquet file bytes.
    continuity : dict
        The manifest's fields about an earlier release (``previous_manifest_sha256``,
        ``rotated_from_key_id``, ``remapped_from``); empty without one.
    released_risk : dict
        The manifest's ``released_risk`` block (:mod:`privtrain.anonymize.released_risk`).
    k_declared : int | None
        k over the declared quasi-identifiers alone when kept proxies were counted
        (``k_achieved`` then counts them); None otherwise.
    pseudonym_store : dict | None
        The manifest's ``pseudonym_store`` (store id, generation, token); None without
        pseudonym columns.
    pseudonym_clashes : dict[str, int]
        Per pseudonym column: values of this file whose real text (case-folded) is the
        pseudonym another value of this file kept from an earlier release.
    """

    rows_raw: int
    rows_out: int
    rows_suppressed: int
    k_achieved: int
    levels: dict[str, int]
    precision_loss: float
    discernibility: int
    aecs: float
    output_path: Path
    manifest_path: Path
    output_sha256: str
    continuity: dict[str, Any] = field(default_factory=dict)
    released_risk: dict[str, Any] = field(default_factory=dict)
    k_declared: int | None = None
    pseudonym_store: dict[str, Any] | None = None
    pseudonym_clashes: dict[str, int] = field(default_factory=dict)


def manifest_path_for(out_path: Path) -> Path:
    """``OUTPUT.manifest.json`` beside ``OUTPUT``."""
    return out_path.with_name(out_path.name + ".manifest.json")


def _check_columns(columns: list[str], policy: Policy, source: str) -> None:
    declared = set(policy.columns)
    for name in columns:
        if name not in declared:
            raise PolicyError(
                f"{policy.source}: columns.{name}: input column {name!r} of {source} "
                "is not declared; "
                f'every column needs a [columns.{name}] entry (use operator = "drop" if unneeded)'
            )
    for name in policy.columns:
        if name not in columns:
            raise PolicyError(f"{policy.source}: columns.{name}: declared but absent from {source}")


def _check_output_path(out_path: Path, inputs: list[Path]) -> None:
    """Refuse an output (or its manifest) that would overwrite an input, or is a folder.

    Raises
    ------
    AnonymizationError
        Naming the clash, or a suffix that names no output format.
    """
    targets = {
        out_path.resolve(): str(out_path),
        manifest_path_for(out_path).resolve(): "its manifest",
    }
    for path in inputs:
        clash = targets.get(Path(path).resolve())
        if clash is not None:
            raise AnonymizationError(
                f"output {out_path} ({clash}) would overwrite the input {path}; choose another --out"
            )
    for target in targets:
        if target.is_dir():
            raise AnonymizationError(f"output {target} is a folder; --out needs a file name")
    if not out_path.resolve().parent.is_dir():
        raise AnonymizationError(f"output folder {out_path.resolve().parent} does not exist")
    known = sorted({*PARQUET, *JSONL, ".csv"})
    if out_path.suffix.lower() not in known:
        raise AnonymizationError(
            f"output {out_path}: its suffix chooses the format; end the name in "
            f"{', '.join(known)}"
        )


def _check_cell_types(reader: ChunkReader, policy: Policy) -> None:
    """Refuse a released column whose cells are not one text-like value: lists and
    structs only as ``drop``, bytes only as ``hmac`` or ``drop`` (a dropped column is never
    read)."""
    for name, why in reader.unsupported_columns.items():
        operator = policy.columns[name].operator
        if operator == "drop" or (operator == "hmac" and "bytes" in why):
            continue
        allowed = '"hmac" or "drop"' if "bytes" in why else '"drop"'
        raise AnonymizationError(
            f"{reader.path}: column {name!r}: {why}; use operator = {allowed}, or store it "
            "as one text or number per cell"
        )


class _InputDigest:
    """The input's SHA-256, computed on a thread of its own once started.

    Started when pass 1 has read the whole input: the parser's core is then free (the
    scan's last chunk, the lattice search and the pseudonym maps run on one core), where
    hashing during pass 1 would slow the parser it shares the cores with. hashlib
    releases the GIL while it hashes a block.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._future: Future[tuple[str, int]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> None:
        """Start hashing (idempotent; safe from any thread)."""
        with self._lock:
            if self._future is None and not self._stop.is_set():
                pool = ThreadPoolExecutor(1, thread_name_prefix="privtrain-input-sha256")
                self._future = pool.submit(file_sha256, self.path, self._stop)
                pool.shutdown(wait=False)

    def cancel(self) -> None:
        """The run failed: stop hashing at the next block (nothing waits for it)."""
        with self._lock:
            self._stop.set()

    @contextmanager
    def cancelled_on_error(self) -> Iterator[None]:
        """Cancel the hashing when the body raises (or is interrupted)."""
        try:
            yield
        except BaseException:
            self.cancel()
            raise

    def hexdigest(self) -> str:
        """The hex digest (starts hashing if nothing did), once computed.

        Raises
        ------
        NotFound
            The input cannot be read.
        """
        self.start()
        assert self._future is not None
        try:
            return self._future.result()[0]
        except OSError as exc:
            raise NotFound(f"{self.path}: cannot read the input ({exc.strerror})") from None


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration.

    The passes allocate millions of short-lived objects that reference counting frees;
    the cyclic collector would otherwise rescan them over and over (about 5% of the
    run on the bench input) and finds no cycles to free among them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _arrow_pool() -> Iterator[None]:
    """Allocate Arrow's buffers with jemalloc (else the C library's ``malloc``) for the duration.

    Arrow's default pool on Linux (mimalloc) backs its arenas with transparent huge pages
    and hands freed memory back to the system after a second; the passes allocate and
    free some hundred megabytes per chunk, so the kernel zeroed fresh 2 MiB pages over
    and over, and run times swung widely. jemalloc reuses freed memory, and its peak
    stays flat with the file's size (``bench/anonymize.py`` prints both peaks);
    ``malloc``'s grew with it. Buffers remember their pool, so switching back afterwards
    is safe.
    """
    previous = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def anonymize_file(
    input_path: Path,
    policy_path: Path,
    key_path: Path,
    out_path: Path,
    *,
    signing_key_path: Path,
    signing_cert_path: Path,
    encoding: str | None = None,
    progress: Progress | None = None,
    chunk_rows: int | None = None,
    previous_manifest: Path | None = None,
    rotate_key: bool = False,
    remap: bool = False,
    pseudonym_store: Path | None = None,
) -> AnonymizationReport:
    """Anonymize one table and write ``out_path`` (Parquet) and its signed manifest.

    Parameters
    ----------
    input_path : Path
        Raw CSV, Parquet or JSON Lines table.
    policy_path : Path
        Policy TOML (:func:`privtrain.anonymize.policy.load_policy`).
    key_path : Path
        HMAC key file (:func:`privtrain.anonymize.keys.load_key`).
    out_path : Path
        Output file, Parquet unless it ends in ``.csv`` or ``.jsonl``; the manifest goes to
        ``OUTPUT.manifest.json``.
    signing_key_path, signing_cert_path : Path
        The data owner's TLS private key (PEM, ECDSA P-256 or Ed25519) and certificate.
    encoding : str | None
        Text encoding of a CSV input; None: UTF-8 (with or without BOM), else detected.
    progress : callable(stage, fraction) | None
        Called with a stage name and the overall fraction done in [0, 1].
    chunk_rows : int | None
        Rows read and processed at a time (None: 131,072). Memory grows with it, not with
        the file; the output does not depend on it.
    previous_manifest : Path | None
        Signed manifest of an earlier release to stay joinable with: checked before any
        data is read (:func:`privtrain.anonymize.continuity.continuity_fields`).
    rotate_key, remap : bool
        With ``previous_manifest``: accept a different key, or a different Faker version,
        locale, pseudonym scheme or pseudonym store; the manifest records what changed.
    pseudonym_store : Path | None
        The owner's pseudonym store (:mod:`privtrain.anonymize.pseudonym_store`), used
        when the policy has ``pseudonym`` columns; None: ``KEYFILE.pseudonyms.sqlite``
        beside the key. Created on first use.

    Returns
    -------
    AnonymizationReport

    Raises
    ------
    PolicyError, KeyFileError, AnonymizationError, ManifestError, NotFound
        Nothing is written when any of them is raised. ``AnonymizationError`` also when
        ``rotate_key`` or ``remap`` is given without ``previous_manifest``, or when the
        run breaks continuity with it unasked.
    """

    def tick(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    out_path = Path(out_path)
    store_path = Path(pseudonym_store) if pseudonym_store else default_store_path(key_path)
    inputs = [input_path, policy_path, key_path, signing_key_path, signing_cert_path, store_path]
    # The earlier release's manifest is its proof; a re-release never overwrites it.
    _check_output_path(out_path, inputs + ([previous_manifest] if previous_manifest else []))
    policy = load_policy(policy_path)
    key = load_key(key_path)
    if previous_manifest is None and (rotate_key or remap):
        flag = "--rotate-key" if rotate_key else "--remap"
        raise AnonymizationError(f"{flag} needs --previous-manifest (the release it departs from)")
    uses_pseudonyms = any(c.operator == "pseudonym" for c in policy.columns.values())
    store = Store(store_path, key) if uses_pseudonyms else None
    if store is not None:
        store.state()  # an unsafe, foreign or broken store is refused before any data is read
    identity = RunIdentity(
        key_id=key.key_id,
        faker_version=faker.VERSION,
        faker_locale=policy.locale,
        pseudonym_scheme=pseudonym.SCHEME,
        uses_pseudonyms=uses_pseudonyms,
        pseudonym_store=store,
    )
    try:
        signing_key = Path(signing_key_path).read_bytes()
        signing_cert = Path(signing_cert_path).read_bytes()
    except OSError as exc:
        raise NotFound(
            f"{exc.filename}: cannot read signing key/certificate ({exc.strerror})"
        ) from None
    continuity: dict[str, Any] = {}
    if previous_manifest is not None:
        continuity = continuity_fields(
            Path(previous_manifest), identity, signing_cert, rotate_key=rotate_key, remap=remap
        )
    tick("read", 0.0)
    reader = ChunkReader(Path(input_path), encoding, policy.missing_values)
    source = str(input_path)
    _check_columns(reader.columns, policy, source)
    if all(col.operator == "drop" for col in policy.columns.values()):
        raise AnonymizationError(
            f"{policy.source}: every column is dropped; nothing would be released"
        )
    _check_cell_types(reader, policy)
    # The input's digest lets the server tell two releases of one raw file from two
    # sources: the same people share one privacy budget, whatever key or policy was used.
    input_digest = _InputDigest(Path(input_path))
    streamer = Streamer(
        reader, policy, key, chunk_rows or DEFAULT_CHUNK_ROWS, tick, store,
        on_read=input_digest.start,
    )  # fmt: skip
    with _cyclic_gc_paused(), _arrow_pool(), input_digest.cancelled_on_error():
        streamer.scan()
        n = streamer.rows
        if n == 0:
            raise AnonymizationError(f"{source}: the input has no rows: nothing to anonymize")
        result = streamer.search()

    domains: dict[str, dict[str, Any]] = {}
    for name in reader.columns:
        col = policy.columns[name]
        level = result.levels[name] if col.operator == "generalize" else None
        domain = get_operator(col.operator).output_domain(
            OperatorContext(col, key, policy.locale, source, level)
        )
        if domain is not None:
            domains[name] = domain
    if policy.split is not None and policy.split.method == "random_holdout":
        domains[policy.split.column] = {
            "type": "categorical", "values": [policy.split.train, policy.split.test]
        }  # fmt: skip
    # Without quasi-identifiers nothing hides a record among look-alikes: no k is claimed.
    qis_declared = bool(policy.quasi_identifiers)
    k_claimed = result.k_achieved if qis_declared else 0

    tick("write", 0.5)
    with (
        ChunkWriter(out_path) as writer,
        _cyclic_gc_paused(),
        _arrow_pool(),
        closing(streamer),
        input_digest.cancelled_on_error(),
    ):
        k_out, models = streamer.write(writer)
        rows_out = writer.rows
        # Independent re-check on the written labels: the lattice's codes and the
        # output must agree, or the manifest would claim a k that is not there.
        if k_out != result.k_achieved or rows_out != n - result.rows_suppressed or (
            qis_declared and k_out < policy.k
        ):
            raise AnonymizationError(
                f"internal check failed: output has k = {k_out} over {rows_out} rows, the "
                f"lattice search claimed {result.k_achieved} over {n - result.rows_suppressed} "
                f"(target {policy.k}); nothing was written"
            )
        if policy.sensitive_attributes:
            lv = models["l_distinct"] if policy.l_diversity == "distinct" else models["l_entropy"]
            if (policy.l is not None and lv < policy.l - 1e-9) or (
                policy.t is not None and models["t"] > policy.t + 1e-9
            ):
                raise AnonymizationError(
                    f"internal check failed: output has l = {lv:g}, t = {models['t']:.4f} "
                    f"(targets l = {policy.l}, t = {policy.t}); nothing was written"
                )
        # Closed before the release is judged, while its counts are still being added
        # up; a refusal below still leaves nothing behind (the writer drops the file).
        digest, size = writer.finish()
        # What the written rows reveal beyond the declared QIs: refuses (nothing is
        # renamed into place or signed) a column over the uniqueness threshold, or proxies
        # of QIs that break k, unless the policy accepts / acknowledges them.
        assert streamer.release is not None
        released = evaluate_release(
            policy, streamer.release, streamer.proxies, result.k_achieved, models,
            streamer.out_sens,
        )  # fmt: skip
        tick("write", 0.95)
        recorded = store.recorded if store is not None else None
        store_record = recorded.as_manifest() if recorded is not None else None
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "tool_version": __version__,
            "policy_sha256": policy.sha256,
            "input_rows": n,
            "output_rows": rows_out,
            "rows_suppressed": result.rows_suppressed,
            "k_target": policy.k,
            "k_achieved": k_claimed,
            "max_suppression": policy.max_suppression,
            "quasi_identifiers": policy.quasi_identifiers,
            "direct_identifiers": policy.direct_identifiers,
            "generalization_levels": result.levels,
            "generalization_heights": result.heights,
            "information_loss": {
                "precision_loss": result.precision_loss,
                "discernibility": result.discernibility,
                "aecs": result.aecs,
                "lattice_nodes_total": result.nodes_total,
                "lattice_nodes_evaluated": result.nodes_evaluated,
            },
            "key_id": identity.key_id,
            "faker_version": identity.faker_version,
            "faker_locale": identity.faker_locale,
            "pseudonym_scheme": identity.pseudonym_scheme,
            **continuity,
            "input_sha256": input_digest.hexdigest(),
            **({"pseudonym_store": store_record} if store_record else {}),
            "output_sha256": digest,
            "output_bytes": size,
            "columns": domains,
        }
        if models:
            manifest["privacy_models"] = models
        if not qis_declared:
            manifest["k_not_applicable"] = K_NOT_APPLICABLE
        if policy.split is not None:
            manifest["split"] = policy.split.manifest_entry()
        manifest.update(released)
        signed = sign_manifest(manifest, signing_key, signing_cert)
        manifest_path = manifest_path_for(out_path)
        # The manifest is written first and renamed right after the output, so a full
        # disk leaves neither behind (nor a new output beside an old manifest).
        with staged_bytes(manifest_path, signed) as commit_manifest:
            writer.commit()
            commit_manifest()
    tick("done", 1.0)
    return AnonymizationReport(
        rows_raw=n,
        rows_out=rows_out,
        rows_suppressed=result.rows_suppressed,
        k_achieved=manifest["k_achieved"],
        levels=result.levels,
        precision_loss=result.precision_loss,
        discernibility=result.discernibility,
        aecs=result.aecs,
        output_path=out_path,
        manifest_path=manifest_path,
        output_sha256=digest,
        continuity=continuity,
        released_risk=manifest["released_risk"],
        k_declared=manifest.get("k_declared"),
        pseudonym_store=store_record,
        pseudonym_clashes=streamer.pseudonym_clashes,
    )
