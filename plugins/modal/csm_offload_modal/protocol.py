"""What the Modal web endpoint and its client agree on: routes, call ids, answer bodies.

Both sides import this module (it needs neither `modal` nor `fastapi`), so a route or a field
is named in one place. The endpoint follows Modal's documented job-queue pattern:

    POST /jobs                   a wire BatchRequest: spawns   202 {"call_id": "fc-…"}
    GET  /jobs/{call_id}         FunctionCall.get(timeout=0)   202 {"state": "pending"}
                                                               200 the COMPLETED body
                                                               404 expired or unknown
                                                               500 {"state", "error"}
    POST /jobs/{call_id}/cancel  FunctionCall.cancel()         200 {} (404 unknown)
    GET  /health                 wakes no GPU                  200 {"ok": true, …}

A 500 with `"state": "failed"` or `"timed_out"` is the call's own failure; any other 500 is
the platform's.

The COMPLETED body is `{"state": "completed", "exec_ms": N, "output": <wire BatchResponse>}`:
the GPU method builds it, the endpoint passes it through untouched.
"""

from __future__ import annotations

import re

from csm_offload import BatchResponse, wire

JOBS = "/jobs"
HEALTH = "/health"
#: Modal's proxy-auth headers: a Proxy Auth Token's ID and secret.
KEY_HEADER = "Modal-Key"
SECRET_HEADER = "Modal-Secret"
#: Modal function call ids (`fc-` and letters/digits); they go into URL paths, so nothing else
#: is accepted on either side (a "/" or "?" would address another route).
CALL_ID = re.compile(r"fc-[A-Za-z0-9]{1,64}")
#: Our bound on a submitted body (Modal documents none for web endpoints that we found).
MAX_BODY_BYTES = 32 * 1024 * 1024

PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"
TIMED_OUT = "timed_out"
EXPIRED = "expired"
UNKNOWN = "unknown"
#: The states a 500 answer of the endpoint carries: the call itself is over and did not succeed.
CALL_FAILURES = (FAILED, TIMED_OUT)


def is_call_id(value: object) -> bool:
    return isinstance(value, str) and CALL_ID.fullmatch(value) is not None


def job_path(call_id: str, action: str = "") -> str:
    """`/jobs/{call_id}` (and `/cancel`), for an id already checked with `is_call_id`."""
    return f"{JOBS}/{call_id}/{action}" if action else f"{JOBS}/{call_id}"


def completed_body(response: BatchResponse, exec_ms: int) -> bytes:
    """The 200 answer for a finished call, built around the already-encoded wire response so
    a batch's audio is serialised once."""
    head = f'{{"state":"{COMPLETED}","exec_ms":{int(exec_ms)},"output":'.encode()
    return head + wire.dumps(response) + b"}"
