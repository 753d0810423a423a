"""gunicorn entry for the tests: ``tests.extension_app:app``."""

from service import tracing
from service.app import create_app
from tests.extension import extend

app = tracing.traced(create_app(extend=extend))
