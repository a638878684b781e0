"""`labdispatch demo`: the whole service on the embedded default, end to end.

Real processes (MLLP listener, Celery worker), the embedded Redis the program starts, a
real SMTP receiver; every envelope it keeps must open with stock openssl as its recipient.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workers.smtp_sink import read_log


def test_demo_delivers_every_sample_result_sealed_and_leaves_pki_and_outbox(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "demo"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    # Four sample results, each AA: three over MLLP, LABSUD's over HTTP with its own token.
    assert out.count(": AA") == 4, out
    assert "glycemie_labsud_v23_latin1.hl7 over HTTP: LS-000777: AA" in out
    # Billing's figures from the API, as CSV: 3 results and 12 envelopes for LABO-BIO-CENTRE,
    # LABSUD's one result delivered once and parked twice (two recipients not in the
    # directory).
    assert "LABO-BIO-CENTRE,mail,3,,,0,12,0,0,0," in out
    assert "LABSUD,mail,1,,,0,1,0,0,0," in out
    assert "LABSUD,none,1,,,2,0,0,0,0,," in out
    assert "every delivery settled" in out
    assert "CMS Verification successful" in out
    assert "Traceback" not in out + done.stderr

    pki, outbox = workdir / "pki", workdir / "outbox"
    for name in ("ca.crt", "lab.crt", "lab.key", "sophie.martin.crt", "sophie.martin.key"):
        assert (pki / name).is_file(), name
    emls = sorted(outbox.glob("*.eml"))
    arrivals = read_log(workdir / "smtp-received.tsv")
    assert len(emls) == len(arrivals) == 13  # the routable recipients of the 4 samples
    assert len({a.message_id for a in arrivals}) == 13  # each envelope once

    # Sophie Martin's copy opens with her key and verifies against the test CA.
    martin = next(a for a in arrivals if "sophie.martin@martin.mssante.example" in a.recipients)
    eml = next(e for e in emls if e.name.startswith(f"{martin.number:08d}-"))
    decrypted = subprocess.run(
        [
            *("openssl", "cms", "-decrypt", "-in", str(eml)),
            *("-recip", str(pki / "sophie.martin.crt"), "-inkey", str(pki / "sophie.martin.key")),
        ],
        capture_output=True,
        check=True,
    ).stdout
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-CAfile", str(pki / "ca.crt")],
        input=decrypted,
        capture_output=True,
        check=False,
    )
    assert b"Verification successful" in verified.stderr, verified.stderr
    assert b"application/hl7-v2" in verified.stdout

    # The embedded broker was stopped with the demo: nothing left running.
    assert not (workdir / "var" / "broker" / "redis.pid").exists()
