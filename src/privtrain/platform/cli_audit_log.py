"""``privtrain audit-log list | verify | sign``: who did what, and whether the record still holds.

With ``--home`` / ``--db-url`` the command reads the server's database directly (the
operator, on the server's machine); without, it asks the running server as an admin
(``--server``, ``--bundle``). ``verify`` checks the chain itself in either case, with
the CA certificate (the operator's ``--pki``, or the admin's bundle): the server's word
is not taken for it. It exits 1 naming the first bad entry.
(``privtrain audit run`` is something else: the privacy audit of a training run.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from privtrain.platform.cli_args import (
    DEFAULT_PKI,
    add_connection_args,
    add_home_args,
    connect,
    emit,
    is_local,
    iso_time,
    message_dict,
    open_home_database,
)


def _entries_line(e: Any) -> str:
    who = f"{e.subject} ({e.serial[:12]})" if e.serial else e.subject
    line = (f"{e.seq:>6} {e.time.ToDatetime():%Y-%m-%d %H:%M:%S} {who:<32} {e.role:<10} "
            f"{e.action:<22} {e.target}  {e.outcome}")
    return line + (f": {e.detail}" if e.detail else "")


def _list(args: argparse.Namespace) -> int:
    if is_local(args):
        from privtrain.platform.convert_admin import audit_entry_to_proto

        with open_home_database(args) as db:
            entries = [audit_entry_to_proto(e) for e in db.audit_log.entries(
                since=args.since, limit=args.limit)]
    else:
        with connect(args) as client:
            entries = client.audit_log(since=args.since)[0][:args.limit]
    emit(args, [message_dict(e) for e in entries],
         "\n".join(_entries_line(e) for e in entries) or "no entries")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from privtrain.platform.audit_chain import verify_chain
    from privtrain.secure_transport.pki import PkiLayout, load_certificate

    # Signatures, then the head, then the entries up to it: a consistent view while the
    # server appends (each is written after what it covers).
    if is_local(args):
        with open_home_database(args) as db:
            signed = db.audit_log.signatures()
            head = db.audit_log.head()
            report = verify_chain(db.audit_log.all_entries(through_seq=head[0]), signed, head,
                                  load_certificate(PkiLayout(args.pki).ca_cert))
    else:
        from privtrain.platform.convert_admin import audit_entry_from_proto, signed_head_from_proto

        with connect(args) as client:
            signatures = client.audit_signatures()
            entries, head_seq, head_hash = client.audit_log()
            ca = load_certificate(client.bundle.ca_cert)
        report = verify_chain((audit_entry_from_proto(e) for e in entries),
                              [signed_head_from_proto(s) for s in signatures],
                              (head_seq, head_hash), ca)
    figures = {"ok": report.ok, "entries": report.entries, "last_seq": report.last_seq,
               "signatures": report.signatures, "last_signed_seq": report.last_signed_seq,
               "first_bad": report.first_bad, "problem": report.problem}
    if not report.ok:
        if args.json:
            print(json.dumps(figures))
        print(f"error: audit log check failed: {report.problem}", file=sys.stderr)
        return 1
    emit(args, figures,
         f"audit log verified: {report.entries} entries chained to the head (entry "
         f"{report.last_seq}); {report.signatures} signed head(s), the last covering entry "
         f"{report.last_signed_seq}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    if is_local(args):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from privtrain.errors import InvalidInput
        from privtrain.platform.audit_trail import AuditTrail
        from privtrain.secure_transport.pki import PkiLayout, load_certificate, load_private_key

        layout = PkiLayout(args.pki)
        key = load_private_key(layout.key("signing"))
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput(f"{layout.key('signing')} is not an Ed25519 key")
        pem = load_certificate(layout.cert("signing")).public_bytes(serialization.Encoding.PEM)
        with open_home_database(args) as db:
            signed = AuditTrail(db).sign(key, pem)
        assert signed is not None
        seq, at = signed.seq, signed.signed_at
    else:
        with connect(args) as client:
            reply = client.sign_audit_log()
        seq, at = reply.seq, reply.signed_at.ToDatetime()
    emit(args, {"seq": seq, "signed_at": at.isoformat()},
         f"audit log head signed at entry {seq} ({at:%Y-%m-%d %H:%M:%S} UTC)")
    return 0


def add_audit_log_commands(sub: Any) -> None:
    """Register ``audit-log list | verify | sign`` on ``sub``."""
    log = sub.add_parser("audit-log", help="the hash-chained record of who did what (admin)")
    commands = log.add_subparsers(dest="sub", required=True)
    lst = commands.add_parser("list", help="entries, oldest first")
    lst.add_argument("--since", type=iso_time, default=None,
                     help="only entries from this time on (ISO 8601; UTC unless a zone is given)")
    lst.add_argument("--limit", type=int, default=1000, help="at most this many entries")
    ver = commands.add_parser("verify", help="check the chain, the head and the signed heads; "
                                             "exit 1 naming the first bad entry")
    sig = commands.add_parser("sign", help="sign the head now with the server's signing key")
    for parser, func in ((lst, _list), (ver, _verify), (sig, _sign)):
        add_home_args(parser, required=False)
        add_connection_args(parser)
        if parser is not lst:
            parser.add_argument("--pki", type=Path, default=DEFAULT_PKI,
                                help="with --home: the operator's folder (CA certificate, signing key)")
        parser.set_defaults(func=func)
