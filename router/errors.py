"""The one place where the router's errors become HTTP answers.

Errors raised below the ingress carry no HTTP status; this table gives each its
status and ``Retry-After`` (as httpx translates foreign errors at one boundary):

=====================================================  ======  ==================
error                                                  status  ``Retry-After``
=====================================================  ======  ==================
:class:`~edgeroute.oip.OIPError` (malformed request,   its 4xx -
unknown model, output or policy)
:class:`~router.tenancy.Unauthenticated`               401     -
:class:`~router.tenancy.NotPermitted`                  403     -
:class:`~router.served.Shed` (excess load)             503     the shedding delay
:class:`~router.served.NotServed`, deadline passed     504     -
:class:`~router.served.NotServed`, deadline left       503     when a target may
                                                               answer again
:class:`~router.service.Rejected` (no plan may run)    503     1 s
=====================================================  ======  ==================

Rows are matched in order, the first type that fits wins (``Shed`` before
``NotServed``). Anything else is a bug: Serve answers it 500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from edgeroute.http import retry_after_header
from edgeroute.oip import JSON_CONTENT, OIPError, error_body
from router.served import NotServed, Shed
from router.service import Rejected
from router.tenancy import NotPermitted, Unauthenticated

REJECTED_RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after_s: float | None = None
    """``None``: no ``Retry-After`` header."""


def _not_served(error: NotServed) -> Answer:
    return Answer(504) if error.deadline_passed else Answer(503, error.retry_after_s)


TABLE: tuple[tuple[type[Exception], Callable[[Any], Answer]], ...] = (
    (OIPError, lambda error: Answer(error.status)),
    (Unauthenticated, lambda error: Answer(401)),
    (NotPermitted, lambda error: Answer(403)),
    (Shed, lambda error: Answer(503, error.retry_after_s)),
    (NotServed, _not_served),
    (Rejected, lambda error: Answer(503, REJECTED_RETRY_AFTER_S)),
)
ROUTER_ERRORS: tuple[type[Exception], ...] = tuple(kind for kind, _ in TABLE)
"""Every error the table answers (for ``except ROUTER_ERRORS``)."""


def answer(error: Exception) -> Answer:
    """The status and ``Retry-After`` of ``error``; a type the table lacks is a ``TypeError``."""
    for kind, rule in TABLE:
        if isinstance(error, kind):
            return rule(error)
    raise TypeError(f"no HTTP answer for {type(error).__name__}") from error


def error_reply(error: Exception) -> Response:
    """The JSON error response (``{"error": message}``) for ``error``; a request a plan ran
    for also carries that plan's ``parameters.predicted_p_miss``."""
    found = answer(error)
    headers = {} if found.retry_after_s is None else {
        "retry-after": retry_after_header(found.retry_after_s)}
    message = error.message if isinstance(error, OIPError) else str(error)
    predicted = error.predicted_p_miss if isinstance(error, NotServed) else None
    parameters = None if predicted is None else {"predicted_p_miss": round(predicted, 5)}
    return Response(error_body(message, parameters), status_code=found.status,
                    media_type=JSON_CONTENT, headers=headers)
