"""The job layer: :mod:`service.jobs.layer` is its facade; the rest are its rooms, its two
stores (:mod:`service.jobs.sqlite`, :mod:`service.jobs.redis`) and its pools."""
