"""scripts/audit_deps.py: fail on fixable vulnerabilities only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit_deps.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _report(*dependencies: dict) -> dict:
    return {"dependencies": list(dependencies), "fixes": []}


CLEAN = {"name": "fastapi", "version": "1.0", "vulns": []}
FIXABLE = {
    "name": "jinja2",
    "version": "2.4.1",
    "vulns": [{"id": "PYSEC-2019-217", "fix_versions": ["2.10.1"]}],
}
UNFIXABLE = {"name": "oldlib", "version": "0.1", "vulns": [{"id": "GHSA-xxxx", "fix_versions": []}]}
SKIPPED = {"name": "private", "skip_reason": "Dependency not found on PyPI"}


@pytest.mark.parametrize(
    ("dependencies", "strict", "code"),
    [
        ((CLEAN,), False, 0),
        ((CLEAN, UNFIXABLE), False, 0),  # nothing to upgrade to: warn, pass
        ((CLEAN, FIXABLE, UNFIXABLE), False, 1),  # an upgrade exists: fail
        ((SKIPPED,), False, 0),
        ((SKIPPED,), True, 3),  # --strict: an audit that checked nothing fails
        ((CLEAN, SKIPPED), True, 0),
    ],
)
def test_only_fixable_vulnerabilities_fail_the_audit(
    audit: ModuleType, dependencies: tuple[dict, ...], strict: bool, code: int
) -> None:
    findings = audit.classify(_report(*dependencies))
    assert audit.exit_code(findings, strict=strict) == code


def test_findings_name_package_version_and_fix(audit: ModuleType) -> None:
    findings = audit.classify(_report(CLEAN, FIXABLE, UNFIXABLE, SKIPPED))
    assert findings.fixable == ["jinja2 2.4.1: PYSEC-2019-217 (fixed in 2.10.1)"]
    assert findings.unfixable == ["oldlib 0.1: GHSA-xxxx (no fix released)"]
    assert findings.skipped == ["private"]
    assert findings.audited == 3
