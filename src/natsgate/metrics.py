"""Prometheus metrics (``GET /metrics``). Counted per frame, never per delivered envelope
inside a batch, so the hot path stays cheap."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per gateway, so tests can run several gateways in one process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge(
            "natsgate_open_connections", "Open WebSocket connections", registry=r
        )
        self.connections_total = Counter(
            "natsgate_accepted_connections_total", "Accepted WebSocket connections", registry=r
        )
        self.refused = Counter(
            "natsgate_upgrades_refused_total", "Refused upgrades", ["status"], registry=r
        )
        self.subscriptions = Gauge(
            "natsgate_subscriptions", "Live subscriptions by kind", ["kind"], registry=r
        )
        self.nats_subscriptions = Gauge(
            "natsgate_hub_subjects", "Distinct core subjects subscribed on NATS", registry=r
        )
        self.frames_in = Counter("natsgate_frames_in_total", "Client frames", registry=r)
        self.bytes_in = Counter("natsgate_bytes_in_total", "Client frame bytes", registry=r)
        self.frames_out = Counter("natsgate_frames_out_total", "Frames sent", registry=r)
        self.bytes_out = Counter("natsgate_bytes_out_total", "Bytes sent", registry=r)
        self.envelopes_out = Counter(
            "natsgate_envelopes_out_total", "Envelopes sent (a frame may batch several)", registry=r
        )
        self.errors = Counter(
            "natsgate_errors_total", "Error envelopes by code", ["code"], registry=r
        )
        self.backpressure_closes = Counter(
            "natsgate_backpressure_closes_total", "Slow clients disconnected", registry=r
        )
        self.cmd_latency = Histogram(
            "natsgate_command_seconds",
            "cmd round trip through NATS",
            ["outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.nats_connected = Gauge(
            "natsgate_nats_connected", "1 while NATS is connected", registry=r
        )
        self.logins = Counter("natsgate_logins_total", "Login attempts", ["outcome"], registry=r)
        self.nats_reconnects = Counter(
            "natsgate_nats_reconnects_total", "Times the NATS connection came back", registry=r
        )
        self.queued_bytes = Gauge(
            "natsgate_queued_bytes", "Bytes waiting in connections' send queues", registry=r
        )
        self.jwks_fetches = Counter(
            "natsgate_jwks_fetches_total",
            "Fetches of the identity provider's key set (JWT_JWKS_URL) by outcome",
            ["outcome"],
            registry=r,
        )
        self.jwks_keys = Gauge(
            "natsgate_jwks_keys", "Signing keys held from the identity provider", registry=r
        )


class Traffic:
    """Counters bumped per frame written or read: plain ints, cheaper than Prometheus'
    locks; the gateway moves them into :class:`Metrics` at scrape time."""

    __slots__ = ("bytes", "bytes_in", "envelopes", "frames", "frames_in")

    def __init__(self) -> None:
        self.frames = self.bytes = self.envelopes = self.frames_in = self.bytes_in = 0
