"""The app as a whole: its published schema, its answers to errors, and its access log,
which names the route and the caller and never a patient nor a secret."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest
from fastapi import FastAPI

from tests.workers.api.conftest import LAB_A, PATIENT_NAMES, RESULT, Api, result_of

ACCESS = "labdispatch.api"


def test_the_openapi_schema_is_published_and_the_cdn_pages_are_not(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()

    assert schema["info"]["title"] == "labdispatch"
    assert schema["info"]["version"] == metadata.version("labdispatch")
    assert {
        "/healthz",
        "/readyz",
        "/v1/results",
        "/v1/messages",
        "/v1/messages/{message_id}",
        "/v1/messages/{message_id}/replay",
        "/v1/stats/deliveries",
        "/v1/stats/adoption",
    } <= set(schema["paths"])
    assert "application/hl7-v2" in schema["paths"]["/v1/results"]["post"]["requestBody"]["content"]
    assert api.client.get("/docs").status_code == 404
    assert api.client.get("/redoc").status_code == 404


def test_an_unexpected_error_is_500_internal_error_with_no_detail_anywhere(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    app = api.client.app
    assert isinstance(app, FastAPI)

    @app.get("/boom/{thing_id}")
    def boom(thing_id: int) -> None:
        raise RuntimeError("DUPONT^Hélène could not be parsed")

    with caplog.at_level(logging.INFO):
        response = api.client.get("/boom/7")

    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert "DUPONT" not in caplog.text and "Traceback" not in caplog.text
    assert not any(record.exc_info for record in caplog.records)
    assert "internal error answering GET /boom/{thing_id} thing_id=7 (RuntimeError)" in caplog.text
    assert "GET /boom/{thing_id} thing_id=7 500" in caplog.text


def test_each_call_is_logged_once_with_its_route_status_and_caller(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    posted = api.post_result(result_of(LAB_A, "LOG-1"), "lab_a").json()["messages"][0]
    message_id = posted["message_id"]
    api.client.get(f"/v1/messages/{message_id}", headers=api.auth("ops"))
    api.client.get("/v1/messages?control_id=LOG-1&lab=LABO-A&note=private", headers=api.auth("ops"))
    api.client.get("/v1/stats/deliveries?from=2026-01-01&to=2026-01-31", headers=api.auth("lab_a"))
    api.client.get(f"/v1/messages/{message_id}")
    api.client.get("/v1/patients/DUPONT")

    lines = [
        r.getMessage() for r in caplog.records if r.name == ACCESS and " ms " in r.getMessage()
    ]

    lab_a = f"token #{api.token_ids['lab_a']} (lab {LAB_A})"
    ops = f"token #{api.token_ids['ops']} (ops)"
    expected = [
        ("POST /v1/results 200", lab_a),
        (f"GET /v1/messages/{{message_id}} message_id={message_id} 200", ops),
        ("GET /v1/messages control_id=LOG-1 lab=LABO-A 200", ops),
        ("GET /v1/stats/deliveries from=2026-01-01 to=2026-01-31 200", lab_a),
        (f"GET /v1/messages/{{message_id}} message_id={message_id} 401", "anonymous"),
        ("GET (no route) 404", "anonymous"),
    ]
    assert len(lines) == len(expected), lines
    for line, (start, caller) in zip(lines, expected, strict=True):
        assert line.startswith(start) and line.endswith(f" ms {caller}"), line
    assert "private" not in caplog.text  # a query value outside the logged ones


def test_no_log_line_holds_the_patients_name_or_a_token(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    assert b"DUPONT^H\xc3\xa9l\xc3\xa8ne" in RESULT  # the fixture does name the patient
    caplog.set_level(logging.DEBUG)

    api.post_result(result_of(LAB_A, "PII-1"), "lab_a")
    api.post_result(result_of(LAB_A, "PII-2"), "lab_b")  # refused: another laboratory's
    malformed = f"MSH|^~\\&|x|{LAB_A}\rPID|||1||DUPONT^Hélène\r".encode()
    assert api.post_result(malformed, "lab_a").status_code == 422
    api.client.get("/v1/messages?control_id=PII-1", headers=api.auth("ops"))

    logged = caplog.text
    assert "PII-1" in logged  # control IDs are what the log follows results by
    for name in PATIENT_NAMES:
        assert name not in logged
    for secret in api.tokens.values():
        assert secret not in logged
    assert "Bearer" not in logged and "authorization" not in logged.lower()


def test_control_characters_in_a_logged_query_value_are_escaped_never_written_raw(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    # NUL, ESC (a terminal escape sequence), CR LF (a forged second line), DEL, a C1
    # control, Unicode's line separator, and a backslash that must not pass for an escape.
    query = "control_id=A%00B%1B%5B31mC%0D%0AD%7FE%C2%85F%E2%80%A8G%5Cx00"

    response = api.client.get(f"/v1/messages?{query}", headers=api.auth("ops"))

    assert response.status_code == 404  # no such control ID
    (line,) = [r.getMessage() for r in caplog.records if r.name == ACCESS]
    assert line.startswith(
        "GET /v1/messages control_id=A\\x00B\\x1b[31mC\\x0d\\x0aD\\x7fE\\x85F\\u2028G\\\\x00 404"
    ), line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line)
    assert "\u2028" not in line
