"""The HTTP API: one falcon resource per route, the middleware, problem documents and the
OpenAPI document. It talks to the job layer (:mod:`service.jobs.layer`) only."""
