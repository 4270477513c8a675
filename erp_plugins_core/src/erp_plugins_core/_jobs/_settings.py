"""The job system's knobs (attempts, backoff, retention, leases), read from the environment or given to PluginHost.

Every value has a default an operator can live with; a malformed environment value is a ConfigError naming
the variable, never a silent fallback.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["JobSettings", "backoff_delay"]

_DAY_S = 86400.0


def _env_number(name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}; set it to {kind} >= {minimum:g} or unset it") from None
    if value < minimum or value != value:  # NaN compares unequal to itself
        raise ConfigError(f"{name}={raw!r} is too small; set it to a value >= {minimum:g} or unset it")
    return value


@dataclass(frozen=True, slots=True)
class JobSettings:
    """How deliveries and jobs are run and kept.

    max_attempts: runs of one plugin's part before it is failed (ERP_PLUGINS_JOB_ATTEMPTS, default 5).
    backoff_s / backoff_max_s: the wait before retry n is backoff_s * 2**(n-1), capped, with jitter taking it
    down to between half and all of that (ERP_PLUGINS_JOB_BACKOFF, default 2 s; ERP_PLUGINS_JOB_BACKOFF_MAX, 600 s).
    retention_s: finished events and jobs (results, errors) are kept this long (ERP_PLUGINS_JOB_RETENTION_DAYS,
    default 7 days); unfinished ones are never removed.
    lease_s: a claim whose worker has been silent this long is taken back and run again, so a killed worker's
    delivery is not lost (ERP_PLUGINS_JOB_LEASE, default 30 s; workers renew every third of it).
    poll_s: how often an idle SQLite worker looks for work another process queued (ERP_PLUGINS_JOB_POLL, 0.5 s);
    PostgreSQL workers are woken by LISTEN/NOTIFY and poll only as a fallback.
    """

    max_attempts: int = 5
    backoff_s: float = 2.0
    backoff_max_s: float = 600.0
    retention_s: float = 7 * _DAY_S
    lease_s: float = 30.0
    poll_s: float = 0.5

    @classmethod
    def from_env(cls) -> JobSettings:
        """Settings from the ERP_PLUGINS_JOB_* variables, defaults for those unset."""
        return cls(
            max_attempts=int(_env_number("ERP_PLUGINS_JOB_ATTEMPTS", 5, minimum=1, integer=True)),
            backoff_s=_env_number("ERP_PLUGINS_JOB_BACKOFF", 2.0, minimum=0.0),
            backoff_max_s=_env_number("ERP_PLUGINS_JOB_BACKOFF_MAX", 600.0, minimum=0.0),
            retention_s=_env_number("ERP_PLUGINS_JOB_RETENTION_DAYS", 7.0, minimum=0.0) * _DAY_S,
            lease_s=_env_number("ERP_PLUGINS_JOB_LEASE", 30.0, minimum=0.5),
            poll_s=_env_number("ERP_PLUGINS_JOB_POLL", 0.5, minimum=0.01),
        )


def backoff_delay(settings: JobSettings, attempts: int) -> float:
    """Seconds to wait before the next run after `attempts` failed runs: exponential, capped, with equal jitter.

    Jitter spreads the retries of many deliveries that failed together (a provider outage) so they do not all
    come back at the same instant.
    """
    full = min(settings.backoff_max_s, settings.backoff_s * 2 ** max(0, attempts - 1))
    return full / 2 + random.uniform(0, full / 2)  # noqa: S311 (spreading retries, not a secret)
