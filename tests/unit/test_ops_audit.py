"""The dependency audit's verdict (scripts/audit.sh) on pip-audit reports of each kind."""

from __future__ import annotations

import json
import subprocess
import sys

from streams.ops.audit import UNREACHABLE, VULNERABLE, verdict

CLEAN = {"name": "requests", "version": "2.32.3", "vulns": []}
EDITABLE = {"name": "aifleet", "skip_reason": "distribution marked as editable"}


def _not_found(name: str) -> dict[str, str]:
    return {"name": name, "skip_reason": f"Dependency not found on PyPI and could not be audited: {name} (1.0)"}


def test_a_known_vulnerability_fails_the_audit() -> None:
    bad = {"name": "jinja2", "version": "2.10", "vulns": [{"id": "PYSEC-2019-217", "fix_versions": ["2.10.1"]}]}
    result = verdict({"dependencies": [CLEAN, bad, EDITABLE]})
    assert result.exit_code == VULNERABLE
    assert result.lines() == [
        "VULNERABLE jinja2 2.10: PYSEC-2019-217",
        "audited 2 of 3 packages, 1 known vulnerabilities",
    ]


def test_nothing_audited_is_unreachable_not_clean() -> None:
    result = verdict({"dependencies": [EDITABLE, _not_found("aiokafka"), _not_found("faust-streaming")]})
    assert (result.audited, result.exit_code) == (0, UNREACHABLE)


def test_clean_when_some_were_audited_and_none_is_vulnerable() -> None:
    assert verdict({"dependencies": [CLEAN, _not_found("local-wheel")]}).exit_code == 0


def test_the_module_reads_stdin_and_exits_with_the_verdict() -> None:
    bad = {"name": "x", "version": "1", "vulns": [{"id": "GHSA-1"}]}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.ops.audit"],
        input=json.dumps({"dependencies": [bad]}),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == VULNERABLE and "VULNERABLE x 1: GHSA-1" in proc.stdout
