"""Operating the gateways (protocol.md §7): :mod:`.bus` is what each gateway answers
on NATS about its connections, :mod:`.routes` the HTTP API and console for administrators
(the page itself is the repository's ``admin/`` folder)."""
