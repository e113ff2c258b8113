"""``inspect``'s second look: run the proposal, measure what it releases, and fix it.

Each column's proposal (:mod:`privtrain.anonymize.inspect_table`) comes from its own
name and values. What a kept column reveals together with the others is only seen on the
release, so the proposal is run, without writing anything: the real two passes of
:class:`~privtrain.anonymize.stream.Streamer` on the input, with a throwaway key (only
shifted dates and noise depend on it). Then, for every kept column an attacker could
know (:func:`privtrain.anonymize.released_risk.attacker_known`):

* a proxy of a quasi-identifier (:mod:`privtrain.anonymize.proxies`) becomes a
  quasi-identifier itself (bands for whole numbers, a hierarchy for up to 64 categories),
  or is dropped when it merely repeats one (a one-to-one code) or cannot be generalized;
* a column that leaves more than 5 % of the rows unique together with the
  quasi-identifiers at the levels the search picks (``run``'s threshold) is generalized
  as a quasi-identifier the same way, or dropped (dates, free categories, text).

A new quasi-identifier multiplies the generalization lattice by its levels: a proxy
becomes one whatever that costs, a column that only singles rows out only while the
lattice stays within :data:`MAX_LATTICE` nodes (dropped otherwise), least unique first. The proposal is run
again after each change until nothing is flagged, so what ``inspect`` writes passes
``run``'s checks. Each changed column's comment gives the measured evidence.
"""

from __future__ import annotations

import secrets
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from privtrain.anonymize.chunks import DEFAULT_CHUNK_ROWS, ChunkReader
from privtrain.anonymize.keys import SecretKey, key_id_of
from privtrain.anonymize.policy import Policy, load_policy
from privtrain.anonymize.proxies import FUNCTION_SHARE, PairMeasures
from privtrain.anonymize.released_risk import DEFAULT_THRESHOLD, figures
from privtrain.errors import PrivtrainError

MAX_LATTICE = 1_000
# Shifted dates and noise depend on the key: the real run's may differ a little from the
# throwaway key's, so they are flagged a little earlier.
_KEYED = frozenset({"date_shift", "noise"})
_KEYED_MARGIN = 0.8
MAX_CATEGORIES = 64


class _NullWriter:
    """Stands in for the output: counts rows, writes nothing."""

    rows = 0

    def write_arrow(self, columns: dict[str, Any], like: Any) -> None:
        first = next(iter(columns.values()), None)
        self.rows += 0 if first is None else len(first)


def _dry_run(input_path: Path, encoding: str | None, policy: Policy) -> Any:
    """The proposal's two passes on the input, nothing written; the Streamer after them."""
    from privtrain.anonymize.stream import Streamer

    secret = secrets.token_bytes(32)
    key = SecretKey(key_id_of(secret), secret)
    reader = ChunkReader(input_path, encoding, policy.missing_values)
    streamer = Streamer(reader, policy, key, DEFAULT_CHUNK_ROWS, lambda *_: None)
    streamer.scan()
    if streamer.rows == 0:
        return None
    streamer.search()
    streamer.write(_NullWriter())  # type: ignore[arg-type]
    return streamer


def _load(text: str) -> Policy:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "proposal.toml"
        path.write_text(text, encoding="utf-8")
        return load_policy(path)


def _lattice_size(policy: Policy) -> int:
    size = 1
    for c in policy.columns.values():
        if c.operator != "generalize":
            continue
        if c.intervals is not None:
            size *= len(c.intervals) + 2
        elif c.hierarchy is not None:
            size *= len(next(iter(c.hierarchy.values()))) + 1
        else:  # dates, ZIP codes
            size *= 4
    return size


def _generalized_body(name: str, values: pd.Series, kind: str, k: int) -> list[str] | None:
    """The keys that make a column a quasi-identifier (with the public-bounds ``TO CONFIRM``
    comments), or None when it cannot be one."""
    from privtrain.anonymize.inspect_table import _generalize_numeric, _hierarchy
    from privtrain.anonymize.public_bounds import bounds_comment

    if kind == "number":
        bands = _generalize_numeric(name, values)
        if bands is None:
            return None
        return ['operator = "generalize"', 'type = "numeric"', *bounds_comment(), *bands]
    if kind == "category":
        distinct = values.astype("string").str.strip().replace("", pd.NA).dropna().nunique()
        if distinct > MAX_CATEGORIES:
            return None
        comment, keys = _hierarchy(values, k)
        return ['operator = "generalize"', 'type = "categorical"', *comment, *keys]
    return None


def _repeats(measures: dict[str, PairMeasures]) -> str | None:
    """The QI a column is a one-to-one code of (each fixes the other), if any."""
    for q, m in measures.items():
        if m.determines >= 0.99 and m.determined_by >= FUNCTION_SHARE:
            return q
    return None


def _rewrite(proposal: Any, evidence: list[str], role: str, body: list[str]) -> Any:
    from privtrain.anonymize.inspect_table import _key

    lines = [proposal.lines[0], *evidence, f"[columns.{_key(proposal.name)}]",
             f'role = "{role}"', *body]  # fmt: skip
    return replace(proposal, role=role, lines=lines)


def review_proposals(
    input_path: Path,
    encoding: str | None,
    df: pd.DataFrame,
    proposals: list[Any],
    k: int,
    source: Path,
) -> list[Any]:
    """The proposals, with proxies and columns that single rows out made quasi-identifiers
    or dropped (see the module's docstring). Unchanged when the proposal cannot be run
    (``run`` would then say why)."""
    from privtrain.anonymize.inspect_table import policy_text

    by_name = {p.name: i for i, p in enumerate(proposals)}
    proposals = list(proposals)
    for _ in range(len(proposals) + 1):
        try:
            policy = _load(policy_text(proposals, source, k))
            if not policy.quasi_identifiers:
                return proposals
            streamer = _dry_run(Path(input_path), encoding, policy)
        except PrivtrainError:
            return proposals
        if streamer is None or streamer.release is None:
            return proposals
        changes = _changes(policy, streamer, df, proposals, by_name)
        if not changes:
            return proposals
        lattice = _lattice_size(policy)
        for name, (why, measures) in changes.items():
            i = by_name[name]
            p = proposals[i]
            repeat = _repeats(measures) if measures else None
            body = None if repeat else _generalized_body(name, df[name], p.kind, k)
            if body is not None:
                # A proxy is a quasi-identifier whatever it costs; a column that only
                # singles rows out becomes one while the lattice stays small.
                grown = lattice * _levels(body)
                if grown > MAX_LATTICE and not measures:
                    body = None
                else:
                    lattice = grown
            if body is not None:
                tail = "# So it is a quasi-identifier: generalized with the others until k holds."
                proposals[i] = _rewrite(p, [*why, tail], "quasi_identifier", body)
            else:
                if repeat:
                    tail = f"# It repeats {repeat} (a one-to-one code of it): dropped."
                else:
                    tail = (
                        "# Dropped: to keep it, generalize it as a quasi-identifier, or accept "
                        "it with a\n# reason under [risk.accept] (recorded in the manifest)."
                    )  # fmt: skip
                    if not measures and p.kind in ("number", "category"):
                        tail += f"\n# (As a QI it would take the lattice past {MAX_LATTICE} nodes.)"
                proposals[i] = _rewrite(p, [*why, tail], p.role, ['operator = "drop"'])
    return proposals


def _levels(body: list[str]) -> int:
    for line in body:
        if line.startswith("intervals = "):
            return line.count(",") + 3  # raw, each width, "*"
    return 3  # raw, pooled, "*"


def _changes(
    policy: Policy, streamer: Any, df: pd.DataFrame, proposals: list[Any], by_name: dict[str, int]
) -> dict[str, tuple[list[str], dict[str, PairMeasures]]]:
    """Columns to change: name -> (comment lines with the evidence, proxy measures)."""
    out: dict[str, tuple[list[str], dict[str, PairMeasures]]] = {}
    for name, measures in streamer.proxies.items():
        if name not in by_name:
            continue
        lines = [f"# Measured on the values: {m.evidence(name, q)}." for q, m in measures.items()]
        out[name] = (_wrapped(lines), dict(measures))
    release = streamer.release
    summaries = release.column_summaries()
    measured = {
        name: figures(summaries[name])
        for name in release.known
        if name not in out and name in by_name
    }
    # The least unique first: they are the likeliest to keep some detail as a QI.
    for name, fig in sorted(measured.items(), key=lambda kv: kv[1]["share_unique"]):
        share = fig["share_unique"]
        limit = DEFAULT_THRESHOLD * (
            _KEYED_MARGIN if policy.columns[name].operator in _KEYED else 1.0
        )
        if share > limit:
            line = (
                "# Together with the quasi-identifiers (at the levels the search picks) it "
                f"leaves {fig['unique_records']} of {fig['records']} rows ({share:.1%}) unique, "
                "over the 5 % that `run` accepts: whoever knows it singles them out."
            )
            out[name] = (_wrapped([line]), {})
    return out


def _wrapped(lines: list[str], width: int = 88) -> list[str]:
    out = []
    for line in lines:
        words = line.removeprefix("# ").split()
        current = "#"
        for word in words:
            if len(current) + 1 + len(word) > width and current != "#":
                out.append(current)
                current = "#"
            current += " " + word
        out.append(current)
    return out
