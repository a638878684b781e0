"""The layering rules of ARCHITECTURE.md, enforced: `workers` → `pipeline`, never back,
and no broker library in the domain (contracts in pyproject.toml, checked by import-linter).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command;"
            " sys.exit(lint_imports_command())",
            "--no-cache",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_layer_contracts_hold() -> None:
    """Including the layers inside pipeline/: sealing and transports below the ledger and
    the delivery steps, the readers (HL7, HPRIM) below the directory, no cycle among the
    HL7 reader's or the delivery steps' modules."""
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 6 kept, 0 broken." in run.stdout


def test_the_contract_catches_a_pipeline_module_importing_workers(tmp_path: Path) -> None:
    """The check itself can fail: a copy of the tree with one bad import breaks it."""
    for package in ("pipeline", "workers"):
        for source in (ROOT / package).rglob("*.py"):
            target = tmp_path / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (tmp_path / "pipeline" / "leak.py").write_text(
        textwrap.dedent("""\
            from workers import cli  # noqa: F401  (the import the contract forbids)
        """),
        encoding="utf-8",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.');"
            " from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--no-cache",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0
    assert "pipeline.leak -> workers" in run.stdout
