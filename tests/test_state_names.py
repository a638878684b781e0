"""States are named constants (`pipeline.ledger.states`), never bare strings in the code.

A state spelled as a literal where it is written or compared ("pending" typed "pendng", a
state renamed in one place only) is a bug no type checker sees: the row is never found, or
never leaves the state. The source of `pipeline/` and `workers/` is read (AST) and every
string naming a message or delivery state is refused where it is assigned to a `state`,
passed as `state=`, compared with a `…state` (`==`, `!=`, `in`), or given to `state.in_()`.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

from pipeline.ledger.states import DELIVERY_STATES, MESSAGE_STATES

ROOT = Path(__file__).resolve().parents[1]
STATES = frozenset(MESSAGE_STATES) | frozenset(DELIVERY_STATES)
#: The one place the words are spelled; migrations keep the words of their day.
EXEMPT = (ROOT / "pipeline" / "ledger" / "states.py", ROOT / "pipeline" / "migrations")


def _literals(node: ast.AST) -> Iterator[ast.Constant]:
    """The string constants a value is made of (through tuples, lists, sets, `x if c else
    y`, `a or b`), not those inside calls it makes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for item in node.elts:
            yield from _literals(item)
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _literals(value)


def _names_state(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "state" or node.attr.endswith("_state")
    if isinstance(node, ast.Name):
        return node.id == "state" or node.id.endswith("_state")
    return False


def bare_states(source: str) -> list[tuple[int, str]]:
    """(line, literal) for every bare state string written or compared in `source`."""
    found: list[tuple[int, str]] = []

    def check(value: ast.AST) -> None:
        for constant in _literals(value):
            if constant.value in STATES:
                found.append((constant.lineno, constant.value))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(_names_state(t) for t in node.targets):
            check(node.value)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and _names_state(node.target):
            if node.value is not None:
                check(node.value)
        elif isinstance(node, ast.keyword) and node.arg == "state":
            check(node.value)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_names_state(operand) for operand in operands):
                for operand in operands:
                    check(operand)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("in_", "not_in")
            and _names_state(node.func.value)
        ):
            for argument in node.args:
                check(argument)
    return sorted(found)


def test_no_bare_state_literal_in_pipeline_or_workers() -> None:
    offences = []
    for package in ("pipeline", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(path == exempt or exempt in path.parents for exempt in EXEMPT):
                continue
            for line, literal in bare_states(path.read_text(encoding="utf-8")):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {literal!r}")
    assert not offences, "use the constants of pipeline.ledger.states:\n" + "\n".join(offences)


def test_the_check_finds_each_shape_and_leaves_other_words_alone() -> None:
    source = textwrap.dedent("""\
        delivery.state = "pending"
        message.state = "routed" if ok else "unroutable"
        Delivery(state="failed")
        query.where(Delivery.state == "retrying")
        if "held" == message.state: pass
        if delivery.state in ("delivered", "read"): pass
        select(Delivery).where(Delivery.state.in_(("accepted",)))
        new_state = "received"
        record_event(session, message, "failed", reason)
        delivery.state = FAILED
        kind = "accepted"
    """)
    assert [line for line, _ in bare_states(source)] == [1, 2, 2, 3, 4, 5, 6, 6, 7, 8]
