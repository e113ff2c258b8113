"""The data owner's pseudonym store: one person, one pseudonym, in every release under a key.

A pseudonym drawn from Faker's lists is realistic, so the space it lives in is small
(a few million e-mail addresses or names) and two people's keyed draws collide
(the birthday bound: about n^2 / 2N collisions for n people in a space of N). A keyed
function of the value alone cannot be both realistic and collision-free, and a draw
that is retried on a clash depends on who else was in the file. So the assignment is
kept: every pseudonym handed out is recorded, with the value it was handed to, in a
SQLite file next to the key (``KEYFILE.pseudonyms.sqlite`` unless ``--pseudonym-store``
names another), and every later release looks it up before drawing anything new.

What is stored, per column space (column name, Faker provider, locale):

* ``digest``: the value's first draw seed d_0 = HMAC-SHA256(key, domain + column +
  attempt 0 + value), 32 bytes, its identity
  (:mod:`privtrain.anonymize.operators.pseudonym`);
* ``folded_digest``: HMAC-SHA256(key, another domain + column + casefold(value)), so
  a new pseudonym is never the (case-folded) real value of anyone seen before;
* ``pseudonym`` and its case-folded form, with a UNIQUE constraint on
  (space, folded pseudonym) and a primary key on (space, digest).

So one value has one pseudonym and one pseudonym one value, as database constraints,
not as a probability; the one assumption is that two values of a column never share a
32-byte HMAC-SHA256 digest (chance at most n(n-1) / 2^257 for n values).

Raw values are never stored; without the key the digests say nothing, with it they
only confirm guesses, as the tokens already do. The file is created with mode 0600
and refused when group or others may read it.

Claims are made in one ``BEGIN IMMEDIATE`` transaction per run (:meth:`Store.session`):
runs on one store are serialized while they claim (a second run waits up to
``lock_timeout`` seconds, then stops with a clear error), each sees every earlier
commit, and the constraints hold across all of them. A run that stops before its
commit leaves the store as it was. Every commit that adds pseudonyms opens a new
*generation* with a random token; a manifest records the store's id, generation and
token (``pseudonym_store``), so a later ``--previous-manifest`` run can check that
its store holds that release's claims (not a stale copy or a fork of it).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.keys import SecretKey

STORE_FORMAT = "privtrain-pseudonym-store"
STORE_VERSION = 1
STORE_SUFFIX = ".pseudonyms.sqlite"
LOCK_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    added INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS spaces (
    space INTEGER PRIMARY KEY,
    column_name TEXT NOT NULL,
    provider TEXT NOT NULL,
    locale TEXT NOT NULL,
    UNIQUE (column_name, provider, locale)
);
CREATE TABLE IF NOT EXISTS pseudonyms (
    space INTEGER NOT NULL REFERENCES spaces (space),
    digest BLOB NOT NULL,
    folded_digest BLOB NOT NULL,
    pseudonym TEXT NOT NULL,
    folded TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (space, digest),
    UNIQUE (space, folded)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pseudonyms_by_folded_digest ON pseudonyms (space, folded_digest);
"""


class PseudonymStoreError(AnonymizationError):
    """The pseudonym store cannot be used: unreadable, unsafe, another key's, or busy."""


def default_store_path(key_path: Path) -> Path:
    """``KEYFILE.pseudonyms.sqlite`` beside the key file."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.name + STORE_SUFFIX)


@dataclass(frozen=True)
class StoreState:
    """Which store, and how far into its history, a release's pseudonyms come from.

    Attributes
    ----------
    store_id : str
        32 random hex characters, fixed when the store is created.
    generation : int
        Commits that added pseudonyms so far (0: none yet).
    token : str
        Random hex chosen with that generation; a copy of the store that went its own
        way since has another token for the same generation number.
    """

    store_id: str
    generation: int
    token: str

    def as_manifest(self) -> dict[str, Any]:
        """The manifest's ``pseudonym_store`` field."""
        return {"id": self.store_id, "generation": self.generation, "token": self.token}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Store:
    """A pseudonym store file (or, with ``path=None``, one in memory for a single run).

    Parameters
    ----------
    path : Path | None
        The SQLite file; created on the first :meth:`session` if absent. None: a store in
        memory, empty at the start of each session (one release's pseudonyms only).
    key : SecretKey
        The HMAC key; the store records its ``key_id`` and refuses any other key.
    lock_timeout : float
        Seconds a session waits for another run's claims to commit.
    """

    def __init__(self, path: Path | None, key: SecretKey, lock_timeout: float = LOCK_TIMEOUT_S):
        self.path = None if path is None else Path(path)
        self.key = key
        self.lock_timeout = lock_timeout
        self._recorded: StoreState | None = None
        self._committing: Future[StoreState] | None = None

    @property
    def recorded(self) -> StoreState | None:
        """The store's state after the last session's commit (None before any); waits
        for a commit still running in the background.

        Raises
        ------
        PseudonymStoreError
            That background commit failed (nothing of the session was kept).
        """
        if self._committing is not None:
            committing, self._committing = self._committing, None
            self._recorded = committing.result()
        return self._recorded

    def __repr__(self) -> str:
        return f"Store({str(self.path) if self.path else ':memory:'!r})"

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "(in memory)"

    # -- opening -------------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self.path is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            if create:
                try:
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise PseudonymStoreError(
                        f"{self.path}: cannot create the pseudonym store ({exc.strerror}); "
                        "name a writable place with --pseudonym-store"
                    ) from None
            try:
                st = self.path.stat()
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(st.st_mode):
                raise PseudonymStoreError(f"{self.path}: the pseudonym store is not a file")
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise PseudonymStoreError(
                    f"{self.path}: pseudonym store is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {self.path}"
                )
            try:
                # One thread at a time uses it; a background commit runs on another.
                db = sqlite3.connect(
                    self.path, timeout=self.lock_timeout, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
            except sqlite3.Error as exc:
                raise PseudonymStoreError(f"{self.path}: cannot open ({exc})") from None
        try:
            try:
                db.execute("PRAGMA foreign_keys = ON")
                db.execute("PRAGMA temp_store = MEMORY")
                db.execute("PRAGMA cache_size = -65536")  # at most 64 MiB of pages
            except sqlite3.DatabaseError as exc:
                raise PseudonymStoreError(f"{self.name}: not a pseudonym store ({exc})") from None
            self._begin(db)
            try:
                self._init(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _begin(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise PseudonymStoreError(
                    f"{self.name}: pseudonym store is in use by another run (waited "
                    f"{self.lock_timeout:g} s for it to finish claiming); run again when it "
                    "ends"
                ) from None
            raise PseudonymStoreError(f"{self.name}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise PseudonymStoreError(f"{self.name}: not a pseudonym store ({exc})") from None

    def _init(self, db: sqlite3.Connection) -> None:
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise PseudonymStoreError(f"{self.name}: not a pseudonym store ({exc})") from None
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if not meta:
            meta = {
                "format": STORE_FORMAT,
                "version": str(STORE_VERSION),
                "store_id": secrets.token_hex(16),
                "key_id": self.key.key_id,
                "created_at": _now(),
            }
            db.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", meta.items())
            db.execute(
                "INSERT INTO generations (generation, token, created_at, added) VALUES (0, ?, ?, 0)",
                (secrets.token_hex(16), meta["created_at"]),
            )
        if meta.get("format") != STORE_FORMAT:
            raise PseudonymStoreError(
                f"{self.name}: not a pseudonym store (format {meta.get('format')!r})"
            )
        if meta.get("version") != str(STORE_VERSION):
            raise PseudonymStoreError(
                f"{self.name}: unsupported pseudonym store version {meta.get('version')!r}"
            )
        if meta.get("key_id") != self.key.key_id:
            raise PseudonymStoreError(
                f"{self.name}: pseudonym store of key {meta.get('key_id')}, this run's key is "
                f"{self.key.key_id}; each key has its own store (a new key starts a new one: "
                "pass another --pseudonym-store)"
            )

    @staticmethod
    def _state(db: sqlite3.Connection) -> StoreState:
        (store_id,) = db.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()
        generation, token = db.execute(
            "SELECT generation, token FROM generations ORDER BY generation DESC LIMIT 1"
        ).fetchone()
        return StoreState(store_id, generation, token)

    # -- reading -------------------------------------------------------------------------
    def state(self) -> StoreState | None:
        """The store's id and latest generation; None if the file does not exist yet."""
        if self.path is None:
            return None
        db = self._connect(create=False)
        if db is None:
            return None
        try:
            return self._state(db)
        finally:
            db.close()

    def holds(self, record: dict[str, Any]) -> bool:
        """Whether this store is the one, at or past the generation, a manifest records.

        ``record`` is a manifest's ``pseudonym_store`` (``id``, ``generation``, ``token``).
        """
        if self.path is None:
            return False
        db = self._connect(create=False)
        if db is None:
            return False
        try:
            if self._state(db).store_id != record.get("id"):
                return False
            row = db.execute(
                "SELECT token FROM generations WHERE generation = ?", (record.get("generation"),)
            ).fetchone()
            return row is not None and row[0] == record.get("token")
        finally:
            db.close()

    # -- claiming ------------------------------------------------------------------------
    @contextmanager
    def session(self, commit_in_background: bool = False) -> Iterator[Session]:
        """One transaction that looks up and claims pseudonyms; committed on success.

        Sets :attr:`recorded` to the store's state after the commit (a new generation
        when the session added pseudonyms).

        Parameters
        ----------
        commit_in_background : bool
            Write the claims and commit on a thread of their own, so that the caller goes
            on at once (the store stays locked until then); :attr:`recorded` waits for it
            and raises what it raised. The caller must read :attr:`recorded` before it
            publishes anything that relies on the claims.

        Raises
        ------
        PseudonymStoreError
            The store cannot be created or read, is not a store, belongs to another key,
            is readable by group or others, or another run held it past ``lock_timeout``.
        """
        db = self._connect(create=True)
        assert db is not None
        try:
            self._begin(db)
            session = Session(db, self, self._state(db).generation + 1)
            try:
                yield session
            except BaseException:
                self._rollback(db)
                raise
        except BaseException:
            db.close()
            raise
        if commit_in_background and self.path is not None:
            pool = ThreadPoolExecutor(1, thread_name_prefix="privtrain-pseudonym-commit")
            self._committing = pool.submit(self._commit, db, session)
            pool.shutdown(wait=False)
        else:
            self._recorded = self._commit(db, session)

    def _commit(self, db: sqlite3.Connection, session: Session) -> StoreState:
        """Write the session's claims, open its generation, commit, close the connection."""
        try:
            if self.path is not None:
                session.flush()
            if session.added:
                db.execute(
                    "INSERT INTO generations (generation, token, created_at, added) "
                    "VALUES (?, ?, ?, ?)",
                    (session.generation, secrets.token_hex(16), _now(), session.added),
                )
            state = self._state(db)
            db.execute("COMMIT")
            return state
        except sqlite3.Error as exc:
            self._rollback(db)
            raise PseudonymStoreError(
                f"{self.name}: cannot record this run's pseudonyms ({exc}); the store is "
                "as it was"
            ) from None
        except BaseException:
            self._rollback(db)
            raise
        finally:
            db.close()

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolls back what is not committed when the connection closes


class Session:
    """The open claiming transaction of one run (see :meth:`Store.session`).

    Claims are buffered per space and written before the space is read again and at
    the commit (a store in memory, discarded after the session, skips that last write).
    """

    def __init__(self, db: sqlite3.Connection, store: Store, generation: int) -> None:
        self.db = db
        self.store = store
        self.generation = generation
        self.added = 0
        # Per column: values of this file whose real (case-folded) text is the pseudonym
        # of another value of this file, handed out in an earlier release.
        self.clashes: dict[str, int] = {}
        self._empty: dict[int, bool] = {}
        self._unwritten: dict[int, list[tuple[bytes, bytes, str, str]]] = {}
        db.execute("CREATE TEMP TABLE IF NOT EXISTS probe (i INTEGER PRIMARY KEY, a, b)")

    def space(self, column: str, provider: str, locale: str) -> int:
        """The id of a column's pseudonym space (created on first use)."""
        self.db.execute(
            "INSERT OR IGNORE INTO spaces (column_name, provider, locale) VALUES (?, ?, ?)",
            (column, provider, locale),
        )
        (space,) = self.db.execute(
            "SELECT space FROM spaces WHERE column_name = ? AND provider = ? AND locale = ?",
            (column, provider, locale),
        ).fetchone()
        return int(space)

    def is_empty(self, space: int) -> bool:
        """Whether the space holds no pseudonym yet (a first release under the key)."""
        return self._is_empty(space)

    def _is_empty(self, space: int) -> bool:
        self._flush(space)
        if space not in self._empty:
            (held,) = self.db.execute(
                "SELECT EXISTS (SELECT 1 FROM pseudonyms WHERE space = ?)", (space,)
            ).fetchone()
            self._empty[space] = not held
        return self._empty[space]

    def size(self, space: int) -> int:
        """Pseudonyms the space holds."""
        self._flush(space)
        (n,) = self.db.execute(
            "SELECT count(*) FROM pseudonyms WHERE space = ?", (space,)
        ).fetchone()
        return int(n)

    def _probe(self, rows: Iterable[tuple[int, Any, Any]]) -> None:
        self.db.execute("DELETE FROM temp.probe")
        self.db.executemany("INSERT INTO temp.probe (i, a, b) VALUES (?, ?, ?)", rows)

    def known(self, space: int, digests: list[bytes]) -> list[str | None]:
        """The pseudonym already held for each value digest, None for a new value."""
        out: list[str | None] = [None] * len(digests)
        if self._is_empty(space):
            return out
        self._probe((i, d, None) for i, d in enumerate(digests))
        for i, pseudonym in self.db.execute(
            "SELECT q.i, p.pseudonym FROM temp.probe q JOIN pseudonyms p "
            "ON p.space = ? AND p.digest = q.a",
            (space,),
        ):
            out[i] = pseudonym
        return out

    def taken(self, space: int, folded: list[str], folded_digests: list[bytes]) -> list[bool]:
        """Whether each candidate (case-folded, and its keyed digest) is already a
        pseudonym of the space, or the real value of someone the space holds."""
        out = [False] * len(folded)
        if self._is_empty(space):
            return out
        self._probe(zip(range(len(folded)), folded, folded_digests, strict=True))
        for (i,) in self.db.execute(
            "SELECT q.i FROM temp.probe q WHERE "
            "EXISTS (SELECT 1 FROM pseudonyms p WHERE p.space = ?1 AND p.folded = q.a) OR "
            "EXISTS (SELECT 1 FROM pseudonyms p WHERE p.space = ?1 AND p.folded_digest = q.b)",
            (space,),
        ):
            out[i] = True
        return out

    def add(self, space: int, rows: list[tuple[bytes, bytes, str, str]]) -> None:
        """Claim (digest, folded_digest, pseudonym, folded pseudonym) rows for the space."""
        self._unwritten.setdefault(space, []).extend(rows)
        self.added += len(rows)

    def _flush(self, space: int) -> None:
        rows = self._unwritten.pop(space, None)
        if not rows:
            return
        try:
            self.db.executemany(
                "INSERT INTO pseudonyms (space, digest, folded_digest, pseudonym, folded, "
                "generation) VALUES (?, ?, ?, ?, ?, ?)",
                ((space, *row, self.generation) for row in rows),
            )
        except sqlite3.IntegrityError as exc:
            raise PseudonymStoreError(
                f"{self.store.name}: internal check failed: a pseudonym claim broke the "
                f"store's constraints ({exc}); nothing was written"
            ) from None
        self._empty[space] = False

    def flush(self) -> None:
        """Write every buffered claim (raises on a broken constraint: nothing is kept)."""
        for space in list(self._unwritten):
            self._flush(space)
