"""schemathesis hooks for .ci/api-contract: refusals that JSON Schema cannot describe.

positive_data_acceptance (ST202) sends requests valid by the document and expects them
taken. Five refusals depend on more than one value or on the server's memory, which no
schema can state, so a schema-valid request is rightly refused:

- a listing ``cursor`` that this service did not give (a cursor is opaque: any string is
  valid by the schema, only the service's own decode);
- an ``Idempotency-Key`` sent again with another request (the IETF draft's 422: the
  generator reuses its example key across bodies);
- ``Job-Delay`` and ``Job-Not-Before`` together (each valid alone, the pair ambiguous);
- a ``Job-Not-Before`` past the scheduling horizon (JOBPOOL_SCHEDULE_MAX_S from now: the
  schema cannot know the clock);
- a ``Job-Callback`` the SSRF guard refuses (a private address, credentials, ...: as for
  ``/v1/fetch``'s URL, which is why that route's check is off in the profiles).

Only these exact answers are dropped, and only from that check; every other failure, and
every other check on these responses, stands.
"""

from typing import Any

import orjson
import schemathesis

# (status, problem title, start of its detail); None: any detail.
SEMANTIC_REFUSALS = (
    (422, "Invalid request", '"cursor" is not one this service gave'),
    (422, "Idempotency key reused", None),
    (400, "Bad request", "give Job-Delay or Job-Not-Before, not both"),
    (422, "Invalid request", "the job would start "),
    (422, "Invalid request", "Job-Callback refused: "),
)


def _semantic_refusal(response: Any) -> bool:
    try:
        problem = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(problem, dict):
        return False
    for status, title, detail in SEMANTIC_REFUSALS:
        if response.status_code != status or problem.get("title") != title:
            continue
        if detail is None or str(problem.get("detail", "")).startswith(detail):
            return True
    return False


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure except ST202 on one of the refusals above."""
    return not (failure.code == "ST202" and _semantic_refusal(response))
