"""ServerSettings: what one `erp-plugins serve` process needs, also readable from the environment.

uvicorn starts each of several workers by importing the app factory, so the CLI hands the settings over in
`ERP_PLUGINS_SERVE_*` variables; `ServerSettings.from_env()` reads them back in every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BIND = "127.0.0.1:8750"
DEFAULT_MAX_BODY = 10 * 1024 * 1024
_ENV = "ERP_PLUGINS_SERVE_"


@dataclass(frozen=True)
class ServerSettings:
    """`state`: the state location (None: the default); `max_body`: largest request body in bytes;
    `upload_dir`: where uploaded files for hook arguments naming files are kept (None: such arguments refused);
    `token_ttl`: seconds a verified token is trusted before it is read again (how fast a revocation applies)."""

    state: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    upload_dir: Path | None = None
    token_ttl: float = 1.0
    audit_flush: float = 1.0
    log_level: str = "info"

    def to_env(self) -> dict[str, str]:
        """The variables `from_env` reads (for uvicorn's worker processes)."""
        env = {_ENV + "MAX_BODY": str(self.max_body), _ENV + "LOG_LEVEL": self.log_level}
        if self.state is not None:
            env[_ENV + "STATE"] = self.state
        if self.upload_dir is not None:
            env[_ENV + "UPLOAD_DIR"] = str(self.upload_dir)
        return env

    @classmethod
    def from_env(cls) -> ServerSettings:
        upload = os.environ.get(_ENV + "UPLOAD_DIR")
        return cls(
            state=os.environ.get(_ENV + "STATE") or None,
            max_body=int(os.environ.get(_ENV + "MAX_BODY", DEFAULT_MAX_BODY)),
            upload_dir=Path(upload) if upload else None,
            log_level=os.environ.get(_ENV + "LOG_LEVEL", "info"),
        )
