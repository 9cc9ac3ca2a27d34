"""The Autobahn TestSuite against natsgate's own WebSocket layer (see ``echo``)."""
