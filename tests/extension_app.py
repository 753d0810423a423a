"""gunicorn entry for the tests: ``tests.extension_app:app``."""

from service.app import create_app
from tests.extension import extend

app = create_app(extend=extend)
