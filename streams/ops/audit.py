"""The dependency audit's verdict, from ``pip-audit --format json`` on standard input (``scripts/audit.sh``).

Exit status: 0 audited with no known vulnerability, 2 a known vulnerability (the audit fails), 3 nothing
could be audited: every package came back "not found", which is what pip-audit reports when the advisory
service (PyPI's per-release JSON API) cannot be reached, as on build machines that reach only the package
index. ``scripts/audit.sh`` prints that as SKIPPED, never as a pass.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

VULNERABLE, UNREACHABLE = 2, 3


@dataclass(frozen=True)
class AuditVerdict:
    """What one pip-audit report says."""

    packages: int
    audited: int
    vulnerabilities: list[tuple[str, str, str]] = field(default_factory=list)  # (name, version, advisory id)

    @property
    def exit_code(self) -> int:
        """0 clean, 2 vulnerable, 3 nothing audited."""
        if self.vulnerabilities:
            return VULNERABLE
        return UNREACHABLE if self.audited == 0 else 0

    def lines(self) -> list[str]:
        """One line per vulnerability, then the counts."""
        out = [f"VULNERABLE {name} {version}: {vid}" for name, version, vid in self.vulnerabilities]
        out.append(
            f"audited {self.audited} of {self.packages} packages, {len(self.vulnerabilities)} known vulnerabilities"
        )
        return out


def verdict(report: dict[str, Any]) -> AuditVerdict:
    """The verdict of a ``pip-audit --format json`` report."""
    deps = report.get("dependencies", [])
    vulns = [(d["name"], d.get("version", "?"), v["id"]) for d in deps for v in d.get("vulns", [])]
    skipped = sum(1 for d in deps if d.get("skip_reason"))
    return AuditVerdict(packages=len(deps), audited=len(deps) - skipped, vulnerabilities=vulns)


def main() -> None:
    """Read the report from stdin, print the verdict, exit with its code."""
    result = verdict(json.load(sys.stdin))
    print("\n".join(result.lines()))
    sys.exit(result.exit_code)


if __name__ == "__main__":
    main()
