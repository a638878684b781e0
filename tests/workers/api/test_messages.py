"""GET /v1/messages (a result's trace) and POST /v1/messages/{id}/replay (audited)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select

from pipeline.db import utcnow
from pipeline.delivery.reconcile import stalled_work
from pipeline.ledger.models import Delivery, Event
from tests.workers.api.conftest import LAB_A, Api, fail_deliveries, posted_id, result_of


@pytest.fixture
def failed(api: Api) -> tuple[int, list[int]]:
    """A LABO-A result whose two deliveries (Dr Martin, Dr Leroy) failed at sealing."""
    message_id = posted_id(api.post_result(result_of(LAB_A, "F-1"), "lab_a"))
    deliveries = fail_deliveries(api, [message_id])
    assert len(deliveries) == 2
    return message_id, deliveries


def _deliveries(api: Api, message_id: int) -> list[Delivery]:
    with api.sessions() as session:
        return list(
            session.scalars(
                select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
            )
        )


def test_a_trace_shows_the_message_its_deliveries_and_its_events(
    api: Api, failed: tuple[int, list[int]]
) -> None:
    message_id, deliveries = failed

    trace = api.client.get(f"/v1/messages/{message_id}", headers=api.auth("ops")).json()

    assert (trace["id"], trace["laboratory"], trace["control_id"]) == (message_id, LAB_A, "F-1")
    assert [(d["id"], d["state"]) for d in trace["deliveries"] if d["id"] in deliveries] == [
        (deliveries[0], "failed"),
        (deliveries[1], "failed"),
    ]
    assert {"received", "routed", "failed"} <= {event["kind"] for event in trace["events"]}
    assert "no certificate" in trace["deliveries"][0]["last_error"]


def test_replay_reopens_every_failed_delivery_and_queues_it_for_sealing(
    api: Api, failed: tuple[int, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    message_id, deliveries = failed
    caplog.set_level(logging.INFO, logger="labdispatch.api")

    response = api.client.post(f"/v1/messages/{message_id}/replay", headers=api.auth("ops"))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["queued"] is True
    assert [(d["delivery_id"], d["stage"]) for d in answer["deliveries"]] == [
        (deliveries[0], "seal"),
        (deliveries[1], "seal"),
    ]
    assert api.requeued == [(deliveries, [])]
    for delivery in _deliveries(api, message_id):
        if delivery.id in deliveries:
            assert (delivery.state, delivery.attempts, delivery.last_error) == ("pending", 0, "")
            assert delivery.failed_at is None and delivery.notified_at is None
            assert delivery.queued_at is not None  # queued: reconcile leaves it alone
    who = f"token #{api.token_ids['ops']} (ops)"
    with api.sessions() as session:
        details = session.scalars(select(Event.detail).where(Event.kind == "replayed")).all()
    assert details == [f"replayed by {who}: to be sealed"] * 2
    audit = [r.getMessage() for r in caplog.records if "replay of message" in r.getMessage()]
    assert audit == [
        f"replay of message {message_id} by {who}: delivery(ies) "
        f"{deliveries[0]} (seal), {deliveries[1]} (seal)"
    ]
    assert api.tokens["ops"] not in caplog.text


def test_replay_of_one_named_delivery_leaves_the_others_failed(
    api: Api, failed: tuple[int, list[int]]
) -> None:
    message_id, deliveries = failed

    response = api.client.post(
        f"/v1/messages/{message_id}/replay",
        json={"delivery_id": deliveries[1]},
        headers=api.auth("admin"),
    )

    assert response.status_code == 200
    assert [d["delivery_id"] for d in response.json()["deliveries"]] == [deliveries[1]]
    states = {d.id: d.state for d in _deliveries(api, message_id)}
    assert (states[deliveries[0]], states[deliveries[1]]) == ("failed", "pending")


def test_replaying_what_is_not_failed_is_409_with_the_reason(
    api: Api, failed: tuple[int, list[int]]
) -> None:
    message_id, deliveries = failed
    url = f"/v1/messages/{message_id}/replay"
    assert api.client.post(url, headers=api.auth("ops")).status_code == 200

    again = api.client.post(url, headers=api.auth("ops"))
    one = api.client.post(url, json={"delivery_id": deliveries[0]}, headers=api.auth("ops"))

    assert again.status_code == one.status_code == 409
    assert again.json() == {
        "error": f"message {message_id} has no failed delivery: nothing to replay"
    }
    assert one.json() == {
        "error": f"delivery {deliveries[0]} is pending, not failed: nothing to replay"
    }


def test_replaying_a_delivery_of_another_message_or_a_missing_message_is_404(
    api: Api, failed: tuple[int, list[int]]
) -> None:
    message_id, deliveries = failed
    other = posted_id(api.post_result(result_of(LAB_A, "F-2"), "lab_a"))

    foreign = api.client.post(
        f"/v1/messages/{other}/replay",
        json={"delivery_id": deliveries[0]},
        headers=api.auth("ops"),
    )
    missing = api.client.post("/v1/messages/999999/replay", headers=api.auth("ops"))

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == {"error": f"message {other} has no delivery {deliveries[0]}"}
    assert missing.json() == {"error": "no message 999999 in the ledger"}
    assert {d.state for d in _deliveries(api, message_id)} >= {"failed"}


def test_replay_with_the_broker_away_leaves_the_work_to_reconcile_and_says_so(
    api: Api, failed: tuple[int, list[int]]
) -> None:
    message_id, deliveries = failed
    api.broker_down = True

    response = api.client.post(f"/v1/messages/{message_id}/replay", headers=api.auth("ops"))

    assert response.status_code == 200
    answer = response.json()
    assert answer["queued"] is False and "reconcile" in answer["note"]
    assert {d.state for d in _deliveries(api, message_id) if d.id in deliveries} == {"pending"}
    # The reconcile job's next run queues them, without waiting for `requeue_after`.
    work = stalled_work(api.sessions, utcnow(), requeue_after=timedelta(minutes=2))
    assert work.seal == deliveries


def test_a_bad_replay_body_or_id_is_400_naming_the_field(api: Api) -> None:
    body = api.client.post(
        "/v1/messages/1/replay", json={"delivery_id": "x"}, headers=api.auth("ops")
    )
    path = api.client.get("/v1/messages/abc", headers=api.auth("ops"))

    assert body.status_code == path.status_code == 400
    assert "delivery_id" in body.json()["error"]
    assert "message_id" in path.json()["error"]


@pytest.mark.parametrize("wanted", ["99999999999999999999999", "2147483648", "0", "-1"])
def test_an_id_beyond_what_the_ledger_holds_is_404_like_a_missing_one(
    api: Api, failed: tuple[int, list[int]], wanted: str
) -> None:
    message_id, deliveries = failed
    trace = api.client.get(f"/v1/messages/{wanted}", headers=api.auth("ops"))
    replayed = api.client.post(f"/v1/messages/{wanted}/replay", headers=api.auth("ops"))
    named = api.client.post(
        f"/v1/messages/{message_id}/replay",
        json={"delivery_id": int(wanted)},
        headers=api.auth("ops"),
    )

    assert trace.status_code == replayed.status_code == named.status_code == 404
    assert trace.json() == replayed.json() == {"error": f"no message {wanted} in the ledger"}
    assert named.json() == {"error": f"message {message_id} has no delivery {wanted}"}
    assert {d.state for d in _deliveries(api, message_id) if d.id in deliveries} == {"failed"}


@pytest.mark.parametrize("state", ["accepted", "delivered", "read"])
def test_a_delivery_handed_over_is_never_reopened_by_replay(
    api: Api, failed: tuple[int, list[int]], state: str
) -> None:
    """Replay is for `failed` only: a delivery the recipient's side has (accepted, delivered,
    read) stays as it is, named or not, with no `replayed` event and nothing queued."""
    message_id, deliveries = failed
    handed_at = utcnow()
    with api.sessions.begin() as session:
        for delivery in session.scalars(select(Delivery).where(Delivery.id.in_(deliveries))):
            delivery.state = state
            delivery.accepted_at = handed_at
            delivery.delivered_at = handed_at if state in ("delivered", "read") else None
            delivery.read_at = handed_at if state == "read" else None
            delivery.failed_at = None
    url = f"/v1/messages/{message_id}/replay"

    named = [
        api.client.post(url, json={"delivery_id": d}, headers=api.auth("ops")) for d in deliveries
    ]
    every = api.client.post(url, headers=api.auth("ops"))

    assert [r.status_code for r in named] == [409, 409] and every.status_code == 409
    assert [r.json()["error"] for r in named] == [
        f"delivery {d} is {state}, not failed: nothing to replay" for d in deliveries
    ]
    after = [d for d in _deliveries(api, message_id) if d.id in deliveries]
    assert [(d.state, d.accepted_at is not None) for d in after] == [(state, True)] * 2
    with api.sessions() as session:
        kinds = set(session.scalars(select(Event.kind).where(Event.message_id == message_id)))
    assert "replayed" not in kinds and api.requeued == []
