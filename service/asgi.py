"""What gunicorn loads: ``service.asgi:app``."""

from service import logs, tracing
from service.app import create_app
from service.config import Settings

settings = Settings.from_env()
# gunicorn.conf.py has set up JSON logs already; this covers any other ASGI server.
logs.configure(settings.log_level)
# Traced when the OTEL_EXPORTER_OTLP_* variables name an endpoint (service/tracing.py).
app = tracing.traced(create_app(settings))
