"""The CLI: one-line errors, exit codes, JSON output of a real server's records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import AnonymizedAdult, RunningServer, upload_adult

from privtrain.errors import InvalidInput
from privtrain.platform.cli import main, parse_target


@pytest.mark.parametrize(("target", "expected"), [
    ("127.0.0.1:50051", ("127.0.0.1", 50051)),
    ("[::1]:8443", ("::1", 8443)),
    ("training-01.example:443", ("training-01.example", 443)),
])
def test_parse_target_accepts_host_and_port(target: str, expected: tuple[str, int]) -> None:
    """Names, IPv4 and bracketed IPv6 with a port in 1..65535."""
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["127.0.0.1:", "localhost", "[::1]", "127.0.0.1:99999",
                                    "127.0.0.1:abc", ":50051", "::1:50051"])
def test_parse_target_refuses_malformed_values(target: str) -> None:
    """Each malformed --server is refused naming the value and the expected form."""
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        parse_target(target)


def test_bad_server_value_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """No traceback: a single `error:` line on stderr."""
    assert main(["dataset", "list", "--server", "127.0.0.1:"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --server '127.0.0.1:'")
    assert "Traceback" not in err and err.count("\n") == 1


def test_refused_call_prints_status_and_exit_1(running: RunningServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A NOT_FOUND from the server is one line with the status name."""
    code = main(["job", "get", "no-such-job", "--server", running.target,
                 "--bundle", str(running.bundles["trainer"].directory)])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: NOT_FOUND:")


def test_json_output_keeps_64_bit_integers_numeric(running: RunningServer, adult: AnonymizedAdult,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`dataset list --json` gives rows and size_bytes as numbers, as the server stored them
    (to the dataset's owner: a trainer gets only the published counts)."""
    ds = upload_adult(running, adult)
    assert main(["dataset", "list", "--json", "--server", running.target,
                 "--bundle", str(running.bundles["data-owner"].directory)]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["rows"] == ds.rows and isinstance(listed["rows"], int)
    assert listed["size_bytes"] == ds.size_bytes


def test_cli_runs_as_a_module_and_prints_help() -> None:
    """`python -m privtrain.platform.cli --help` lists every command."""
    out = subprocess.run([sys.executable, "-m", "privtrain.platform.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("certs", "db", "server", "anonymize", "dataset", "job", "alerts", "audit-log"):
        assert command in out


@pytest.mark.parametrize("argv", [["job", "submit", "--noise-step-epochs", "0"], ["bogus"],
                                  ["dataset", "upload"]])
def test_argument_mistakes_are_one_error_line_and_exit_2(argv: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: privtrain") and err.count("\n") == 1, err


@pytest.mark.parametrize("source", ["adult", "compas"])
def test_dataset_fetch_writes_the_verified_raw_table(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user gets the real tables to anonymize without the demo, readable by them alone;
    an existing file is kept unless --force."""
    from privtrain.datasets import fetch_adult, fetch_compas

    out = tmp_path / f"{source}.csv"
    assert main(["dataset", "fetch", "--source", source, "--out", str(out)]) == 0
    expected = (fetch_adult() if source == "adult" else fetch_compas()).read_bytes()
    assert out.read_bytes() == expected
    assert (out.stat().st_mode & 0o777) == 0o600  # raw personal data: the owner's alone
    out.write_text("mine")
    assert main(["dataset", "fetch", "--source", source, "--out", str(out)]) == 2
    assert out.read_text() == "mine"
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["dataset", "fetch", "--source", source, "--out", str(out), "--force"]) == 0
    assert out.read_bytes() == expected
