"""Settings: every environment variable of jobpool, typed and validated once at start-up.

Sizes are bytes, durations carry their unit in the name (``_MS``, ``_S``). Queue limits
count per gunicorn worker; ``JOBPOOL_CPU_WORKERS`` counts for the whole host.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from service.errors import ConfigError
from service.keys import KeyEntry, env_entries

PREFIX = "JOBPOOL_"


def vcpus() -> int:
    """Logical CPUs of this host (psutil; 1 when it cannot tell)."""
    return psutil.cpu_count(logical=True) or 1


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw, 10)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"{value} is out of range (must be {bound})")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        if not lo <= value <= hi:  # also refuses nan
            raise ValueError(f"{raw} is out of range (must be between {lo:g} and {hi:g})")
        return value

    return parse


def _optional_path(raw: str) -> Path | None:
    return Path(raw) if raw.strip() else None


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use 1/0, true/false, on/off)")


def _range_ms(raw: str) -> tuple[int, int] | None:
    """``""``/``off`` → None; ``"30"`` → (30, 30); ``"5-55"`` → (5, 55)."""
    text = raw.strip().lower()
    if text in {"", "0", "off"}:
        return None
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise ValueError(f"{raw!r} is not a millisecond range like 5-55") from None
    if lo < 0 or hi < lo or hi > 60_000:
        raise ValueError(f"{raw!r} must be LO-HI with 0 <= LO <= HI <= 60000")
    return (lo, hi)


def _bind(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{raw!r} is not HOST:PORT")
    return raw


def _optional_bind(raw: str) -> str | None:
    """``""``/``off`` → None; else HOST:PORT."""
    if raw.strip().lower() in {"", "off"}:
        return None
    return _bind(raw.strip())


def _log_level(raw: str) -> str:
    level = raw.strip().lower()
    if level not in {"debug", "info", "warning", "error", "critical"}:
        raise ValueError(f"{raw!r} is not one of debug, info, warning, error, critical")
    return level


def _providers(raw: str) -> tuple[tuple[str, str], ...]:
    """``name=url,name=url`` → ((name, url), ...): names unique, URLs http(s)."""
    out: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, url = part.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ValueError(f"{part!r} is not NAME=URL (name: letters, digits, _ . -)")
        if not re.fullmatch(r"https?://[^\s]+", url):
            raise ValueError(f"provider {name}: {url!r} is not an http(s) URL")
        if any(name == n for n, _ in out):
            raise ValueError(f"provider {name} is named twice")
        out.append((name, url))
    return tuple(out)


@dataclass(frozen=True)
class StoreUrl:
    """Where the job store lives: SQLite shards in a directory, or a Redis server."""

    scheme: Literal["sqlite", "redis", "rediss"]
    #: The SQLite directory (``sqlite``), or the whole URL as given (``redis``, ``rediss``).
    target: str

    @property
    def is_redis(self) -> bool:
        return self.scheme != "sqlite"

    @property
    def path(self) -> Path:
        if self.is_redis:
            raise ValueError("a Redis store has no path")
        return Path(self.target)

    def __repr__(self) -> str:
        return f"StoreUrl({self.redacted()!r})"

    def redacted(self) -> str:
        """The URL without its password, for logs and errors."""
        return _hide_password(self.target) if self.is_redis else f"sqlite://{self.target}"


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _store_url(raw: str) -> StoreUrl:
    """``sqlite:///DIR`` (an absolute directory), ``redis://HOST[:PORT][/DB]``, ``rediss://…``."""
    text = raw.strip()
    shown = repr(_hide_password(text))  # errors are printed: never with the password
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite" and sep:
        if not rest.startswith("/") or not rest.strip("/"):
            raise ValueError(f"{shown} must name an absolute directory: sqlite:///var/lib/jobpool")
        return StoreUrl("sqlite", "/" + rest.lstrip("/"))
    if scheme not in {"redis", "rediss"} or not sep:
        raise ValueError(f"{shown} is not a sqlite:///DIR, redis:// or rediss:// URL")
    parts = urllib.parse.urlsplit(text)
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(f"{shown} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{shown} names no host: {scheme}://HOST[:PORT][/DB]")
    db = parts.path.strip("/")
    if db and not (db.isdigit() and int(db) < 1 << 16):
        raise ValueError(f"{shown}: the database after the host must be a number")
    return StoreUrl("rediss" if scheme == "rediss" else "redis", text)


def port_of(bind: str) -> int:
    """The port of a HOST:PORT address."""
    return int(bind.rpartition(":")[2])


def _setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All of jobpool's settings; build with :meth:`from_env`."""

    bind: str = _setting("BIND", "127.0.0.1:8000", _bind, "HOST:PORT the server listens on")
    workers: int = _setting(
        "WORKERS", 0, _int(0, 256), "gunicorn worker processes; 0 means one per vCPU"
    )
    keepalive_s: int = _setting(
        "KEEPALIVE_S", 75, _int(1, 3600), "idle keep-alive; longer than an ALB's 60 s"
    )
    graceful_timeout_s: int = _setting(
        "GRACEFUL_TIMEOUT_S", 30, _int(1, 3600), "SIGTERM: time to finish running jobs"
    )
    worker_timeout_s: int = _setting(
        "WORKER_TIMEOUT_S", 30, _int(2, 3600), "a silent worker is killed after this"
    )
    state_dir: Path = _setting(
        "STATE_DIR", Path("var"), Path, "SQLite files (by default), slot and cpu-token locks"
    )
    store_url: StoreUrl | None = _setting(
        "STORE_URL",
        None,
        _store_url,
        "the job store: sqlite:///DIR, or redis://HOST:PORT/DB (rediss:// for TLS) for a fleet",
    )
    lease_s: int = _setting(
        "LEASE_S", 30, _int(2, 3600), "Redis store: a host silent this long loses its running jobs"
    )
    fleet_queue_max: int = _setting(
        "FLEET_QUEUE_MAX", 10_000, _int(1), "Redis store: jobs waiting in the shared queue per pool"
    )
    io_threads: int = _setting("IO_THREADS", 32, _int(1, 1024), "io pool threads per worker")
    cpu_workers: int = _setting(
        "CPU_WORKERS", 0, _int(0, 1024), "cpu processes on the whole host; 0 means vCPUs"
    )
    cpu_nice: int = _setting("CPU_NICE", 10, _int(0, 19), "niceness of the cpu processes")
    io_queue_max: int = _setting(
        "IO_QUEUE_MAX", 4096, _int(1), "io tasks queued or running, per worker"
    )
    cpu_queue_max: int = _setting(
        "CPU_QUEUE_MAX", 64, _int(1), "cpu jobs queued or running, per worker"
    )
    admission_wait_ms: int = _setting(
        "ADMISSION_WAIT_MS", 0, _int(0, 60_000), "wait for a pool slot before 503; 0: refuse"
    )
    batch_max: int = _setting("BATCH_MAX", 1000, _int(1, 100_000), "items per parcel batch")
    body_max: int = _setting("BODY_MAX", 1 << 20, _int(1), "request body bytes (JSON routes)")
    drain_max: int = _setting(
        "DRAIN_MAX", 32 << 20, _int(0), "bytes of a refused body dropped so its client sees the 4xx"
    )
    result_max: int = _setting("RESULT_MAX", 16 << 20, _int(1), "bytes of one stored result")
    store_max_bytes: int = _setting(
        "STORE_MAX_BYTES", 0, _int(0), "cap on each SQLite shard file; 0: the disk is the cap"
    )
    payload_max_bytes: int = _setting(
        "PAYLOAD_MAX_BYTES", 0, _int(0),
        "cap on the host's payload files (SQLite store); 0: the disk is the cap",
    )  # fmt: skip
    result_ttl_s: int = _setting(
        "RESULT_TTL_S", 86_400, _int(1), "finished jobs and their results are kept this long"
    )
    max_attempts: int = _setting(
        "MAX_ATTEMPTS", 3, _int(1, 100), "runs of one job before it is failed for good"
    )
    wait_max_s: int = _setting(
        "WAIT_MAX_S", 60, _int(0, 3600), "longest Prefer: wait a request may ask for"
    )
    schedule_max_s: int = _setting(
        "SCHEDULE_MAX_S", 30 * 86_400, _int(1),
        "farthest ahead a job may be scheduled (Job-Delay, Job-Not-Before)",
    )  # fmt: skip
    cancel_grace_s: int = _setting(
        "CANCEL_GRACE_S", 10, _int(0, 3600),
        "a cancelled io job that has not stopped by then ends cancelled, its result unused",
    )  # fmt: skip
    idempotency_ttl_s: int = _setting(
        "IDEMPOTENCY_TTL_S", 86_400, _int(60),
        "how long an Idempotency-Key names the job it made (a retry within it is not a new job)",
    )  # fmt: skip
    idempotency_key_max: int = _setting(
        "IDEMPOTENCY_KEY_MAX", 255, _int(1, 4096), "characters of an Idempotency-Key"
    )
    list_max: int = _setting(
        "LIST_MAX", 200, _int(1, 10_000), "most jobs one page of GET /v1/jobs holds"
    )
    poll_hint_s: int = _setting(
        "POLL_HINT_S", 1, _int(1, 3600), "Retry-After of a 202 and of an unfinished job"
    )
    parcel_latency_ms: tuple[int, int] | None = _setting(
        "PARCEL_LATENCY_MS", None, _range_ms, "simulated storage latency per parcel, e.g. 5-55"
    )
    log_level: str = _setting("LOG_LEVEL", "info", _log_level, "debug, info, warning, error")
    metrics: bool = _setting(
        "METRICS", True, _bool, "Prometheus metrics, aggregated over the workers: on or off"
    )
    metrics_bind: str | None = _setting(
        "METRICS_BIND", None, _optional_bind, "HOST:PORT of a listener for /metrics alone"
    )
    janitor_interval_s: int = _setting(
        "JANITOR_INTERVAL_S", 5, _int(1, 3600), "how often expired jobs and orphans are handled"
    )
    image_body_max: int = _setting("IMAGE_BODY_MAX", 25 << 20, _int(1), "bytes of one image upload")
    image_max_pixels: int = _setting(
        "IMAGE_MAX_PIXELS", 50_000_000, _int(1), "width x height of an input or output image"
    )
    image_max_side: int = _setting(
        "IMAGE_MAX_SIDE", 10_000, _int(1, 65_535), "largest requested output width or height"
    )
    image_timeout_s: int = _setting("IMAGE_TIMEOUT_S", 60, _int(1, 3600), "one image job")
    fetch_connect_timeout_ms: int = _setting(
        "FETCH_CONNECT_TIMEOUT_MS", 5000, _int(1, 600_000), "fetch: connect timeout"
    )
    fetch_read_timeout_ms: int = _setting(
        "FETCH_READ_TIMEOUT_MS", 15_000, _int(1, 600_000), "fetch: timeout between reads"
    )
    fetch_deadline_ms: int = _setting(
        "FETCH_DEADLINE_MS", 60_000, _int(1, 3_600_000), "fetch: whole fetch, redirects included"
    )
    fetch_max_bytes: int = _setting("FETCH_MAX_BYTES", 10 << 20, _int(1), "fetch: response size")
    fetch_max_redirects: int = _setting(
        "FETCH_MAX_REDIRECTS", 5, _int(0, 50), "fetch: redirects followed"
    )
    fetch_store_body_max: int = _setting(
        "FETCH_STORE_BODY_MAX", 1 << 20, _int(0), "fetch: largest body kept in the result"
    )
    fetch_max_url_length: int = _setting(
        "FETCH_MAX_URL_LENGTH", 2048, _int(16, 65_536), "fetch: characters of a URL"
    )
    fetch_allow_private: bool = _setting(
        "FETCH_ALLOW_PRIVATE", False, _bool, "fetch: lift the SSRF guard (tests, private use)"
    )
    search_providers: tuple[tuple[str, str], ...] = _setting(
        "SEARCH_PROVIDERS", (), _providers, "search upstreams: name=url,name=url"
    )
    search_deadline_ms: int = _setting(
        "SEARCH_DEADLINE_MS", 2000, _int(1, 60_000), "search: the whole answer"
    )
    search_provider_timeout_ms: int = _setting(
        "SEARCH_PROVIDER_TIMEOUT_MS", 1500, _int(1, 60_000), "search: one provider"
    )
    search_max_bytes: int = _setting(
        "SEARCH_MAX_BYTES", 1 << 20, _int(1), "search: one provider's answer"
    )
    search_query_max: int = _setting(
        "SEARCH_QUERY_MAX", 256, _int(1, 8192), "search: characters of q"
    )
    # -- completion callbacks (Job-Callback), signed per Standard Webhooks ----------------
    callback_secrets_file: Path | None = _setting(
        "CALLBACK_SECRETS_FILE", None, _optional_path,
        "file of each client's signing secrets: CLIENT whsec_... [whsec_...], one a line",
    )  # fmt: skip
    callback_horizon_s: int = _setting(
        "CALLBACK_HORIZON_S", 21_600, _int(1),
        "a callback not delivered this long after its job ended is given up (kept, re-sendable)",
    )  # fmt: skip
    callback_retry_max_s: int = _setting(
        "CALLBACK_RETRY_MAX_S", 600, _int(1, 86_400), "longest wait between two callback attempts"
    )
    callback_timeout_ms: int = _setting(
        "CALLBACK_TIMEOUT_MS", 10_000, _int(1, 600_000),
        "one callback POST: connecting, and waiting for the answer's status",
    )  # fmt: skip
    callback_concurrency: int = _setting(
        "CALLBACK_CONCURRENCY", 4, _int(1, 256),
        "callback POSTs at once per worker, on io threads of their own (jobs keep theirs)",
    )  # fmt: skip
    callback_url_max: int = _setting(
        "CALLBACK_URL_MAX", 2048, _int(16, 8192), "characters of a Job-Callback URL"
    )
    callback_allow_private: bool = _setting(
        "CALLBACK_ALLOW_PRIVATE", False, _bool,
        "callbacks: lift the SSRF guard (tests, private deployments)",
    )  # fmt: skip
    # -- security: API keys, per-client limits (host- or fleet-wide), request limits ---
    auth: bool = _setting(
        "AUTH", True, _bool, "require an API key (not on health checks and /openapi.json)"
    )
    api_keys: tuple[KeyEntry, ...] = _setting(
        "API_KEYS", (), env_entries, "API keys as NAME:sha256:HEX entries, comma-separated"
    )
    api_keys_file: Path | None = _setting(
        "API_KEYS_FILE", None, _optional_path, "file of API key entries, one a line"
    )
    client_rate: float = _setting(
        "CLIENT_RATE",
        1000.0,
        _float(0, 1e9),
        "requests/s per client on the host (in the fleet with Redis); 0: off",
    )
    client_burst: int = _setting(
        "CLIENT_BURST", 2000, _int(1), "requests a client may send at once above its rate"
    )
    client_max_inflight: int = _setting(
        "CLIENT_MAX_INFLIGHT",
        1000,
        _int(0),
        "jobs per client queued or running on the host (in the fleet with Redis); 0: off",
    )
    url_max: int = _setting("URL_MAX", 4096, _int(64, 8190), "bytes of path and query")
    query_params_max: int = _setting(
        "QUERY_PARAMS_MAX", 20, _int(1, 1000), "query parameters per request"
    )
    request_line_max: int = _setting(
        "REQUEST_LINE_MAX", 8190, _int(256, 8190), "bytes of the HTTP request line (gunicorn)"
    )
    header_count_max: int = _setting(
        "HEADER_COUNT_MAX", 100, _int(10, 32768), "header fields per request (gunicorn)"
    )
    header_bytes_max: int = _setting(
        "HEADER_BYTES_MAX", 8190, _int(256, 65536), "bytes of one header field (gunicorn)"
    )
    # -- the web dashboard (service/ui) ------------------------------------------------
    ui: bool = _setting(
        "UI", False, _bool, "the web dashboard at /ui (same keys and limits as the API): on or off"
    )
    ui_session_s: int = _setting(
        "UI_SESSION_S", 28_800, _int(60, 30 * 86_400), "dashboard: how long a login lasts"
    )
    ui_poll_s: int = _setting(
        "UI_POLL_S", 2, _int(1, 60),
        "dashboard: how often an open page asks for fresh figures (and fleet hosts publish)",
    )  # fmt: skip
    header_timeout_s: int = _setting(
        "HEADER_TIMEOUT_S", 10, _int(1, 3600),
        "a request's line and headers must arrive within this of its first byte; else 408",
    )  # fmt: skip
    body_timeout_s: int = _setting(
        "BODY_TIMEOUT_S", 10, _int(1, 3600),
        "each such span of a body read must bring JOBPOOL_BODY_MIN_RATE bytes/s; else 408",
    )  # fmt: skip
    body_min_rate: int = _setting(
        "BODY_MIN_RATE", 8192, _int(0), "bytes/s a body must come at (per JOBPOOL_BODY_TIMEOUT_S)"
    )
    # Not a user setting: gunicorn.conf.py hands the real worker count to each worker.
    gunicorn_workers: int = _setting(
        "_GUNICORN_WORKERS", 1, _int(1, 256), "set by gunicorn.conf.py for its workers"
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``JOBPOOL_*`` variable; raise :class:`ConfigError` naming a bad one."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.metadata["env"]
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as ex:
                raise ConfigError(f"{name}: {ex}") from None
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.metrics_bind is not None and port_of(self.metrics_bind) == port_of(self.bind):
            raise ConfigError(
                f"{PREFIX}METRICS_BIND: {self.metrics_bind} has the port of {PREFIX}BIND"
                f" ({self.bind}); /metrics needs a listener of its own"
            )
        if self.workers == 0:
            object.__setattr__(self, "workers", vcpus())
        if self.cpu_workers == 0:
            object.__setattr__(self, "cpu_workers", vcpus())
        if self.store_url is None:
            object.__setattr__(self, "store_url", StoreUrl("sqlite", str(self.state_dir)))

    @property
    def store(self) -> StoreUrl:
        """The job store's URL (SQLite in the state directory unless JOBPOOL_STORE_URL)."""
        assert self.store_url is not None  # filled in by __post_init__
        return self.store_url

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every user setting, for the README."""
        rows = []
        for f in dataclasses.fields(cls):
            if f.metadata["env"].startswith("_"):
                continue
            rows.append((PREFIX + f.metadata["env"], repr(f.default), f.metadata["doc"]))
        return rows

    def cpu_processes_for(self, slot: int) -> int:
        """How many cpu processes the worker holding ``slot`` may start.

        The host budget is split evenly over the gunicorn workers; every worker gets at least
        one so it can serve cpu jobs, and host-wide tokens keep the running total within
        ``cpu_workers`` when there are more workers than that.
        """
        share, extra = divmod(self.cpu_workers, self.gunicorn_workers)
        return max(1, share + (1 if slot % self.gunicorn_workers < extra else 0))
