"""deploy/prometheus: the alert rules load, every alert fires and stays quiet where its
test cases say (promtool), and every metric they read is one /metrics serves.

promtool is Prometheus's own checker (Debian: the `prometheus` package; CI installs it).
Without it the promtool tests are skipped with the reason; the checks that need only
Python still run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.db import make_engine, migrate, session_factory
from pipeline.settings import Settings
from workers.api.metrics import MetricsSource
from workers.queues import STAGE_QUEUES, QueueDepths

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
#: The unit tests of the rules (the silent-laboratory one needs a week: a file of its own).
ALERTS_TESTS = (RULES_DIR / "alerts_test.yml", RULES_DIR / "alerts_silence_test.yml")
CONFIG = RULES_DIR / "prometheus.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed (Debian: apt-get install prometheus); the alert "
            "rules are checked by promtool when it is installed"
        )
    return found


def run(*command: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE)


def test_the_alert_rules_load(promtool: str) -> None:
    checked = run(promtool, "check", "rules", ALERTS.name)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout


def test_every_alert_behaves_as_its_test_cases_say(promtool: str) -> None:
    tested = run(promtool, "test", "rules", *(path.name for path in ALERTS_TESTS))

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(ALERTS_TESTS)


def test_the_example_scrape_config_is_valid(promtool: str, tmp_path: Path) -> None:
    # promtool insists the token file exists: point the copy at one of ours.
    token = tmp_path / "labdispatch-ops.token"
    token.write_text("ldt_example\n")
    config = CONFIG.read_text()
    assert "credentials_file: /etc/prometheus/secrets/labdispatch-ops.token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/secrets/labdispatch-ops.token", str(token))
    )
    shutil.copy(ALERTS, tmp_path / ALERTS.name)

    checked = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    cases = [
        case
        for path in ALERTS_TESTS
        for case in re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", path.read_text())
    ]
    fires = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}

    assert alert_names() and set(alert_names()) == fires == quiet


def test_the_rules_read_only_metrics_that_metrics_serves(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    engine = make_engine(settings)
    try:
        migrate(engine)
        source = MetricsSource(
            session_factory(engine),
            settings,
            clock=lambda: datetime(2026, 11, 28, tzinfo=UTC),
            queues=lambda _: QueueDepths(dict.fromkeys(STAGE_QUEUES, 0), 0),
        )
        served = set()
        for family in source.collect():
            served.add(family.name + ("_total" if family.type == "counter" else ""))
    finally:
        engine.dispose()
    read = set(re.findall(r"\b(labdispatch_[a-z_]+)", ALERTS.read_text()))

    assert read and read <= served, sorted(read - served)
