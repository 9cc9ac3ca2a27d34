"""One typed configuration object (deploy.md).

Values come from flags, then the environment (a ``.env`` file is read by the CLI), then
defaults.  A missing or malformed value raises :class:`ConfigError` with one line that
names it; the CLI prints that line and exits.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_SECRET_BYTES = 32
# Values people paste from examples; refused whatever their length (security.md).
_PLACEHOLDERS = re.compile(
    r"(change[-_ ]?me|changeit|replace[-_ ]?me|your[-_ ]?secret|secret|example|"
    r"placeholder|password|xxx+|todo)([-_ ]?(please|now|later|here|secret|key|\d+))*",
    re.IGNORECASE,
)

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
COMPRESSION_MODES = ("off", "on", "auto")
DEFAULT_PROXY = "http://127.0.0.1:1234"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Config:
    # HTTP edge
    host: str = "0.0.0.0"  # HOST / --host
    port: int = 8080  # PORT / --port; 0 picks a free port
    allowed_origins: tuple[str, ...] = ()  # ALLOWED_ORIGINS; empty: the request's own Host
    cookie_secure: bool = False  # COOKIE_SECURE=1: always mark the jwt cookie Secure
    proxy: str | None = None  # --proxy [URL]: front-end dev server, else built-in static
    log_level: str = "info"  # LOG_LEVEL / --log: debug, info, warn or error
    workers: int = 1  # WORKERS / --workers: processes sharing the port (SO_REUSEPORT)
    log_format: str = "text"  # LOG_FORMAT: text, or json (one object per line)
    static_dir: Path | None = None  # STATIC_DIR: your app's files at /; None: the demo's
    serve_static: bool = True  # STATIC_DIR=none (or --no-static): serve no files at all
    compression: str = "auto"  # COMPRESSION: permessage-deflate off, on, or auto (large frames)
    compression_min_bytes: int = 256  # COMPRESSION_MIN_BYTES: auto deflates frames this big

    # NATS
    local: bool = False  # --local: run an embedded nats-server
    data_dir: Path = Path("data")  # --data-dir: embedded server's JetStream storage
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)  # NATS_URL, comma separated
    nats_creds: Path | None = None  # NATS_CREDS: a .creds file
    nats_jwt: str | None = None  # NATS_JWT + NATS_NKEY: user JWT and its nkey seed
    nats_nkey: str | None = None
    nats_user: str | None = None  # NATS_USER + NATS_PASSWORD (what --local makes)
    nats_password: str = field(default="", repr=False)
    nats_name: str = "natsgate"  # FLY_APP_NAME + PRIMARY_REGION
    auth_bucket: str = "auth_users"  # AUTH_BUCKET: capabilities, key = user id
    auth_creds_bucket: str = "auth_creds"  # AUTH_CREDS_BUCKET: argon2id hashes
    auth_revoked_bucket: str = "auth_revoked"  # AUTH_REVOKED_BUCKET: revoked tokens
    presence_bucket: str = "presence"  # PRESENCE_BUCKET: members, one key per connection
    presence_ttl_s: float = 30.0  # PRESENCE_TTL (seconds): members of a dead gateway leave
    audit_prefix: str = "natsgate.audit"  # AUDIT_PREFIX: audit events subject ("": off)

    # Auth
    jwt_secret: str = field(default="", repr=False)  # JWT_SECRET (HS256)
    jwt_secret_ephemeral: bool = False  # made up for --local
    jwt_jwks_url: str | None = None  # JWT_JWKS_URL: an identity provider's key set
    jwt_issuer: str | None = None  # JWT_ISSUER: required ``iss``, when set
    jwt_audience: str | None = None  # JWT_AUDIENCE: required ``aud``, when set
    jwt_user_claim: str = "sub"  # JWT_USER_CLAIM: the claim that holds the user id
    web_hash_salt: str = field(default="", repr=False)  # WEB_HASH_SALT: password pepper

    # Limits, each with its unit
    backpressure_ms: int = 250  # BACKPRESSURE_MS: how long a frame may wait to be queued
    max_frame_bytes: int = 1_048_576  # MAX_FRAME_BYTES: largest client frame
    max_subs: int = 1000  # MAX_SUBS: subscriptions per connection, all kinds
    ping_interval_s: float = 20.0  # PING_INTERVAL (seconds)
    ping_timeout_s: float = 20.0  # PING_TIMEOUT (seconds)
    cmd_timeout_ms: int = 5000  # CMD_TIMEOUT_MS: default for cmd without timeout_ms
    outbox_bytes: int = 4_194_304  # OUTBOX_BYTES: a connection's send queue bound
    notsent_lowat_bytes: int = 131_072  # NOTSENT_LOWAT_BYTES: kernel unsent bytes/socket (0: off)
    max_pending_cmds: int = 100  # MAX_PENDING_CMDS: commands in flight per connection
    max_conns_per_ip: int = 0  # MAX_CONNS_PER_IP: 0 means no limit
    max_conns_per_user: int = 100  # MAX_CONNS_PER_USER: open WebSockets of one user (0: none)
    max_feeds: int = 64  # MAX_FEEDS: KV watches + stream subscriptions per connection
    max_joins: int = 16  # MAX_JOINS: presence joins per connection
    max_durables_per_user: int = 100  # MAX_DURABLES_PER_USER: durables of a user per stream
    durable_inactive_s: float = 7 * 86400  # DURABLE_INACTIVE (seconds): NATS removes it then
    rate_per_s: float = 200.0  # RATE_PER_S: client envelopes per second (0 = no limit)
    rate_burst: int = 400  # RATE_BURST: client envelopes allowed in a burst
    trusted_proxies: tuple[IPNetwork, ...] = ()  # TRUSTED_PROXIES: CIDRs, X-Forwarded-For
    drain_timeout_s: float = 10.0  # DRAIN_TIMEOUT: SIGTERM grace

    @property
    def nats_url(self) -> str:
        return ",".join(self.nats_urls)


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _nats_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not urls:
        raise ConfigError("NATS_URL is empty")
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ConfigError(f"NATS_URL has an invalid URL {url!r} (want nats://host:port)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ConfigError(f"NATS_URL has an invalid port in {url!r}") from None
    return urls


def _origins(raw: str) -> tuple[str, ...]:
    out = []
    for origin in (o.strip().rstrip("/") for o in raw.split(",")):
        if not origin:
            continue
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ConfigError(f"ALLOWED_ORIGINS has an invalid origin {origin!r}")
        out.append(origin.lower())
    return tuple(out)


def check_secret(raw: str) -> str:
    """JWT_SECRET as security.md wants it, or :class:`ConfigError`."""
    if _PLACEHOLDERS.fullmatch(raw.strip()):
        raise ConfigError("JWT_SECRET is a placeholder; set a random value of 32 bytes or more")
    if len(raw.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"JWT_SECRET is {len(raw.encode())} bytes; it must be at least {MIN_SECRET_BYTES} "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if len(set(raw)) < 8:
        raise ConfigError("JWT_SECRET repeats a few characters; set a random value")
    return raw


def _proxies(raw: str) -> tuple[IPNetwork, ...]:
    out = []
    for cidr in (c.strip() for c in raw.split(",")):
        if not cidr:
            continue
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"TRUSTED_PROXIES has an invalid address or CIDR {cidr!r}") from None
    return tuple(out)


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    v = raw.strip().lower()
    if v not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return v


def _url(name: str, raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.strip()


def _subject_prefix(name: str, raw: str) -> str:
    """A literal NATS subject (no wildcards), or empty."""
    v = raw.strip()
    if v and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v):
        raise ConfigError(f"{name} must be a NATS subject without wildcards, got {raw!r}")
    return v


def _bucket(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", raw):
        raise ConfigError(f"{name} must be a KV bucket name (letters, digits, - and _)")
    return raw


@dataclass(frozen=True, slots=True)
class Flags:
    """What the command line said; ``None`` means not given."""

    local: bool = False
    proxy: str | None = None
    log: str | None = None
    host: str | None = None
    port: int | None = None
    data_dir: str | None = None
    workers: int | None = None
    no_static: bool = False


def load(flags: Flags, env: Mapping[str, str] | None = None) -> Config:
    """Build the config, raising :class:`ConfigError` at the first bad value."""
    env = os.environ if env is None else env

    def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = env.get(name)
        return default if raw is None or raw == "" else parse(name, raw)

    d = Config()
    port = (
        flags.port
        if flags.port is not None
        else get("PORT", lambda n, r: _int(n, r, 0, 65535), d.port)
    )
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    log = flags.log or env.get("LOG_LEVEL") or d.log_level
    if log not in LOG_LEVELS:
        raise ConfigError(f"--log must be one of {', '.join(LOG_LEVELS)}, got {log!r}")
    workers = (
        flags.workers
        if flags.workers is not None
        else get("WORKERS", lambda n, r: _int(n, r, 1, 256), 1)
    )
    if not 1 <= workers <= 256:
        raise ConfigError(f"--workers must be between 1 and 256, got {workers}")

    jwks = get("JWT_JWKS_URL", _url, None)
    secret = env.get("JWT_SECRET", "")
    ephemeral = False
    if secret:
        check_secret(secret)
    elif flags.local:
        secret = secrets.token_urlsafe(32)
        ephemeral = True
    elif jwks is None:
        raise ConfigError(
            "JWT_SECRET is required (or JWT_JWKS_URL, or --local for an ephemeral secret)"
        )
    claim = env.get("JWT_USER_CLAIM", "").strip() or d.jwt_user_claim
    static = env.get("STATIC_DIR", "").strip()
    serve_static = static.lower() not in ("none", "off") and not flags.no_static
    static_dir = Path(static) if static and serve_static else None
    if static_dir is not None and not static_dir.is_dir():
        raise ConfigError(f"STATIC_DIR names a folder that does not exist: {static}")

    creds = env.get("NATS_CREDS") or None
    if creds and not Path(creds).is_file():
        raise ConfigError(f"NATS_CREDS names a file that does not exist: {creds}")
    jwt_, nkey = env.get("NATS_JWT") or None, env.get("NATS_NKEY") or None
    if bool(jwt_) != bool(nkey):
        raise ConfigError("NATS_JWT and NATS_NKEY must be given together")
    if nkey and not nkey.startswith("SU"):
        raise ConfigError("NATS_NKEY must be a user nkey seed (starting with 'SU')")
    user, password = env.get("NATS_USER") or None, env.get("NATS_PASSWORD", "")
    if bool(user) != bool(password):
        raise ConfigError("NATS_USER and NATS_PASSWORD must be given together")

    app, region = env.get("FLY_APP_NAME"), env.get("PRIMARY_REGION")
    name = "-".join(p for p in (app, region) if p) or d.nats_name

    return Config(
        host=flags.host or env.get("HOST") or d.host,
        port=port,
        allowed_origins=get("ALLOWED_ORIGINS", lambda n, r: _origins(r), d.allowed_origins),
        cookie_secure=get("COOKIE_SECURE", _bool, d.cookie_secure),
        proxy=flags.proxy,
        log_level=log,
        workers=workers,
        log_format=get("LOG_FORMAT", lambda n, r: _choice(n, r, LOG_FORMATS), d.log_format),
        static_dir=static_dir,
        serve_static=serve_static,
        compression=get(
            "COMPRESSION", lambda n, r: _choice(n, r, COMPRESSION_MODES), d.compression
        ),
        compression_min_bytes=get(
            "COMPRESSION_MIN_BYTES", lambda n, r: _int(n, r, 0, 1 << 30), d.compression_min_bytes
        ),
        local=flags.local,
        data_dir=Path(flags.data_dir) if flags.data_dir else d.data_dir,
        nats_urls=get("NATS_URL", lambda n, r: _nats_urls(r), d.nats_urls),
        nats_creds=Path(creds) if creds else None,
        nats_jwt=jwt_,
        nats_nkey=nkey,
        nats_user=user,
        nats_password=password,
        nats_name=name,
        auth_bucket=get("AUTH_BUCKET", _bucket, d.auth_bucket),
        auth_creds_bucket=get("AUTH_CREDS_BUCKET", _bucket, d.auth_creds_bucket),
        auth_revoked_bucket=get("AUTH_REVOKED_BUCKET", _bucket, d.auth_revoked_bucket),
        presence_bucket=get("PRESENCE_BUCKET", _bucket, d.presence_bucket),
        presence_ttl_s=get("PRESENCE_TTL", lambda n, r: _float(n, r, 1, 86400), d.presence_ttl_s),
        audit_prefix=_subject_prefix("AUDIT_PREFIX", env.get("AUDIT_PREFIX", d.audit_prefix)),
        jwt_secret=secret,
        jwt_secret_ephemeral=ephemeral,
        jwt_jwks_url=jwks,
        jwt_issuer=env.get("JWT_ISSUER", "").strip() or None,
        jwt_audience=env.get("JWT_AUDIENCE", "").strip() or None,
        jwt_user_claim=claim,
        web_hash_salt=env.get("WEB_HASH_SALT", ""),
        backpressure_ms=get(
            "BACKPRESSURE_MS", lambda n, r: _int(n, r, 1, 60_000), d.backpressure_ms
        ),
        max_frame_bytes=get(
            "MAX_FRAME_BYTES", lambda n, r: _int(n, r, 256, 64 << 20), d.max_frame_bytes
        ),
        max_subs=get("MAX_SUBS", lambda n, r: _int(n, r, 1, 1_000_000), d.max_subs),
        ping_interval_s=get(
            "PING_INTERVAL", lambda n, r: _float(n, r, 0.05, 3600), d.ping_interval_s
        ),
        ping_timeout_s=get("PING_TIMEOUT", lambda n, r: _float(n, r, 0.05, 3600), d.ping_timeout_s),
        cmd_timeout_ms=get("CMD_TIMEOUT_MS", lambda n, r: _int(n, r, 1, 300_000), d.cmd_timeout_ms),
        outbox_bytes=get("OUTBOX_BYTES", lambda n, r: _int(n, r, 1024, 1 << 30), d.outbox_bytes),
        notsent_lowat_bytes=get(
            "NOTSENT_LOWAT_BYTES", lambda n, r: _int(n, r, 0, 1 << 30), d.notsent_lowat_bytes
        ),
        max_pending_cmds=get(
            "MAX_PENDING_CMDS", lambda n, r: _int(n, r, 1, 100_000), d.max_pending_cmds
        ),
        max_conns_per_ip=get(
            "MAX_CONNS_PER_IP", lambda n, r: _int(n, r, 0, 10_000_000), d.max_conns_per_ip
        ),
        max_conns_per_user=get(
            "MAX_CONNS_PER_USER", lambda n, r: _int(n, r, 0, 10_000_000), d.max_conns_per_user
        ),
        max_feeds=get("MAX_FEEDS", lambda n, r: _int(n, r, 1, 100_000), d.max_feeds),
        max_joins=get("MAX_JOINS", lambda n, r: _int(n, r, 1, 100_000), d.max_joins),
        max_durables_per_user=get(
            "MAX_DURABLES_PER_USER", lambda n, r: _int(n, r, 1, 100_000), d.max_durables_per_user
        ),
        durable_inactive_s=get(
            "DURABLE_INACTIVE", lambda n, r: _float(n, r, 60, 365 * 86400), d.durable_inactive_s
        ),
        trusted_proxies=get("TRUSTED_PROXIES", lambda n, r: _proxies(r), d.trusted_proxies),
        rate_per_s=get("RATE_PER_S", lambda n, r: _float(n, r, 0, 1e9), d.rate_per_s),
        rate_burst=get("RATE_BURST", lambda n, r: _int(n, r, 1, 10_000_000), d.rate_burst),
        drain_timeout_s=get("DRAIN_TIMEOUT", lambda n, r: _float(n, r, 0, 3600), d.drain_timeout_s),
    )
