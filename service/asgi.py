"""What gunicorn loads: ``service.asgi:app``."""

from service import logs
from service.app import create_app
from service.config import Settings

settings = Settings.from_env()
# gunicorn.conf.py has set up JSON logs already; this covers any other ASGI server.
logs.configure(settings.log_level)
app = create_app(settings)
