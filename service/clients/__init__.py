"""Per-client limits: a client's request rate and its jobs in flight.

- :mod:`service.clients.limits`: what the service holds: the :class:`ClientLimits`
  interface, its :class:`LimitSettings`, and :func:`for_store`, which picks the home below.
- :mod:`service.clients.bucket`: the token bucket and lease arithmetic, once (and its Lua
  twin for Redis).
- :mod:`service.clients.host`: one host's limits, a table its workers map (SQLite store).
- :mod:`service.clients.fleet`: the fleet's limits, kept in its Redis (Redis store).
"""
