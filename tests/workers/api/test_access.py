"""Who may call what: two laboratories and every role, against every endpoint.

The matrix is the specification: each row names a call, and the status each caller gets,
exactly. A laboratory's token sees its own laboratory only; another laboratory's message
answers 404 in the very words of one that does not exist, so IDs cannot be probed. No
token, a revoked token or a malformed header: 401, before anything else is looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from pipeline.ledger.models import Message
from tests.workers.api.conftest import CALLERS, HL7, LAB_A, LAB_B, World, result_of

Call = Callable[[World, str | None], httpx.Response]


@dataclass(frozen=True)
class Row:
    name: str
    call: Call
    #: Status per caller: lab_a, lab_b, ops, billing, admin, revoked, no token.
    expected: tuple[int, int, int, int, int, int, int]


def _get(path: Callable[[World], str]) -> Call:
    def call(world: World, caller: str | None) -> httpx.Response:
        response: httpx.Response = world.api.client.get(path(world), headers=world.api.auth(caller))
        return response

    return call


def _post_own_result(world: World, caller: str | None) -> httpx.Response:
    """Each caller posts a result of the laboratory its token is for (LABO-A otherwise)."""
    laboratory = LAB_B if caller == "lab_b" else LAB_A
    return world.api.post_result(result_of(laboratory, f"POST-{caller}"), caller)


def _replay(world: World, caller: str | None) -> httpx.Response:
    """Ops and admin each replay a message of their own (a replay changes the ledger)."""
    control_id = {"ops": f"{LAB_A}-3", "admin": f"{LAB_B}-3"}.get(caller or "", f"{LAB_A}-2")
    response: httpx.Response = world.api.client.post(
        f"/v1/messages/{world.ids[control_id]}/replay", headers=world.api.auth(caller)
    )
    return response


A1 = f"{LAB_A}-1"
B1 = f"{LAB_B}-1"
#                                          lab_a lab_b  ops  bill admin revkd none
ROWS = [
    Row("post result", _post_own_result, (200, 200, 403, 403, 200, 401, 401)),
    Row("get A's message", _get(lambda w: f"/v1/messages/{w.ids[A1]}"),
        (200, 404, 200, 403, 200, 401, 401)),
    Row("get B's message", _get(lambda w: f"/v1/messages/{w.ids[B1]}"),
        (404, 200, 200, 403, 200, 401, 401)),
    Row("get a missing message", _get(lambda w: "/v1/messages/999999"),
        (404, 404, 404, 403, 404, 401, 401)),
    Row("find A's control ID", _get(lambda w: f"/v1/messages?control_id={A1}"),
        (200, 404, 200, 403, 200, 401, 401)),
    Row("find A's control ID in lab A", _get(lambda w: f"/v1/messages?control_id={A1}&lab={LAB_A}"),
        (200, 403, 200, 403, 200, 401, 401)),
    Row("replay", _replay, (403, 403, 200, 403, 200, 401, 401)),
    Row("delivery figures", _get(lambda w: "/v1/stats/deliveries"),
        (200, 200, 200, 200, 200, 401, 401)),
    Row("lab A's delivery figures", _get(lambda w: f"/v1/stats/deliveries?lab={LAB_A}"),
        (200, 403, 200, 200, 200, 401, 401)),
    Row("adoption figures", _get(lambda w: "/v1/stats/adoption"),
        (200, 200, 200, 200, 200, 401, 401)),
    Row("lab B's adoption figures", _get(lambda w: f"/v1/stats/adoption?lab={LAB_B}"),
        (403, 200, 200, 200, 200, 401, 401)),
    Row("metrics", _get(lambda w: "/metrics"), (403, 403, 200, 403, 200, 401, 401)),
    Row("dashboard figures", _get(lambda w: "/v1/dashboard"), (403, 403, 200, 403, 200, 401, 401)),
    Row("health", _get(lambda w: "/healthz"), (200, 200, 200, 200, 200, 200, 200)),
    Row("readiness", _get(lambda w: "/readyz"), (200, 200, 200, 200, 200, 200, 200)),
    Row("schema", _get(lambda w: "/openapi.json"), (200, 200, 200, 200, 200, 200, 200)),
]  # fmt: skip


@pytest.mark.parametrize("caller", CALLERS, ids=[c or "no-token" for c in CALLERS])
@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_access_matrix(world: World, row: Row, caller: str | None) -> None:
    response = row.call(world, caller)

    assert response.status_code == row.expected[CALLERS.index(caller)], response.text
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_another_laboratorys_message_answers_as_a_missing_one(world: World) -> None:
    api = world.api
    foreign = api.client.get(f"/v1/messages/{world.ids[B1]}", headers=api.auth("lab_a"))
    missing = api.client.get(f"/v1/messages/{world.ids[B1]}", headers=api.auth("ops"))
    gone = api.client.get("/v1/messages/999999", headers=api.auth("lab_a"))

    assert missing.status_code == 200  # it does exist
    assert foreign.status_code == gone.status_code == 404
    assert foreign.json() == {"error": f"no message {world.ids[B1]} in the ledger"}
    assert gone.json() == {"error": "no message 999999 in the ledger"}
    assert foreign.headers["content-length"] == str(len(foreign.content))


def test_a_lab_token_walking_ids_sees_exactly_its_own_messages(world: World) -> None:
    api = world.api
    with api.sessions() as session:
        owners = {
            row.id: row.laboratory
            for row in session.execute(select(Message.id, Message.laboratory))
        }
    last = max(owners) + 5

    seen = {
        message_id: api.client.get(f"/v1/messages/{message_id}", headers=api.auth("lab_a"))
        for message_id in range(1, last + 1)
    }

    own = {message_id for message_id, lab in owners.items() if lab == LAB_A}
    assert {i for i, r in seen.items() if r.status_code == 200} == own
    assert {i for i, r in seen.items() if r.status_code == 404} == set(range(1, last + 1)) - own
    assert all(seen[i].json()["laboratory"] == LAB_A for i in own)
    # Another lab's ID and an unused one answer in the same words (the ID aside).
    bodies = {seen[i].json()["error"].replace(str(i), "N") for i in seen if i not in own}
    assert bodies == {"no message N in the ledger"}


def test_a_lab_token_finding_by_control_id_gets_its_own_laboratorys_only(world: World) -> None:
    api = world.api
    # The same control ID in both laboratories: each sees its own.
    for caller, laboratory in (("lab_a", LAB_A), ("lab_b", LAB_B)):
        api.post_result(result_of(laboratory, "SHARED-1"), caller)

    traces = {
        caller: api.client.get("/v1/messages?control_id=SHARED-1", headers=api.auth(caller))
        for caller in ("lab_a", "lab_b", "ops")
    }

    assert [t["laboratory"] for t in traces["lab_a"].json()["messages"]] == [LAB_A]
    assert [t["laboratory"] for t in traces["lab_b"].json()["messages"]] == [LAB_B]
    assert [t["laboratory"] for t in traces["ops"].json()["messages"]] == [LAB_A, LAB_B]


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic YWRtaW46YWRtaW4=",  # another scheme
        "Bearer",  # no token
        "Bearer ",
        "Bearer not-a-token",
        "Bearer ldt_" + "x" * 43,  # a token's form, but no such token
        "ldt_abc",  # the token without its scheme
    ],
)
def test_a_malformed_or_unknown_authorization_is_401(world: World, authorization: str) -> None:
    response = world.api.client.get(
        f"/v1/messages/{world.ids[A1]}", headers={"Authorization": authorization}
    )

    assert response.status_code == 401
    assert "error" in response.json()


def test_a_revoked_token_is_refused_everywhere_it_was_once_let_in(world: World) -> None:
    api = world.api
    calls = [
        api.client.post("/v1/results", content=result_of(LAB_A, "R-1"),
                        headers={**HL7, **api.auth("revoked")}),
        api.client.get(f"/v1/messages/{world.ids[A1]}", headers=api.auth("revoked")),
        api.client.get(f"/v1/messages?control_id={A1}", headers=api.auth("revoked")),
        api.client.post(f"/v1/messages/{world.ids[A1]}/replay", headers=api.auth("revoked")),
        api.client.get("/v1/stats/deliveries", headers=api.auth("revoked")),
        api.client.get("/v1/stats/adoption", headers=api.auth("revoked")),
    ]  # fmt: skip

    assert [call.status_code for call in calls] == [401] * len(calls)
    assert {call.json()["error"] for call in calls} == {"unknown or revoked token"}
