"""The layering of the package, read from its source (ast; nothing is imported): no import cycle
among its modules, ``backends`` and ``net`` import nothing from ``web``, ``net`` nothing from
``backends``, ``admin`` nothing from ``app``, and private Twisted attributes are touched only in
:mod:`s3balance.net.twistedcompat`.

Every import counts for the cycle check: module-level, inside a function, and under
``if TYPE_CHECKING:``.  A cycle that only a type checker or a late import closes still ties the
modules together (neither can be understood, tested or moved without the other), and the rule is
simpler to keep when there are no exceptions to it."""

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
    # The admin API reads a narrow view and changes through a reconfigurator, both handed to
    # it by the composition root (s3balance.components): never the daemon object itself.
    ("s3balance.admin", "s3balance.app"),
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


def _import_graph(sources: list[tuple[str, Path, ast.Module]]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (every import, see the module docstring)."""
    modules = {module for module, _, _ in sources}
    return {
        module: {name for name in _imports(module, path, tree) if name in modules} - {module}
        for module, path, tree in sources
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected sets of more than one module (Tarjan), sorted, and
    modules that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == module:
                    break
            if len(members) > 1 or module in graph.get(module, ()):
                found.append(sorted(members))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def test_no_import_cycle() -> None:
    cycles = [" <-> ".join(cycle) for cycle in _cycles(_import_graph(_sources()))]
    assert cycles == []


def test_the_cycle_check_sees_type_only_and_late_imports() -> None:
    """A cycle closed under ``if TYPE_CHECKING:`` or inside a function is found; a chain is not
    a cycle."""
    sources = [
        ("s3balance.a", Path("a.py"), ast.parse("from s3balance import b")),
        (
            "s3balance.b",
            Path("b.py"),
            ast.parse("if TYPE_CHECKING:\n    import s3balance.a"),
        ),
        ("s3balance.c", Path("c.py"), ast.parse("def f():\n    from s3balance.d import x")),
        ("s3balance.d", Path("d.py"), ast.parse("from s3balance.c import y")),
        ("s3balance.e", Path("e.py"), ast.parse("from s3balance.a import z")),
    ]
    assert _cycles(_import_graph(sources)) == [
        ["s3balance.a", "s3balance.b"],
        ["s3balance.c", "s3balance.d"],
    ]


def test_admin_is_handed_its_view_not_the_daemon() -> None:
    """``admin`` reaches the daemon only through what the composition root gives it."""
    graph = _import_graph(_sources())
    upward = {"s3balance.app", "s3balance.components", "s3balance.worker", "s3balance.tap"}
    reached = {
        module: sorted(graph[module] & upward)
        for module in graph
        if _within(module, "s3balance.admin") and graph[module] & upward
    }
    assert reached == {}


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
