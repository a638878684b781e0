"""Settings from `LABDISPATCH_*` environment variables, with embedded defaults.

With nothing set, labdispatch runs on one machine with no external service: the ledger is
a SQLite file under `var/` (created on first use). Production points
`LABDISPATCH_DATABASE_URL` at PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigurationError

PREFIX = "LABDISPATCH_"


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        var_dir = Path(env.get(PREFIX + "VAR_DIR", "var"))
        database_url = env.get(PREFIX + "DATABASE_URL", "").strip()
        if not database_url:
            database_url = f"sqlite:///{var_dir / 'labdispatch.db'}"
        if "://" not in database_url:
            raise ConfigurationError(
                f"{PREFIX}DATABASE_URL must be a URL such as "
                "postgresql+psycopg://user@host/db or sqlite:///path.db"
            )
        return cls(var_dir=var_dir, database_url=database_url)

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_var_dir(self) -> Path:
        """Create `var/` on first use so the embedded default needs no set-up step."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return self.var_dir
