"""``GET /openapi.json``: the API's OpenAPI 3.1 document.

Every route that ``create_app`` wires is described here with its parameters, bodies and
answers, errors included; ``tests/test_openapi.py`` fails when the two disagree, and CI
runs schemathesis against the running server from this document (``.ci/run``). The
schemas of the bodies the API reads and writes are derived from the Structs that decode
and encode them (:data:`DERIVED`); the limits the settings set (items per batch, URL
length, body bytes, longest wait) are applied to them here.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import falcon.asgi
import msgspec
import orjson

from service.api.fetch import Fetch
from service.api.problems import Problem
from service.api.search import BLANK_FREE_PATTERN
from service.api.search_answer import SearchAnswer
from service.api.security import OPEN_PATHS
from service.api.submitting import KEY_PATTERN
from service.config import Settings
from service.jobs.document import JobDocument, JobPage, Submitted
from service.jobs.state import JobState
from service.tasks.parcels import Batch

JSON = "application/json"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{name}"
#: The Structs whose schemas (and those of the Structs and enums they hold) are derived.
DERIVED = (Problem, Batch, Submitted, JobDocument, JobPage, Fetch, SearchAnswer)

# -- schemas ------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _derived(settings: Settings) -> dict[str, Any]:
    """The schemas of :data:`DERIVED`, with the limits of ``settings``."""
    _, schemas = msgspec.json.schema_components(DERIVED, ref_template=REF)
    # A batch the io pool can never hold is refused too (422).
    data = schemas["Batch"]["properties"]["Data"]
    data["maxItems"] = min(settings.batch_max, settings.io_queue_max)
    schemas["Fetch"]["properties"]["url"]["maxLength"] = settings.fetch_max_url_length
    return schemas


def _schemas(settings: Settings) -> dict[str, Any]:
    """The derived schemas, and those of the answers not yet declared as Structs."""
    count = {"type": "integer", "minimum": 0}
    return {
        **_derived(settings),
        "BatchResult": {
            "description": "The result of a batch job.",
            "type": "object",
            "additionalProperties": False,
            "required": ["total", "done", "failed", "failures"],
            "properties": {
                "total": count,
                "done": count,
                "failed": count,
                "skipped": {"description": "Items not run: the batch was cancelled.", **count},
                "failures": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["index", "key", "error"],
                        "properties": {
                            "index": count,
                            "key": {"type": ["string", "null"]},
                            "error": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Fetched": {
            "description": "The result of a fetch job.",
            "type": "object",
            "additionalProperties": False,
            "required": [
                "url",
                "method",
                "status",
                "address",
                "headers",
                "size",
                "sha256",
                "elapsed_ms",
                "redirects",
                "body_base64",
                "body_truncated",
            ],
            "properties": {
                "url": {"type": "string"},
                "method": {"enum": ["GET", "HEAD"]},
                "status": {"type": "integer"},
                "address": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "size": count,
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "elapsed_ms": count,
                "redirects": {"type": "array", "items": {"type": "string"}},
                "body_base64": {"type": ["string", "null"]},
                "body_truncated": {"type": "boolean"},
            },
        },
        "Readiness": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ok", "failing"],
            "properties": {
                "ok": {"type": "array", "items": {"type": "string"}},
                "failing": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    }


# -- answers ------------------------------------------------------------------------------

_REQUEST_ID = {"$ref": "#/components/headers/X-Request-ID"}


def _answer(
    description: str,
    content: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID, **(headers or {})},
    }
    if content is not None:
        answer["content"] = content
    return answer


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _answer(description, {PROBLEM: {"schema": _ref("Problem")}}, headers)


def _retry_after() -> dict[str, Any]:
    return {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}


def _replayed() -> dict[str, Any]:
    return {
        "description": "``true``: an earlier submit with this Idempotency-Key made this job.",
        "schema": {"const": "true"},
    }


def _poll_hint() -> dict[str, Any]:
    """``Retry-After`` where only an unfinished job's answer has it."""
    return {
        "description": "Seconds before it is worth reading the job again (until a "
        "scheduled job's time); only while the job has not ended.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }


_STATE = "(" + "|".join(state.value for state in JobState) + ")"
#: One state, or several comma-separated.
_STATES_PATTERN = f"^{_STATE}(,{_STATE})*$"


def _job_id() -> dict[str, Any]:
    return {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "A job id (26 characters); any other text is an unknown job (404).",
        "schema": {"type": "string", "minLength": 1},
    }


_JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/job"}},
    "GetJobResult": {
        "operationId": "getJobResult",
        "parameters": {"job_id": "$response.body#/job"},
    },
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/job"}},
}


def _submit_headers(settings: Settings, what: str) -> list[dict[str, Any]]:
    """The request headers every submit takes."""
    return [
        _prefer(settings, what),
        {
            "name": "Job-Delay",
            "in": "header",
            "description": "Start the job no sooner than this many seconds from now (it is "
            f"``scheduled`` until then); at most {settings.schedule_max_s} "
            "(JOBPOOL_SCHEDULE_MAX_S). Not with Job-Not-Before.",
            "schema": {"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,6})?$"},
            "example": "30",
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "description": "The same key (the client's own) with the same request answers with "
            "the job the first made (``Idempotent-Replayed: true``), never a second job; with "
            "another request it is 422, while the first is still being accepted 409. Kept "
            f"{settings.idempotency_ttl_s} s (JOBPOOL_IDEMPOTENCY_TTL_S). A Structured Fields "
            f"string (or bare), of printable ASCII, at most {settings.idempotency_key_max} "
            "characters as sent, quotes included (JOBPOOL_IDEMPOTENCY_KEY_MAX); else 400.",
            "schema": {
                "type": "string",
                "pattern": KEY_PATTERN,
                "minLength": 1,
                "maxLength": settings.idempotency_key_max,
            },
            "example": '"8e03978e-40d5-43e8-bc93-6894a57f9324"',
        },
        {
            "name": "Job-Callback",
            "in": "header",
            "description": "Once the job ends (succeeded, failed or cancelled), POST its "
            "document (as GET /v1/jobs/{id} answers it) to this http(s) URL, signed per "
            "Standard Webhooks with the client's secret (headers ``webhook-id``: the job's "
            "id, the same on every attempt; ``webhook-timestamp``; ``webhook-signature``). "
            "Retried with backoff until a 2xx or JOBPOOL_CALLBACK_HORIZON_S; the job's "
            "``callback`` says how it goes. A URL the SSRF guard refuses without DNS, one "
            f"over {settings.callback_url_max} characters (JOBPOOL_CALLBACK_URL_MAX), or a "
            "client without a secret (JOBPOOL_CALLBACK_SECRETS_FILE) is 422.",
            "schema": {"type": "string", "format": "uri", "maxLength": settings.callback_url_max},
            "example": "https://hooks.example.com/jobpool",
        },
        {
            "name": "Job-Not-Before",
            "in": "header",
            "description": "Start the job no sooner than this RFC 3339 date-time (a time "
            "already past: at once); at most JOBPOOL_SCHEDULE_MAX_S ahead.",
            "schema": {"type": "string", "format": "date-time"},
            "example": "2030-01-01T09:00:00Z",
        },
    ]


def _prefer(settings: Settings, what: str) -> dict[str, Any]:
    return {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": f"``wait=N`` (RFC 7240): hold the answer up to N s (at most "
        f"{settings.wait_max_s}, JOBPOOL_WAIT_MAX_S) for {what}; ``respond-async``: answer "
        "at once. ``Preference-Applied`` names what was honoured.",
        "schema": {"type": "string"},
        "example": "wait=5",
    }


def _submit_answers(
    *,
    done: dict[str, Any],
    body: str,
    too_large: str,
    invalid: str,
) -> dict[str, Any]:
    """The answers of a submit: ``done`` is the content of a finished job's 200."""
    return {
        "200": _answer(
            "With ``Prefer: wait=N``, the job ended within N s: its result if it succeeded, "
            "else its job document.",
            done,
            {
                "Location": {"$ref": "#/components/headers/Location"},
                "Preference-Applied": {"schema": {"type": "string"}},
                "Idempotent-Replayed": _replayed(),
            },
        ),
        "202": {
            **_answer(
                "The job is stored: it runs now, waits its turn, or waits for its time "
                "(scheduled), or it ran as it was stored (a batch of parcels without simulated "
                "latency is stored ``succeeded``). ``Location`` points at it; ``Retry-After`` "
                "says when to look.",
                _json(_ref("Submitted")),
                {
                    "Location": {"$ref": "#/components/headers/Location"},
                    "Retry-After": _poll_hint(),
                    "Preference-Applied": {"schema": {"type": "string"}},
                    "Idempotent-Replayed": _replayed(),
                },
            ),
            "links": _JOB_LINKS,
        },
        "400": _problem(
            "The body is not valid JSON, or Job-Delay / Job-Not-Before is malformed (or both "
            "are given), or the Idempotency-Key is."
        ),
        "409": _problem("A request with this Idempotency-Key is still being accepted: retry."),
        "413": _problem(too_large),
        "415": _problem(body),
        "422": _problem(
            f"{invalid} Or the job would start past JOBPOOL_SCHEDULE_MAX_S, or the "
            "Idempotency-Key was used with another request."
        ),
        "503": _problem(
            "The pool is full or the worker is shutting down: retry after Retry-After.",
            _retry_after(),
        ),
    }


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


def _image_params(settings: Settings) -> list[dict[str, Any]]:
    side = {"type": "integer", "minimum": 1, "maximum": settings.image_max_side}
    coordinate = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
    return [
        {
            "name": "op",
            "in": "query",
            "required": True,
            "description": "thumbnail, resize (width, height); crop (left, top, width, "
            "height); rotate (degrees); grayscale. Parameters an op does not use are 422.",
            "schema": {"enum": ["thumbnail", "resize", "crop", "rotate", "grayscale"]},
        },
        _query("width", side, f"pixels, at most {settings.image_max_side}"),
        _query("height", side, f"pixels, at most {settings.image_max_side}"),
        _query("left", coordinate),
        _query("top", coordinate),
        _query(
            "degrees", {"type": "integer", "minimum": -360, "maximum": 360}, "counter-clockwise"
        ),
        _query(
            "format",
            {"enum": ["jpeg", "jpg", "png", "webp"]},
            "output format; default: the input's when it is one of these, else png",
        ),
        _query("quality", {"type": "integer", "minimum": 1, "maximum": 100}, "jpeg, webp"),
    ]


def _paths(settings: Settings) -> dict[str, Any]:
    not_found = _problem("No such job, or not the caller's.")
    body_max = f"The body is over {settings.body_max} bytes (JOBPOOL_BODY_MAX)."
    binary = {"schema": {"type": "string", "format": "binary"}}
    paths: dict[str, Any] = {
        "/v1/parcels": {
            "post": {
                "operationId": "submitParcels",
                "summary": "Submit a batch of parcels: one job, one io task per item.",
                "parameters": _submit_headers(settings, "the job to end"),
                "requestBody": {"required": True, "content": _json(_ref("Batch"))},
                "responses": _submit_answers(
                    done=_json({"oneOf": [_ref("BatchResult"), _ref("JobDocument")]}),
                    body="The body is not JSON.",
                    too_large=body_max,
                    invalid="The body is JSON but not a valid batch (``errors`` lists why), "
                    "or it has more items than the io pool can ever hold "
                    "(JOBPOOL_IO_QUEUE_MAX).",
                ),
            }
        },
        "/v1/fetch": {
            "post": {
                "operationId": "submitFetch",
                "summary": "Fetch a URL on the io pool (timeouts, size cap, SSRF guard).",
                "parameters": _submit_headers(settings, "the job to end"),
                "requestBody": {"required": True, "content": _json(_ref("Fetch"))},
                "responses": _submit_answers(
                    done=_json({"oneOf": [_ref("Fetched"), _ref("JobDocument")]}),
                    body="The body is not JSON.",
                    too_large=body_max,
                    invalid="Not a fetch request, or a URL refused without DNS (scheme, "
                    "private or metadata address, length).",
                ),
            }
        },
        "/v1/images": {
            "post": {
                "operationId": "submitImage",
                "summary": "Thumbnail, resize, crop, rotate or gray an image on the cpu pool.",
                "parameters": [*_image_params(settings), *_submit_headers(settings, "the image")],
                "requestBody": {
                    "required": True,
                    "description": "The image itself (jpeg, png, webp, gif, bmp, tiff).",
                    "content": {"image/*": binary, "application/octet-stream": binary},
                },
                "responses": _submit_answers(
                    done={
                        "image/jpeg": binary,
                        "image/png": binary,
                        "image/webp": binary,
                        JSON: {"schema": _ref("JobDocument")},
                    },
                    body="The body is not an image of an accepted format.",
                    too_large=f"The image is over {settings.image_body_max} bytes "
                    "(JOBPOOL_IMAGE_BODY_MAX).",
                    invalid="A parameter is wrong or does not fit the image (``param`` "
                    "names it), or the image has too many pixels.",
                ),
            }
        },
        "/v1/search": {
            "get": {
                "operationId": "search",
                "summary": "Ask every configured provider in parallel; merge what answers "
                "within the deadline. A slow or failing provider is reported, not fatal.",
                "parameters": [
                    {
                        "name": "q",
                        "in": "query",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": settings.search_query_max,
                            "pattern": BLANK_FREE_PATTERN,
                        },
                    },
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
                    ),
                ],
                "responses": {
                    "200": _answer("The merged answer.", _json(_ref("SearchAnswer"))),
                    "422": _problem(
                        "``q`` is missing or blank or too long, or ``limit`` is not 1 to 100."
                    ),
                },
            }
        },
        "/v1/parcels/{parcel_id}": {
            "get": {
                "operationId": "getParcel",
                "summary": "A stored parcel exactly as sent (the newest, if sent twice).",
                "parameters": [
                    {
                        "name": "parcel_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": _answer("The parcel.", _json(_ref("Parcel"))),
                    "404": _problem("No such parcel (or it expired)."),
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's document; with ``Prefer: wait=N`` once it ends, or after "
                "N s. Any worker of any host answers for any job.",
                "parameters": [_job_id(), _prefer(settings, "the job to end")],
                "responses": {
                    "200": _answer(
                        "The job; an unfinished one with ``Retry-After``: when to look again.",
                        _json(_ref("JobDocument")),
                        {
                            "Preference-Applied": {"schema": {"type": "string"}},
                            "Retry-After": _poll_hint(),
                        },
                    ),
                    "404": not_found,
                },
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a job. One that has not started ends at once (``cancel."
                "how``: dequeued). A running one is stopped: a cpu job's process is "
                "terminated; an io job is asked to stop (its task checks) and, past "
                f"{settings.cancel_grace_s} s (JOBPOOL_CANCEL_GRACE_S), given up "
                "(abandoned: its result is thrown away); a batch skips its remaining items. "
                "The job stays readable.",
                "parameters": [_job_id()],
                "responses": {
                    "200": _answer(
                        "The job, now cancelled; ``cancel.how`` says how it was stopped.",
                        _json(_ref("JobDocument")),
                    ),
                    "202": _answer(
                        "The job runs and was asked to stop; it is stopping still.",
                        _json(_ref("JobDocument")),
                        {"Retry-After": _poll_hint()},
                    ),
                    "404": not_found,
                    "409": _problem("The job has ended (or ended before it could be stopped)."),
                },
            },
        },
        "/v1/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "The caller's jobs, newest first, a page at a time. A cursor walk "
                "sees each job that existed when it began exactly once.",
                "parameters": [
                    _query(
                        "state",
                        {"type": "string", "pattern": _STATES_PATTERN},
                        "Jobs in this state (or these, comma-separated).",
                    ),
                    _query("job", {"type": "string", "minLength": 1}, "Jobs of this name."),
                    _query(
                        "created_after",
                        {"type": "string", "format": "date-time"},
                        "Jobs created at or after this RFC 3339 date-time.",
                    ),
                    _query(
                        "created_before",
                        {"type": "string", "format": "date-time"},
                        "Jobs created before this RFC 3339 date-time.",
                    ),
                    _query(
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": settings.list_max,
                            "default": min(50, settings.list_max),
                        },
                        "Jobs per page (JOBPOOL_LIST_MAX at most).",
                    ),
                    _query(
                        "cursor",
                        {"type": "string", "minLength": 1},
                        "The next_cursor of the page before (with the same filters).",
                    ),
                ],
                "responses": {
                    "200": _answer("A page of jobs.", _json(_ref("JobPage"))),
                    "422": _problem(
                        "An unknown state or parameter, a repeated one, a limit out of range, "
                        "a time that is not RFC 3339, or a cursor of other filters."
                    ),
                },
            }
        },
        "/v1/jobs/{job_id}/result": {
            "get": {
                "operationId": "getJobResult",
                "summary": "The result of a finished job: JSON, or bytes of their own type.",
                "parameters": [_job_id()],
                "responses": {
                    "200": _answer(
                        "The result.",
                        {
                            JSON: {"schema": {}},
                            "*/*": {"schema": {"type": "string", "format": "binary"}},
                        },
                    ),
                    "404": not_found,
                    "409": _problem("The job has no result (yet, or it failed)."),
                },
            }
        },
        "/v1/jobs/{job_id}/callback": {
            "post": {
                "operationId": "resendCallback",
                "summary": "Send an ended job's callback again; its horizon starts over.",
                "description": "For a callback given up (``failed``) or lost by its "
                "receiver: it is POSTed again (the same ``webhook-id``), retried as the first "
                "time.",
                "parameters": [_job_id()],
                "responses": {
                    "202": _answer(
                        "Pending again: the job's document.", _json(_ref("JobDocument"))
                    ),
                    "404": not_found,
                    "409": _problem("The job has no callback, or has not ended."),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the worker answers. Touches no pool and no store.",
                "responses": {
                    "200": _answer(
                        "Alive.",
                        _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "ok"}},
                            }
                        ),
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: every named check passes.",
                "responses": {
                    "200": _answer("Ready.", _json(_ref("Readiness"))),
                    "503": _answer("Not ready; ``failing`` says why.", _json(_ref("Readiness"))),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _answer("OpenAPI 3.1.", _json({"type": "object"}))},
            }
        },
    }
    if settings.metrics:
        paths["/metrics"] = {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text, summed over all workers of the host. With "
                "JOBPOOL_METRICS_BIND it is served on that listener alone.",
                "responses": {
                    "200": _answer("The metrics.", {"text/plain": {"schema": {"type": "string"}}}),
                    "404": _problem("Served on the metrics listener (JOBPOOL_METRICS_BIND)."),
                },
            }
        }
    return paths


def _version() -> str:
    try:
        return metadata.version("jobpool")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "0+unknown"


def _secure(paths: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Every operation may answer 400 and 414 (request limits), and 408 and 431 (the HTTP
    layer, service/server.py; its 501 is in the document's description, since an operation
    documents no 5xx but 503); all but the open ones take a
    bearer key and may answer 401 and 429 (none with JOBPOOL_AUTH=off; /metrics is open on
    a listener of its own, as the security middleware has it), and with the Redis store 503
    (the client's rate is kept there)."""
    open_paths = OPEN_PATHS | ({"/metrics"} if settings.metrics_bind else set())
    for path, operations in paths.items():
        for operation in operations.values():
            # Every route: the request limits answer before any route's own checks.
            responses = operation["responses"]
            responses.setdefault("400", _problem(
                "More query parameters than JOBPOOL_QUERY_PARAMS_MAX, or a malformed request"
                " (refused by the HTTP layer: its framing, an HTTP/1.1 request without Host)."
            ))  # fmt: skip
            responses.setdefault("414", _problem(
                "A URL longer than JOBPOOL_URL_MAX, or a request line over"
                " JOBPOOL_REQUEST_LINE_MAX (the HTTP layer)."
            ))  # fmt: skip
            # The HTTP layer's own (service/server.py), before any route:
            responses.setdefault("408", _problem(
                "The headers did not arrive within JOBPOOL_HEADER_TIMEOUT_S, or a body came"
                " slower than JOBPOOL_BODY_MIN_RATE over JOBPOOL_BODY_TIMEOUT_S."
            ))  # fmt: skip
            responses.setdefault("431", _problem(
                "More header fields than JOBPOOL_HEADER_COUNT_MAX, or one over"
                " JOBPOOL_HEADER_BYTES_MAX."
            ))  # fmt: skip
            if path in open_paths or not settings.auth:
                operation["security"] = []
                continue
            responses = operation["responses"]
            responses.setdefault("401", _problem(
                "No API key, or one that is malformed or not valid.",
                {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
            ))  # fmt: skip
            responses.setdefault("429", _problem(
                "Over a client limit: the request rate, or the jobs in flight.",
                {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
            ))  # fmt: skip
            if settings.store.is_redis:  # the client's rate is kept in the fleet's Redis
                responses.setdefault("503", _problem(
                    "The fleet's Redis (the job store, where client limits are kept) is"
                    " unreachable: retry after Retry-After.",
                    {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
                ))  # fmt: skip
    return paths


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of the API as ``settings`` configure it."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobpool",
            "version": _version(),
            "description": "An HTTP job service: endpoints submit jobs to shared pools. "
            "Errors are application/problem+json (RFC 9457), those the HTTP layer gives before "
            "any route included: 400 (malformed framing, HTTP/1.1 without Host), 408 "
            "(JOBPOOL_HEADER_TIMEOUT_S, or a body slower than JOBPOOL_BODY_MIN_RATE), 414, 431, "
            "and 501 for a Transfer-Encoding other than chunked.",
        },
        "paths": _secure(_paths(settings), settings),
        **({"security": [{"bearer": []}]} if settings.auth else {}),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (python -m service.keys new NAME).",
                }
            },
            "schemas": _schemas(settings),
            "headers": {
                "X-Request-ID": {
                    "description": "The request's id: the client's X-Request-ID (or the load "
                    "balancer's X-Amzn-Trace-Id) when well formed, else a new one.",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                },
                "Location": {
                    "description": "The job: /v1/jobs/{id}.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^/v1/jobs/"},
                },
                "WWW-Authenticate": {
                    "description": "How to authenticate: Bearer.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^Bearer "},
                },
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
        },
    }


class OpenApiResource:
    """Serves the document, serialised once."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.body = orjson.dumps(doc)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = JSON
        resp.data = self.body
