"""gunicorn settings for jobpool: ``gunicorn -c gunicorn.conf.py`` alone starts the service.

Every value comes from ``JOBPOOL_*`` environment variables (service/config.py); command-line
arguments and ``GUNICORN_CMD_ARGS`` still override what is set here.
"""

import logging
import os
import sys

from gunicorn.glogging import Logger

from service import logs
from service.config import Settings
from service.errors import ConfigError
from service.keys import Keyring

FAST_PARSER_MIN = (0, 6, 14)  # the gunicorn_h1c that gunicorn 27's [fast] extra requires


def _state_dir_problem(path):
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as ex:
        return f"JOBPOOL_STATE_DIR: {path} is not writable: {ex}"
    return None


def _http_parser():
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("gunicorn_h1c")
    except PackageNotFoundError:
        return "python"
    release = tuple(int(part) for part in found.split(".")[:3] if part.isdigit())
    return "fast" if release >= FAST_PARSER_MIN else "python"


def _keys_problem(settings):
    try:
        Keyring.from_settings(settings)  # no keys and auth on: refuse to start
    except ConfigError as ex:
        return ex.detail
    return None


try:
    settings = Settings.from_env()
except ConfigError as ex:
    # One line naming the variable, then stop: no traceback to dig through.
    print(f"jobpool: {ex.detail}", file=sys.stderr)
    sys.exit(2)
if problem := _state_dir_problem(settings.state_dir) or _keys_problem(settings):
    print(f"jobpool: {problem}", file=sys.stderr)
    sys.exit(2)

wsgi_app = "service.asgi:app"
# JOBPOOL_METRICS_BIND: a second listener that serves /metrics alone (service/api/middleware.py).
metrics_bind = [settings.metrics_bind] if settings.metrics and settings.metrics_bind else []
bind = [settings.bind, *metrics_bind]
workers = settings.workers
# gunicorn's own asyncio worker runs the falcon.asgi.App (measured here ~2x the requests/s of
# gthread on the seed batch), with jobpool's deadlines and answers: service/server.py.
worker_class = "service.server.Worker"
asgi_loop = "uvloop"
asgi_lifespan = "on"  # pools and the store start and drain with the lifespan
# gunicorn 27 with gunicorn_h1c older than 0.6.14 drops some kept-alive requests that carry
# large bodies (measured: about 1 in 3 of 680 KB image uploads); only a release that gunicorn
# 27 asks for is used, else the pure Python parser (tests/test_server.py keeps this true).
http_parser = _http_parser()
keepalive = settings.keepalive_s  # longer than an ALB's 60 s idle timeout
graceful_timeout = settings.graceful_timeout_s
timeout = settings.worker_timeout_s
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # heartbeat off the disk
# gunicorn >= 26 opens ~/.gunicorn/gunicorn.ctl by default, and a second server on the host
# silently takes that path over; jobpool does not use it.
control_socket_disable = True
loglevel = settings.log_level
errorlog = "-"

# One JSON object per line for gunicorn's own log too (service/logs.py). The access log is
# the app's (route template, job id); gunicorn's stays off unless --access-logfile asks.
logconfig_dict = logs.logconfig_dict(settings.log_level)
accesslog = None


class JsonLogger(Logger):
    """gunicorn's logger, whose access log runs only when ``accesslog`` is set: gunicorn
    turns it on whenever a ``logconfig_dict`` is given, and then builds its log atoms for
    every request (~5% of the seed batch's CPU), to throw them away. (gunicorn keeps what
    this says, computed at setup: a property here cost a call per request.)"""

    def _compute_access_log_enabled(self):
        return self.cfg.accesslog is not None

    def setup(self, cfg):
        super().setup(cfg)
        # Python warnings too (Pillow's about a client's file, raised by the probe) become
        # JSON lines, in the master and, over fork, every worker, whatever app it loads.
        logging.captureWarnings(True)


logger_class = JsonLogger
limit_request_line = settings.request_line_max  # longer: 414 before the app sees it
limit_request_fields = settings.header_count_max  # more: 431
limit_request_field_size = settings.header_bytes_max  # longer: 431


# Prometheus multiprocess mode (service/metrics.py): every worker writes its values to
# files here, and /metrics on any worker reads them all. prometheus_client chooses its mode
# when first imported, so this is set before any import of it (never import it above).
metrics_dir = settings.state_dir / "metrics"
if settings.metrics:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


def _keep_metrics_bind(server):
    # --bind on the command line replaces `bind` above, metrics listener included.
    if metrics_bind and metrics_bind[0] not in server.cfg.bind:
        server.cfg.set("bind", [*server.cfg.bind, *metrics_bind])


def on_starting(server):
    """Empty the metrics files of an earlier run; keep the metrics listener."""
    if settings.metrics:
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for old in metrics_dir.glob("*.db"):
            old.unlink(missing_ok=True)
    _keep_metrics_bind(server)


def child_exit(server, worker):
    """A worker died or stopped: its gauges (queue depth, busy slots) no longer count; its
    counters and histograms stay, so totals never go backwards."""
    if settings.metrics:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(metrics_dir))


def post_fork(server, worker):
    """Tell the worker how many siblings share the host's cpu budget (CLI -w included), and
    start the app's job drain the moment SIGTERM arrives (see service/signals.py)."""
    os.environ["JOBPOOL__GUNICORN_WORKERS"] = str(server.cfg.workers)
    stop_accepting = worker.handle_exit_signal

    def handle_exit_signal():
        stop_accepting()
        from service import signals

        signals.terminate()

    worker.handle_exit_signal = handle_exit_signal
    if hasattr(worker, "note_stop_signals"):  # jobpool's worker (a bench runs uvicorn's)
        worker.note_stop_signals()
