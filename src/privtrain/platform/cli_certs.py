"""``privtrain certs ...``: the operator's CA, people's bundles, revocation.

``init`` and ``issue`` / ``renew`` run on the operator's machine, next to the CA key
(``--pki``) and the server's database (``--home`` / ``--db-url``: every certificate
issued is recorded there, and in the audit log). ``list`` and ``revoke`` work on that
database too, or, without ``--home`` / ``--db-url``, ask the running server as an admin
(``--server``, ``--bundle``). A revocation takes effect on the certificate's next call
either way, without a restart.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from privtrain.platform.cli_args import (
    DEFAULT_PKI,
    add_connection_args,
    add_home_args,
    connect,
    emit,
    int_at_least,
    is_local,
    message_dict,
    open_home_database,
)


def _certs_init(args: argparse.Namespace) -> int:
    from privtrain.secure_transport.pki import init_pki

    names = args.server_name or ("localhost", "127.0.0.1", "::1")
    layout = init_pki(args.dir, server_names=names, overwrite=args.overwrite)
    print(f"CA in {layout.ca_dir} (its key never leaves this folder); server and signing "
          f"certificates in {layout.directory}. Issue each person a bundle with `privtrain certs "
          f"issue --role ROLE --name NAME --out DIR`.")
    return 0


def _issue(args: argparse.Namespace, *, renewal: bool) -> int:
    from privtrain.platform import people
    from privtrain.platform.audit_trail import Actor, AuditTrail, audited
    from privtrain.secure_transport.pki import PkiLayout
    from privtrain.secure_transport.roles import Role

    with open_home_database(args) as db:
        action = "certificate.renew" if renewal else "certificate.issue"
        with audited(AuditTrail(db), Actor.local_operator(), action, f"person {args.name}") as note:
            cert = people.issue_person(db, PkiLayout(args.pki), name=args.name, out=args.out,
                                       role=None if renewal else Role(args.role), days=args.days,
                                       overwrite=args.force)
            note.target = f"certificate {cert.serial} ({cert.common_name}, {cert.role})"
            note.detail = f"valid until {cert.not_after:%Y-%m-%d %H:%M} UTC"
    emit(args, {"serial": cert.serial, "name": cert.common_name, "role": cert.role,
                "not_after": cert.not_after.isoformat(), "bundle": str(args.out)},
         f"issued certificate {cert.serial} to {cert.common_name} ({cert.role}), valid until "
         f"{cert.not_after:%Y-%m-%d %H:%M} UTC\n"
         f"bundle {args.out}/: client.key (their private key, 0600), client.pem (their "
         f"certificate), ca.pem (the CA certificate); hand it to {cert.common_name} alone")
    return 0


def _certs_list(args: argparse.Namespace) -> int:
    if is_local(args):
        from datetime import UTC, datetime

        from privtrain.platform.convert_admin import certificate_to_proto

        with open_home_database(args) as db:
            found = db.certificates.of_person(args.name) if args.name else db.certificates.list()
        now = datetime.now(UTC)
        certs = [certificate_to_proto(c, now) for c in found]
    else:
        with connect(args) as client:
            certs = client.list_certificates(args.name or "")
    lines = [f"{c.name:<20} {c.role:<10} {c.serial:<40} {c.status:<7} until "
             f"{c.not_after.ToDatetime():%Y-%m-%d %H:%M}" for c in certs]
    emit(args, [message_dict(c) for c in certs], "\n".join(lines) or "no certificates issued")
    return 0


def _certs_revoke(args: argparse.Namespace) -> int:
    if is_local(args):
        from privtrain.platform import people
        from privtrain.platform.audit_trail import Actor, AuditTrail, audited
        from privtrain.secure_transport.pki import PkiLayout

        actor = Actor.local_operator()
        named = f"certificate {args.serial}" if args.serial else f"person {args.name}"
        with open_home_database(args) as db:
            with audited(AuditTrail(db), actor, "certificate.revoke", named) as note:
                revoked = people.revoke(db, serial=args.serial or "", name=args.name or "",
                                        by=actor.subject, reason=args.reason)
                note.target = f"{named}: revoked {', '.join(c.serial for c in revoked)}"
            published = people.publish_crl(db, PkiLayout(args.pki))
        done = [(c.serial, c.common_name) for c in revoked]
    else:
        with connect(args) as client:
            reply = client.revoke_certificate(serial=args.serial or "", name=args.name or "",
                                              reason=args.reason)
        done, published = [(c.serial, c.name) for c in reply.revoked], reply.crl_published
    crl = ("the CRL is published again" if published
           else "the CRL was not published (the CA key is not readable there)")
    emit(args, {"revoked": [{"serial": s, "name": n} for s, n in done], "crl_published": published},
         "\n".join(f"revoked certificate {s} of {n}" for s, n in done)
         + f"; its next call is refused; {crl}")
    return 0


def add_certs_commands(sub: Any) -> None:
    """Register ``certs init | issue | renew | list | revoke`` on ``sub``."""
    certs = sub.add_parser("certs", help="the CA and people's certificates").add_subparsers(
        dest="sub", required=True)
    init = certs.add_parser("init", help="make the CA and the server's certificates")
    init.add_argument("--dir", type=Path, default=DEFAULT_PKI,
                      help="the operator's folder (0700; the CA key goes to DIR/ca/)")
    init.add_argument("--server-name", action="append", default=None,
                      help="DNS name or IP the server is reached at (repeatable; replaces the "
                           "default localhost, 127.0.0.1, ::1)")
    init.add_argument("--overwrite", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_certs_init)

    from privtrain.secure_transport.issuing import DEFAULT_DAYS, MAX_DAYS
    from privtrain.secure_transport.pki import CLIENT_ROLES

    for name, renewal, help_text in [
        ("issue", False, "issue a person a certificate: writes their bundle (key, certificate, CA)"),
        ("renew", True, "give a person already issued one a new certificate and key"),
    ]:
        p = certs.add_parser(name, help=help_text)
        if not renewal:
            p.add_argument("--role", required=True, choices=[r.value for r in CLIENT_ROLES])
        p.add_argument("--name", required=True,
                       help="the person (lower-case letters, digits, '.', '_', '-'); their identity")
        p.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
        p.add_argument("--days", type=int_at_least(1, MAX_DAYS), default=DEFAULT_DAYS,
                       help="lifetime of the certificate in days")
        p.add_argument("--force", action="store_true", help="replace a bundle already in --out")
        p.add_argument("--pki", type=Path, default=DEFAULT_PKI,
                       help="the operator's folder made by `certs init` (env PRIVTRAIN_PKI)")
        add_home_args(p, required=True)
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        p.set_defaults(func=lambda args, renewal=renewal: _issue(args, renewal=renewal))

    lst = certs.add_parser("list", help="people's certificates and their status")
    lst.add_argument("--name", default=None, help="only this person's")
    add_home_args(lst, required=False)
    add_connection_args(lst)
    lst.set_defaults(func=_certs_list)

    rev = certs.add_parser("revoke", help="revoke a certificate: its next call is refused")
    which = rev.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", default=None, help="every valid certificate of this person")
    which.add_argument("--serial", default=None, help="this certificate (hex, from `certs list`)")
    rev.add_argument("--reason", default="", help="recorded with the revocation")
    rev.add_argument("--pki", type=Path, default=DEFAULT_PKI,
                     help="with --home: the operator's folder, where the CRL is published")
    add_home_args(rev, required=False)
    add_connection_args(rev)
    rev.set_defaults(func=_certs_revoke)
