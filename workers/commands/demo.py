"""`labdispatch demo [--workdir DIR]`: the whole service on this machine, end to end.

Starts the embedded stack (SQLite ledger and a Redis broker the program runs itself, under
DIR/var), makes a test PKI (DIR/pki: the PEM files of `labdispatch pki init`), loads the
sample directory, starts a local SMTP receiver that keeps every message it gets as
DIR/outbox/*.eml, then the MLLP listener, the HTTP API and a Celery worker as separate
processes. It pushes the sample results as laboratories would (over MLLP, and one
laboratory over HTTPS' plain sibling, `POST /v1/results` with its own token), waits until
every delivery is settled, prints each result's journey and the billing figures the API
gives. Anyone can then open an envelope with stock openssl (the command is printed at the
end).

Service settings of this shell (LABDISPATCH_DATABASE_URL, _BROKER_URL, _SMTP_*) are not
used: the demo always runs on its own embedded stack, so it cannot send to a real relay.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.access.tokens import create_token
from pipeline.db import open_database, utcnow
from pipeline.delivery.trace import render_trace, trace_result
from pipeline.errors import ConfigurationError
from pipeline.hl7.decode import split_messages
from pipeline.ledger.files import private_directory
from pipeline.ledger.models import Message
from pipeline.settings import PREFIX, Settings
from workers.broker import stop_embedded
from workers.mllp.client import MllpClient
from workers.smtp_sink import SmtpSink, eml_name, read_log
from workers.stack import Stack, wait_until_settled

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTLE_TIMEOUT = 120.0
#: The sample laboratory that sends over HTTP (the others use MLLP).
HTTP_LABORATORY = "LABSUD"


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole service on this machine: MLLP in, workers, sealed mail out",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("var/demo"),
        help="where the demo keeps its ledger, PKI and outbox (default: var/demo)",
    )
    demo.add_argument(
        "--examples",
        type=Path,
        default=EXAMPLES,
        help="folder with directory.csv and results/*.hl7 (default: the project's examples)",
    )
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    examples: Path = args.examples
    results = sorted((examples / "results").glob("*.hl7"))
    if not (examples / "directory.csv").is_file() or not results:
        raise ConfigurationError(
            f"the demo needs {examples}/directory.csv and {examples}/results/*.hl7 "
            "(run it from a labdispatch checkout, or name them with --examples)"
        )
    pki, outbox, var = workdir / "pki", workdir / "outbox", workdir / "var"
    for folder in (pki, outbox):
        folder.mkdir(parents=True, exist_ok=True)
    private_directory(var)  # the service's own, 0700 (`ledger.files`)
    env = {name: value for name, value in os.environ.items() if not name.startswith(PREFIX)}
    env |= {
        "LABDISPATCH_VAR_DIR": str(var),
        "LABDISPATCH_SIGNING_CERT": str(pki / "lab.crt"),
        "LABDISPATCH_SIGNING_KEY": str(pki / "lab.key"),
        "LABDISPATCH_MAIL_FROM": "results@labo-demo.example",
        "LABDISPATCH_SMTP_HOST": "127.0.0.1",
        "LABDISPATCH_SMTP_TLS": "none",
        "LABDISPATCH_RECONCILE_INTERVAL": "5",
        "LABDISPATCH_REQUEUE_AFTER": "10",
    }
    os.environ.clear()
    os.environ.update(env)  # this process reads the same settings as its children

    print(f"== labdispatch demo in {workdir}")
    print("== the recipient directory and a test PKI for it")
    _labdispatch("directory", "import", str(examples / "directory.csv"))
    _labdispatch("pki", "init", str(pki))
    _labdispatch("directory", "import", str(pki / "directory.csv"))

    settings = Settings.from_env()
    sessions = open_database(settings)
    with SmtpSink(outbox=outbox, log=workdir / "smtp-received.tsv") as sink:
        os.environ["LABDISPATCH_SMTP_PORT"] = str(sink.port)
        with Stack(
            env={"LABDISPATCH_SMTP_PORT": str(sink.port)}, log_dir=workdir / "logs"
        ) as stack:
            port = stack.start_listener()
            api_port = stack.start_api()
            stack.start_worker(concurrency=2)
            api = f"http://127.0.0.1:{api_port}"
            print(f"\n== the service: MLLP on 127.0.0.1:{port}, HTTP API on {api},")
            print(f"   SMTP receiver on :{sink.port} (process logs in {workdir / 'logs'})")
            with sessions.begin() as session:
                _, lab_token = create_token(
                    session, role="lab", laboratory=HTTP_LABORATORY, label="demo", now=utcnow()
                )
                _, billing_token = create_token(
                    session, role="billing", laboratory=None, label="demo", now=utcnow()
                )

            print("\n== laboratories send their results (MLLP, and one over HTTP)")
            control_ids: list[str] = []
            with MllpClient("127.0.0.1", port) as client:
                for path in results:
                    header = path.read_bytes().split(b"\r", 1)[0]
                    if f"|{HTTP_LABORATORY}|".encode() in header:
                        answer = _api(api, "/v1/results", lab_token, path.read_bytes())
                        for entry in answer["messages"]:
                            control_ids.append(entry["control_id"])
                            reason = f" ({entry['reason']})" if entry["reason"] else ""
                            print(
                                f"   {path.name} over HTTP: {entry['control_id']}: "
                                f"{entry['ack_code']}{reason}"
                            )
                        continue
                    for raw in split_messages(path.read_bytes()):
                        reply = client.exchange(raw.data)
                        control_ids.append(reply.control_id)
                        reasons = "; ".join(reply.reasons)
                        print(
                            f"   {path.name} #{raw.index}: {reply.control_id}: {reply.code}"
                            + (f" ({reasons})" if reasons else "")
                        )

            started = time.monotonic()
            settled = wait_until_settled(
                sessions, timeout=SETTLE_TIMEOUT, alive=stack.check_running
            )
            print(
                f"\n== every delivery settled in {time.monotonic() - started:.1f} s"
                if settled
                else f"\n== still working after {SETTLE_TIMEOUT:.0f} s: showing where it is"
            )
            today = utcnow().date().isoformat()
            print("\n== billing asks the API: GET /v1/stats/deliveries?group_by=channel (CSV)")
            figures = _api(
                api,
                f"/v1/stats/deliveries?from={today}&to={today}&group_by=channel",
                billing_token,
                accept="text/csv",
            )
            for line in figures.splitlines():
                print(f"   {line}")
    stop_embedded(settings)

    print("\n== each result's journey")
    with sessions() as session:
        laboratories = {m.control_id: m.laboratory for m in session.query(Message).all()}
        for control_id in dict.fromkeys(control_ids):
            if control_id not in laboratories:
                continue
            for trace in trace_result(session, control_id):
                print(render_trace(trace))
                print()
    emls = sorted(outbox.glob("*.eml"))
    print(f"== {len(emls)} sealed message(s) in {outbox}, the PKI in {pki}")
    _open_one(workdir / "smtp-received.tsv", outbox, pki, examples / "directory.csv")
    return 0 if settled else 1


def _api(base: str, path: str, token: str, body: bytes | None = None, *, accept: str = "") -> Any:
    """One call to the demo's API, as a laboratory's or billing's script would make it."""
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/hl7-v2"
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(base + path, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode("utf-8")
    return text if accept == "text/csv" else json.loads(text)


def _labdispatch(*argv: str) -> None:
    """Run one of our own commands in this process, as a user would type it."""
    from workers.cli import main  # the command line imports this module

    status = main(list(argv))
    if status != 0:
        raise ConfigurationError(f"labdispatch {' '.join(argv)} failed (exit {status})")


def _open_one(log: Path, outbox: Path, pki: Path, directory_csv: Path) -> None:
    """Open one envelope as its recipient's mail client would, with stock openssl: decrypt
    with the recipient's key, then verify the laboratory's signature against the test CA."""
    keys_by_address = {}
    with directory_csv.open(newline="", encoding="utf-8") as listing:
        for row in csv.DictReader(listing):
            for channel in row.get("channels", "").split(";"):
                kind, _, address = channel.partition(":")
                if kind == "mail":
                    keys_by_address[address] = row["key"]
    for arrival in read_log(log):
        eml = outbox / eml_name(arrival.number, arrival.message_id)
        key = next((keys_by_address[a] for a in arrival.recipients if a in keys_by_address), "")
        if not key or not (pki / f"{key}.key").is_file() or not eml.is_file():
            continue
        command = (
            f"openssl cms -decrypt -in {eml} -recip {pki}/{key}.crt -inkey {pki}/{key}.key"
            f" | openssl cms -verify -CAfile {pki}/ca.crt"
        )
        print(f"\n== {key} opens {eml.name} with stock openssl:\n   {command}")
        if shutil.which("openssl") is None:
            print("   (openssl is not installed here: install it to run that)")
            return
        opened = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
        text = opened.stdout.replace("\r\n", "\n")
        summary = text[text.find("Laboratory result") :].split("\n\n")[0] if text else ""
        for line in summary.splitlines()[:8]:
            print(f"   | {line}")
        verdict = [
            line for line in opened.stderr.splitlines() if "Verification" in line or "Error" in line
        ]
        print("   " + (verdict[0] if verdict else f"openssl exited {opened.returncode}"))
        return
