"""What gunicorn loads: ``service.asgi:app``."""

import logging

from service.app import create_app
from service.config import Settings

settings = Settings.from_env()
logging.basicConfig(
    level=settings.log_level.upper(),
    format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
)
app = create_app(settings)
