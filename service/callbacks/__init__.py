"""Completion callbacks as HTTP: each client's signing secrets, the Standard Webhooks
signature, and the POST behind the SSRF guard. The job layer's outbox decides when
(:mod:`service.jobs.deliveries`); this package only sends."""
