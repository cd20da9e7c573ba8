"""Every ``ErrorInfo.reason`` the services can produce is documented in docs/errors.md, and docs/errors.md lists no
reason the code no longer produces.

The reasons are read from the code itself (its AST): the first argument of every domain-error constructor
(``FailedPrecondition("EVENT_SOLD_OUT", …)``), the reason of ``InvalidArgument.field(…)`` and
``Violations.raise_if_any(…)``, ``reason=`` keywords and the defaults of ``reason`` parameters, with module-level
constants resolved. ``python -m tests.unit.common.test_error_reasons_documented`` prints them with their code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "errors.md"
CODES = {
    "DomainError": "",
    "InvalidArgument": "INVALID_ARGUMENT",
    "NotFound": "NOT_FOUND",
    "PermissionDenied": "PERMISSION_DENIED",
    "Unauthenticated": "UNAUTHENTICATED",
    "AlreadyExists": "ALREADY_EXISTS",
    "FailedPrecondition": "FAILED_PRECONDITION",
    "Aborted": "ABORTED",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "Unavailable": "UNAVAILABLE",
}
_REASON = re.compile(r"[A-Z][A-Z0-9_]+")


def _constants(tree: ast.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
            out[target.id] = value.value
    return out


def _string(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def reasons_in_code() -> dict[str, set[str]]:
    """reason → the gRPC codes it is raised with ("" when the class alone doesn't say, e.g. a mapped exception)."""
    found: dict[str, set[str]] = {}

    def add(reason: str | None, code: str) -> None:
        if reason and _REASON.fullmatch(reason):
            found.setdefault(reason, set()).add(code)

    for path in sorted((ROOT / "services").rglob("*.py")):
        if "dev" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text())
        constants = _constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                if name in CODES and node.args:
                    add(_string(node.args[0], constants), CODES[name])
                if name == "field" and owner in CODES and len(node.args) >= 3:
                    add(_string(node.args[2], constants), CODES[owner])
                if name == "raise_if_any" and node.args:
                    add(_string(node.args[0], constants), "INVALID_ARGUMENT")
                for kw in node.keywords:
                    if kw.arg == "reason":
                        add(_string(kw.value, constants), "")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                positional = [*node.args.posonlyargs, *node.args.args]
                pairs = [
                    *zip(positional[len(positional) - len(node.args.defaults) :], node.args.defaults, strict=True),
                    *zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True),
                ]
                for arg, default in pairs:
                    if arg.arg == "reason":
                        add(_string(default, constants), "INVALID_ARGUMENT")
    return found


def reasons_in_docs() -> set[str]:
    """The reasons docs/errors.md documents: the first cell of each table row under "## Every reason"."""
    text = DOCS.read_text()
    section = text[text.index("## Every reason") :]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_every_reason_in_code_is_documented() -> None:
    missing = sorted(set(reasons_in_code()) - reasons_in_docs())
    assert not missing, f"reasons raised in services/ but not documented in docs/errors.md: {missing}"


def test_docs_list_no_reason_the_code_does_not_produce() -> None:
    stale = sorted(reasons_in_docs() - set(reasons_in_code()))
    assert not stale, f"docs/errors.md documents reasons nothing in services/ produces: {stale}"


def test_the_scan_finds_reasons_of_every_kind() -> None:
    """Guards the scanner itself: a constructor, a constant, ``.field(…)`` and a parameter default."""
    found = reasons_in_code()
    assert "NOT_FOUND" in found["EVENT_NOT_FOUND"]
    assert "UNAUTHENTICATED" in found["TOKEN_EXPIRED"]  # Unauthenticated(TOKEN_EXPIRED, …)
    assert "INVALID_PAGE_TOKEN" in found  # InvalidArgument.field(…, reason=_REASON)
    assert "INVALID_ARGUMENT" in found["INVALID_ARGUMENT"]  # the default of InvalidArgument.field


if __name__ == "__main__":
    for reason, codes in sorted(reasons_in_code().items()):
        print(reason, ", ".join(sorted(c for c in codes if c)) or "-")
