"""Dependency audit for `make lint`: pip-audit over the installed environment.

    python scripts/audit_deps.py [--strict] [--json PATH]

Fails (exit 1) only on a known vulnerability that has a fixed release to upgrade to.
Vulnerabilities without a fix are listed as warnings (nothing to do but watch them),
and so are packages pip-audit could not look up (not on PyPI, or no vulnerability
data reachable); --strict turns an audit that could check nothing into a failure
(exit 3). Exit 2 when pip-audit itself cannot run. Needs network access to PyPI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Findings:
    fixable: list[str] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    audited: int = 0


def classify(report: dict[str, Any]) -> Findings:
    """Sort pip-audit's JSON report into fixable, unfixable and skipped."""
    findings = Findings()
    for dependency in report.get("dependencies", []):
        name = " ".join(str(dependency[k]) for k in ("name", "version") if k in dependency)
        if dependency.get("skip_reason"):
            findings.skipped.append(name)
            continue
        findings.audited += 1
        for vulnerability in dependency.get("vulns", []):
            fixes = vulnerability.get("fix_versions") or []
            line = f"{name}: {vulnerability.get('id')}"
            if fixes:
                findings.fixable.append(f"{line} (fixed in {', '.join(fixes)})")
            else:
                findings.unfixable.append(f"{line} (no fix released)")
    return findings


def exit_code(findings: Findings, *, strict: bool) -> int:
    if findings.fixable:
        return 1
    if strict and findings.audited == 0:
        return 3
    return 0


def run_pip_audit(output: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--skip-editable",
        "--progress-spinner",
        "off",
        "--format",
        "json",
        "--output",
        str(output),
    ]
    # pip-audit exits 1 when it finds anything; the decision is ours, from the JSON.
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if not output.exists() or not output.read_text().strip():
        raise RuntimeError(f"pip-audit did not run: {result.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="fail when nothing was audited")
    parser.add_argument("--json", type=Path, help="keep pip-audit's JSON report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        output = args.json or Path(scratch) / "pip-audit.json"
        try:
            run_pip_audit(output)
        except RuntimeError as exc:
            print(f"audit_deps: {exc}", file=sys.stderr)
            return 2
        findings = classify(json.loads(output.read_text()))
    total = findings.audited + len(findings.skipped)
    print(f"audit_deps: {findings.audited} of {total} packages audited")
    for line in findings.fixable:
        print(f"  VULNERABLE, upgrade: {line}")
    for line in findings.unfixable:
        print(f"  warning, no fix yet: {line}")
    if findings.skipped:
        print(
            f"  warning: {len(findings.skipped)} packages could not be looked up "
            f"(not on PyPI, or no vulnerability data reachable): "
            + ", ".join(findings.skipped[:10])
            + (" ..." if len(findings.skipped) > 10 else "")
        )
    return exit_code(findings, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
