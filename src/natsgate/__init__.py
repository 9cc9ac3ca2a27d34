"""natsgate: put NATS in front of browsers over one WebSocket."""

__version__ = "0.1.0"
