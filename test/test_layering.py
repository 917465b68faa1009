"""The layering of the package, read from its source (ast; nothing is imported): ``backends``
and ``net`` import nothing from ``web``, ``net`` nothing from ``backends``, and private Twisted
attributes are touched only in :mod:`s3balance.net.twistedcompat`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "s3balance"
COMPAT = PACKAGE / "net" / "twistedcompat.py"

#: (importing layer, layer it must not import).
FORBIDDEN = [
    ("s3balance.backends", "s3balance.web"),
    ("s3balance.net", "s3balance.web"),
    ("s3balance.net", "s3balance.backends"),
]

#: Private attributes of Twisted objects we use or used (and others of the same internals).
#: ``S3Channel`` also overrides ``HTTPChannel._maybeChooseTransferDecoder``: an override, not an
#: access, which :func:`s3balance.net.twistedcompat.check_twisted` verifies at start instead.
PRIVATE_TWISTED = {
    "_abortingCall",
    "_bodyDecoder",
    "_command",
    "_dataBuffers",
    "_finishedRequest",
    "_getEndpoint",
    "_handlingRequest",
    "_networkProducer",
    "_path",
    "_requestProducer",
    "_responseDeferreds",
    "_savedTimeOut",
    "_send100Continue",
    "_tempDataBuffer",
    "_tempDataLen",
    "_transferDecoder",
    "_version",
    "_waitingForTransport",
    "_writeDisconnected",
}
#: Names of Twisted objects on which any private attribute counts.
TWISTED_OBJECTS = {"transport", "channel", "agent", "_agent"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[tuple[str, Path, ast.Module]]:
    return [
        (_module_name(path), path, ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def _imports(module: str, path: Path, tree: ast.Module) -> set[str]:
    """Every module named by an import anywhere in the file (function-level ones too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _within(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def test_layers_import_only_downwards() -> None:
    breaks = [
        f"{module} imports {name}"
        for module, path, tree in _sources()
        for name in sorted(_imports(module, path, tree))
        for upper, lower in FORBIDDEN
        if _within(module, upper) and _within(name, lower)
    ]
    assert breaks == []


def _private_uses(tree: ast.Module) -> set[str]:
    uses: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            owner_name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else None
            )
            if node.attr in PRIVATE_TWISTED or (
                owner_name in TWISTED_OBJECTS and node.attr.startswith("_")
            ):
                uses.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in PRIVATE_TWISTED
        ):
            uses.add(str(node.args[1].value))
    return uses


def test_private_twisted_attributes_only_in_the_compat_module() -> None:
    outside = {
        module: sorted(uses)
        for module, path, tree in _sources()
        if path != COMPAT and (uses := _private_uses(tree))
    }
    assert outside == {}


def test_the_compat_module_is_seen_by_the_check() -> None:
    """The check would find the attributes: the compat module itself uses them."""
    assert _private_uses(ast.parse(COMPAT.read_text(encoding="utf-8"))) >= {
        "_command",
        "_networkProducer",
        "_tempDataBuffer",
    }


@pytest.mark.parametrize(
    "source,found",
    [
        ("channel._version", {"_version"}),
        ("self.transport._anything", {"_anything"}),
        ("getattr(x, '_send100Continue', None)", {"_send100Continue"}),
        ("self._own_state", set()),
    ],
)
def test_the_private_attribute_check_itself(source: str, found: set[str]) -> None:
    assert _private_uses(ast.parse(source)) == found
