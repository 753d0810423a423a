"""``jobpool``: the command-line client (submit, fetch, status, wait, cancel, list, result).

The server and key come from ``--url``/``--key`` or ``JOBPOOL_URL``/``JOBPOOL_KEY``. Text
for people by default, ``--json`` for programs; the exit status says how it went
(:class:`Exit`). Messages go to stdout, errors to stderr; when a result is written to
stdout (``-o -``), messages go to stderr instead so that stdout holds only the result.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

import orjson
from rich.console import Console

from service.client.client import (
    DEFAULT_URL,
    LONG_POLL_S,
    Client,
    Result,
    Submitted,
    sf_string,
)
from service.client.errors import (
    ClientError,
    ProblemError,
    Refused,
    Unavailable,
    Unreachable,
    WaitTimedOut,
)
from service.client.progress import LiveDisplay, count_text, describe, display_for, measure

__all__ = ["Exit", "build_parser", "main"]

#: Seconds between the job documents read while progress is shown: each read is a long
#: poll this long, so a change shows within it and the end at once.
PROGRESS_POLL_S = 1
IMAGE_OPS = ("thumbnail", "resize", "crop", "rotate", "grayscale")
#: The integer parameters of POST /v1/images, each an option of ``submit image``.
IMAGE_PARAMS = {
    "width": "pixels (thumbnail: at most; resize, crop: exactly)",
    "height": "pixels (thumbnail: at most; resize, crop: exactly)",
    "left": "crop: the left edge, pixels",
    "top": "crop: the top edge, pixels",
    "degrees": "rotate: counter-clockwise",
    "quality": "jpeg, webp: 1..100",
}


class Exit(IntEnum):
    """The exit statuses, for scripts (the README's table lists them too)."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    REFUSED = 3
    UNAVAILABLE = 4
    TIMED_OUT = 5


#: What each exit status means, as ``--help`` says it.
EXIT_MEANINGS = {
    Exit.OK: "done (a job waited for succeeded)",
    Exit.JOB_FAILED: "the job waited for failed or was cancelled",
    Exit.USAGE: "bad usage: arguments, a file that cannot be read, a binary result without -o",
    Exit.REFUSED: "refused by the server: no such job, not now (409), a bad request or key",
    Exit.UNAVAILABLE: "no answer, or the server busy or failing (429, 5xx), after the retries",
    Exit.TIMED_OUT: "--timeout passed before the job ended (the job goes on)",
}
EXIT_STATUSES = "exit status:\n" + "".join(
    f"  {status.value}  {meaning}\n" for status, meaning in EXIT_MEANINGS.items()
)


class UsageError(Exception):
    """A mistake of the caller's found after parsing (exit 2)."""


# -- arguments --------------------------------------------------------------------------


def add_connection(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every verb takes. On the top parser they carry the defaults; on a verb
    they are only set when given, so ``jobpool --json status ID`` and ``jobpool status ID
    --json`` mean the same."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--url", default=default(None), metavar="URL",
        help=f"the server (default: $JOBPOOL_URL, else {DEFAULT_URL})",
    )  # fmt: skip
    group.add_argument(
        "--key", default=default(None), metavar="KEY",
        help="the API key (default: $JOBPOOL_KEY; prefer it: a flag shows in ps)",
    )  # fmt: skip
    group.add_argument(
        "--json", action="store_true", default=default(False),
        help="print JSON for programs instead of text (no progress display)",
    )  # fmt: skip
    group.add_argument(
        "--request-timeout", type=positive_float, default=default(30.0), metavar="S",
        help="seconds to wait for one answer (default 30)",
    )  # fmt: skip


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    """When the job starts, how to repeat the submit safely, and waiting for it."""
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--delay", type=non_negative_float, metavar="S",
        help="start the job S seconds from now (Job-Delay)",
    )  # fmt: skip
    when.add_argument(
        "--not-before", metavar="TIME",
        help="start the job at TIME, RFC 3339: 2026-01-05T10:00:00Z (Job-Not-Before)",
    )  # fmt: skip
    parser.add_argument(
        "--idempotency-key", metavar="KEY",
        help="send this Idempotency-Key (default: a new one); the same key and request "
        "again answer with the job the first made",
    )  # fmt: skip
    parser.add_argument(
        "--wait", action="store_true", help="wait for the job to end, showing its progress"
    )
    parser.add_argument(
        "--timeout", type=positive_float, metavar="S",
        help="with --wait: stop waiting after S seconds (exit 5; the job goes on)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", metavar="FILE",
        help="wait, then write the result to FILE ('-': stdout)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every verb, each with its ``--help``."""
    top = argparse.ArgumentParser(
        prog="jobpool",
        description="Submit jobs to a jobpool server, follow them, fetch their results.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection(top, top=True)
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        parent: Any, name: str, summary: str, description: str = ""
    ) -> argparse.ArgumentParser:
        text = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {description}".strip())
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=summary, description=text, epilog=EXIT_STATUSES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        add_connection(p, top=False)
        return p

    submit = verb(verbs, "submit", "submit a job: a batch of parcels, or an image operation")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")
    parcels = verb(
        kinds, "parcels", "submit a batch of parcels from a JSON file",
        'FILE holds {"Data": [{"id", "time", "data"}, ...]} ("-": read stdin).',
    )  # fmt: skip
    parcels.add_argument("file", metavar="FILE")
    add_submit_options(parcels)
    parcels.set_defaults(run=run_submit_parcels)

    image = verb(
        kinds, "image", "submit an image operation on an image file",
        "The image is sent as it is; the operation and its parameters become the query of "
        "POST /v1/images (thumbnail and resize need --width and --height, crop also --left "
        "and --top, rotate --degrees).",
    )  # fmt: skip
    image.add_argument("file", metavar="FILE", help='the image ("-": read stdin)')
    image.add_argument("--op", required=True, choices=IMAGE_OPS, help="the operation")
    for name, meaning in IMAGE_PARAMS.items():
        image.add_argument(f"--{name}", type=int, metavar="N", help=meaning)
    image.add_argument("--format", choices=("jpeg", "png", "webp"), help="the result's format")
    image.add_argument(
        "--content-type", metavar="TYPE",
        help="the image's media type (default: guessed from FILE's name)",
    )  # fmt: skip
    add_submit_options(image)
    image.set_defaults(run=run_submit_image)

    fetch = verb(verbs, "fetch", "submit a job that fetches a URL on the server")
    fetch.add_argument("target", metavar="URL", help="http or https URL to fetch")
    fetch.add_argument("--method", choices=("GET", "HEAD"), default="GET")
    add_submit_options(fetch)
    fetch.set_defaults(run=run_fetch)

    status = verb(verbs, "status", "show a job's document (exit 0 whatever its state)")
    status.add_argument("job_id", metavar="ID")
    status.set_defaults(run=run_status)

    wait = verb(
        verbs, "wait", "wait for a job to end, showing its progress; exit by its state",
        "Follows the job with long polls (Prefer: wait); on a terminal a progress bar (a "
        "batch's items, a task's reported steps, or its state), plain lines otherwise.",
    )  # fmt: skip
    wait.add_argument("job_id", metavar="ID")
    wait.add_argument(
        "--timeout", type=positive_float, metavar="S",
        help="stop waiting after S seconds (exit 5; the job goes on)",
    )  # fmt: skip
    wait.set_defaults(run=run_wait)

    cancel = verb(
        verbs, "cancel", "cancel a job (a running one is stopped first)",
        "Exit 0 once it is cancelled (or was already) or stopping; 3 if it had ended "
        "otherwise.",
    )  # fmt: skip
    cancel.add_argument("job_id", metavar="ID")
    cancel.set_defaults(run=run_cancel)

    listing = verb(verbs, "list", "list your jobs, newest first")
    listing.add_argument(
        "--state", action="append", metavar="STATE",
        help="only jobs in STATE (scheduled, queued, running, succeeded, failed, "
        "cancelled); several: comma-separated or repeated",
    )  # fmt: skip
    listing.add_argument("--job", metavar="NAME", help="only jobs of this name (parcel, ...)")
    listing.add_argument("--created-after", metavar="TIME", help="RFC 3339")
    listing.add_argument("--created-before", metavar="TIME", help="RFC 3339")
    listing.add_argument("--limit", type=int, metavar="N", help="jobs per page")
    listing.add_argument("--cursor", metavar="CURSOR", help="the page after a previous one")
    listing.add_argument("--all", action="store_true", help="every page, not just the first")
    listing.set_defaults(run=run_list)

    result = verb(
        verbs, "result", "fetch a finished job's result",
        "JSON results are printed pretty; binary ones (images) need -o FILE ('-': stdout).",
    )  # fmt: skip
    result.add_argument("job_id", metavar="ID")
    result.add_argument(
        "-o", "--output", metavar="FILE", help="write the result to FILE ('-': stdout)"
    )
    result.set_defaults(run=run_result)
    return top


# -- running ----------------------------------------------------------------------------


class Run:
    """One invocation: its arguments, its client, and where its text goes."""

    def __init__(
        self, args: argparse.Namespace, client: Client, stdout: TextIO, stderr: TextIO
    ) -> None:
        self.args = args
        self.client = client
        self.stdout = stdout
        self.stderr = stderr
        # Text for people goes where the result does not.
        self.say_to = stderr if getattr(args, "output", None) == "-" else stdout

    def say(self, text: str) -> None:
        if not self.args.json:
            print(text, file=self.say_to, flush=True)

    def emit_json(self, value: Any) -> None:
        self.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        self.stdout.flush()


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``jobpool`` with ``argv``; the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.json and getattr(args, "output", None) == "-":
            parser.error("--json and -o - would both write to stdout; choose one")
    except SystemExit as ex:  # --help (0) or bad usage (2): argparse has said why
        return int(ex.code or 0)
    env = os.environ if environ is None else environ
    try:
        client = Client.from_env(env, url=args.url, key=args.key, timeout_s=args.request_timeout)
    except ValueError as ex:
        print(f"jobpool: {ex}", file=err)
        return Exit.USAGE
    run = Run(args, client, out, err)
    handler: Callable[[Run], int] = args.run
    try:
        with client:
            return handler(run)
    except UsageError as ex:
        print(f"jobpool: {ex}", file=err)
        return Exit.USAGE
    except ClientError as ex:
        return report(run, ex)
    except KeyboardInterrupt:
        job_id = getattr(args, "job_id", None)
        tail = f"; the job goes on (jobpool status {job_id})" if job_id else ""
        print(f"jobpool: interrupted{tail}", file=err)
        return 130
    except BrokenPipeError:
        # The reader went away (`jobpool list | head`): end as a command killed by SIGPIPE
        # does, without a second error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 141


def report(run: Run, ex: ClientError) -> int:
    """Say what went wrong; the exit status it stands for."""
    print(f"jobpool: {ex}", file=run.stderr)
    if isinstance(ex, WaitTimedOut):
        if run.args.json:
            run.emit_json(ex.document)
        return Exit.TIMED_OUT
    if run.args.json:
        problem = ex.problem if isinstance(ex, ProblemError) else {
            "title": type(ex).__name__, "detail": str(ex),
        }  # fmt: skip
        run.emit_json(problem)
    if isinstance(ex, Refused):
        return Exit.REFUSED
    if isinstance(ex, Unavailable | Unreachable):
        return Exit.UNAVAILABLE
    return Exit.REFUSED


def read_input(path: str) -> bytes:
    """The bytes of FILE, or of stdin for ``-``."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as ex:
        raise UsageError(f"cannot read {path}: {ex.strerror}") from None


def submit_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.idempotency_key is not None:
        try:
            sf_string(args.idempotency_key)
        except ValueError as ex:
            raise UsageError(str(ex)) from None
    return {
        "delay_s": args.delay,
        "not_before": args.not_before,
        "idempotency_key": args.idempotency_key,
    }


def run_submit_parcels(run: Run) -> int:
    options = submit_options(run.args)
    body = read_input(run.args.file)
    return submitted(run, run.client.submit_parcels(body, **options))


def run_submit_image(run: Run) -> int:
    args = run.args
    options = submit_options(args)
    data = read_input(args.file)
    params: dict[str, str | int] = {
        name: getattr(args, name) for name in IMAGE_PARAMS if getattr(args, name) is not None
    }
    if args.format:
        params["format"] = args.format
    content_type = args.content_type or mimetypes.guess_type(args.file)[0]
    if not content_type or not content_type.startswith("image/"):
        content_type = "application/octet-stream"
    job = run.client.submit_image(
        data, args.op, params=params, content_type=content_type, **options
    )
    return submitted(run, job)


def run_fetch(run: Run) -> int:
    args = run.args
    return submitted(run, run.client.fetch(args.target, args.method, **submit_options(args)))


def submitted(run: Run, job: Submitted) -> int:
    """Report a submit; then, as asked, wait for the job and write its result."""
    args = run.args
    follow = args.wait or args.output is not None
    if args.json and not follow:
        run.emit_json({
            **job.body, "location": job.location, "idempotency_key": job.idempotency_key,
            "replayed": job.replayed,
        })  # fmt: skip
    accepted = job.body.get("accepted")
    extra = f", {accepted} items" if accepted is not None else ""
    replayed = " (replayed: submitted before with this key)" if job.replayed else ""
    run.say(f"{job.job_id} {job.state}{extra}{replayed}")
    if not follow:
        return Exit.OK
    code = follow_job(run, job.job_id, args.timeout)
    if code == Exit.OK and args.output is not None:
        write_result(run, run.client.result(job.job_id), args.output)
    return code


def run_status(run: Run) -> int:
    doc = run.client.job(run.args.job_id)
    if run.args.json:
        run.emit_json(doc)
    else:
        run.say(format_document(doc))
    return Exit.OK


def run_wait(run: Run) -> int:
    return follow_job(run, run.args.job_id, run.args.timeout)


def follow_job(run: Run, job_id: str, timeout_s: float | None) -> int:
    """Wait for the job, showing its progress (text mode); the exit status of its end."""
    if run.args.json:
        doc = run.client.wait(job_id, timeout_s=timeout_s, poll_s=LONG_POLL_S)
        run.emit_json(doc)
    else:
        console = Console(file=run.say_to, highlight=False)
        display = display_for(job_id, console)
        try:
            doc = run.client.wait(
                job_id, timeout_s=timeout_s, poll_s=PROGRESS_POLL_S, on_update=display.update
            )
        finally:
            display.close()
        if isinstance(display, LiveDisplay):  # a plain display printed the end already
            run.say(f"{job_id} {describe(doc)}")
    return Exit.OK if doc.get("state") == "succeeded" else Exit.JOB_FAILED


def run_cancel(run: Run) -> int:
    doc = run.client.cancel(run.args.job_id)
    if run.args.json:
        run.emit_json(doc)
        return Exit.OK
    if doc.get("state") == "cancelled":
        how = (doc.get("cancel") or {}).get("how")
        run.say(f"{doc['id']} cancelled" + (f" ({how})" if how else ""))
    else:
        run.say(f"{doc['id']} stopping (it will end cancelled: jobpool wait {doc['id']})")
    return Exit.OK


def run_list(run: Run) -> int:
    args = run.args
    states = None
    if args.state:
        states = [s.strip() for value in args.state for s in value.split(",") if s.strip()]
    filters: dict[str, Any] = {
        "state": states, "job": args.job, "created_after": args.created_after,
        "created_before": args.created_before, "limit": args.limit,
    }  # fmt: skip
    if args.all:
        jobs = list(run.client.iter_jobs(cursor=args.cursor, **filters))
        next_cursor = None
    else:
        page = run.client.jobs(cursor=args.cursor, **filters)
        jobs, next_cursor = page.jobs, page.next_cursor
    if args.json:
        run.emit_json({"jobs": jobs, "next_cursor": next_cursor})
        return Exit.OK
    if not jobs:
        run.say("no jobs")
        return Exit.OK
    rows = [("ID", "JOB", "STATE", "CREATED", "")]
    rows += [
        (d["id"], d.get("job", ""), d.get("state", ""), d.get("created_at", ""),
         count_text(measure(d)))
        for d in jobs
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    for row in rows:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        run.say("  ".join([*cells, str(row[4])]).rstrip())
    if next_cursor:
        print(f"more: jobpool list --cursor {next_cursor} (or --all)", file=run.stderr)
    return Exit.OK


def run_result(run: Run) -> int:
    result = run.client.result(run.args.job_id)
    if run.args.output is None:
        if not result.is_json:
            raise UsageError(
                f"the result is {result.content_type} ({len(result.data)} bytes): "
                "give -o FILE (or -o - for stdout)"
            )
        run.emit_json(result.json())
        return Exit.OK
    write_result(run, result, run.args.output)
    return Exit.OK


def write_result(run: Run, result: Result, output: str) -> None:
    """Write a result as it came: to stdout for ``-``, else to the file."""
    if output == "-":
        run.stdout.flush()
        out = getattr(run.stdout, "buffer", None)
        if out is None:
            raise UsageError("this output cannot take bytes")
        out.write(result.data)
        out.flush()
        return
    try:
        Path(output).write_bytes(result.data)
    except OSError as ex:
        raise UsageError(f"cannot write {output}: {ex.strerror}") from None
    run.say(f"wrote {output} ({result.content_type}, {len(result.data)} bytes)")


# -- text -------------------------------------------------------------------------------


def format_document(doc: Mapping[str, Any]) -> str:
    """A job document as aligned ``field  value`` lines; objects as ``name value, ...``."""

    def text(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {text(v)}" for k, v in value.items() if v is not None)
        if isinstance(value, list):
            return "; ".join(text(v) for v in value)
        return str(value)

    lines = [(name, text(value)) for name, value in doc.items() if value is not None]
    width = max((len(name) for name, _ in lines), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in lines)
