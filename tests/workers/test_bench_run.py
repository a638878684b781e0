"""`labdispatch bench` through the real stack (listener, workers, Redis, a scratch
PostgreSQL ledger, the lean receiver in its own process), small enough for the suite: the
figures it prints exist and agree with each other. No assertion on speed."""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from workers.bench.progress import Progress, progress_line
from workers.bench.synthetic import SMALL, bench_recipients, generate_labelled_results

REDIS_URL = os.environ.get("LABDISPATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RPPS = [person.rpps for person in bench_recipients(20)]


def figure(pattern: str, text: str) -> tuple[float, ...]:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in the output:\n{text}"
    return tuple(float(value) for value in found.groups())


@pytest.mark.postgres
def test_bench_at_a_rate_prints_sane_figures(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LABDISPATCH")}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "workers.cli", "bench"),
            *("--messages", "50", "--rate", "50", "--recipients", "20", "--noop-tasks", "50"),
            *("--postgres", POSTGRES_ADMIN_URL, "--broker-url", REDIS_URL),
            *("--workdir", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in out + done.stderr
    # Piped, not a terminal: no progress line.
    assert "\r" not in done.stderr and "envelopes · " not in done.stderr

    (envelopes,) = figure(r"recipients each \((\d+) envelopes\)", out)
    rate, achieved = figure(r"open loop at (\d+) results/s: achieved ([\d.]+)/s", out)
    assert rate == 50 and 0 < achieved <= 50 * 1.02
    late, sent = figure(r"(\d+) of (\d+) sends late", out)
    assert sent == 50 and 0 <= late <= 50
    p50, p99, slot50, slot99 = figure(
        r"ACK latency +p50 ([\d.]+) ms, p99 ([\d.]+) ms from the write; "
        r"p50 ([\d.]+) ms, p99 ([\d.]+) ms from the slot",
        out,
    )
    assert 0 < p50 <= p99 and 0 < slot50 <= slot99 and p50 <= slot50
    assert figure(r"ACK codes AA (\d+)", out) == (50,)

    total, read, signature, per_result_envelopes, mime = figure(
        r"floor per result +([\d.]+) ms CPU = HL7 read ([\d.]+) \+ signature ([\d.]+) \+ "
        r"envelopes ([\d.]+) \(.*?\) \+ MIME ([\d.]+)",
        out,
    )
    assert total > 0 and all(step > 0 for step in (read, signature, per_result_envelopes, mime))
    assert total == pytest.approx(read + signature + per_result_envelopes + mime, abs=0.02)
    cpu, ratio = figure(r"CPU per result +([\d.]+) ms end to end .*= ([\d.]+) x the floor", out)
    assert cpu > 0 and ratio == pytest.approx(cpu / total, rel=0.05, abs=0.1)

    (receiver_cpu,) = figure(r"SMTP receiver +lean: ([\d.]+) ms CPU per result", out)
    assert receiver_cpu >= 0
    messages, distinct, again = figure(
        r"(\d+) messages, \d+ RCPT, (\d+) distinct \(Message-ID, RCPT\), (\d+) sent again", out
    )
    assert messages == distinct == envelopes and again == 0
    assert figure(r"envelopes +(\d+):", out) == (envelopes,)
    assert figure(r"deliveries by state +accepted (\d+)", out) == (envelopes,)

    total_kb, wal_kb, growth_kb = figure(
        r"PostgreSQL writes +([\d.]+) KB/result: WAL ([\d.]+) KB/result .*"
        r"table \+ index growth ([\d.]+) KB/result",
        out,
    )
    assert wal_kb > 0 and growth_kb > 0
    assert total_kb == pytest.approx(wal_kb + growth_kb, abs=0.2)


def test_small_results_are_about_3_kb_without_pdf_and_name_one_to_three_recipients() -> None:
    results = list(generate_labelled_results(500, 3, "LABO-BENCH", RPPS, 0.0, SMALL))
    sizes = [len(result.data) for result in results]
    assert 2_600 < statistics.fmean(sizes) < 3_300
    assert max(sizes) < 4_000
    assert not any(result.has_pdf for result in results)
    assert {len(result.recipients) for result in results} == {1, 2, 3}


def test_the_mix_is_unchanged_by_the_observation_range() -> None:
    default = list(generate_labelled_results(50, 1, "LABO-BENCH", RPPS))
    explicit = list(generate_labelled_results(50, 1, "LABO-BENCH", RPPS, 0.05, (10, 30)))
    assert [r.data for r in default] == [r.data for r in explicit]


def test_progress_rewrites_one_line_on_a_terminal_and_is_silent_otherwise() -> None:
    shown = io.StringIO()
    progress = Progress(shown, enabled=True)
    progress.show(progress_line(10, 100, 15, 200, 5.0))
    progress.show(progress_line(20, 100, 30, 200, 10.0))
    progress.end()
    text = shown.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "sent 20/100 · delivered 30/200 envelopes · 3/s · ~57 s left" in text
    piped = io.StringIO()  # not a terminal: isatty() is False
    quiet = Progress(piped)
    quiet.show(progress_line(10, 100, 15, 200, 5.0))
    quiet.end()
    assert piped.getvalue() == ""
