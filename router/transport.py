"""One async seam for every target: edge workers and external OIP servers over httpx,
the cloud deployment over a Ray Serve ``DeploymentHandle``.

A transport sends one model's validated :class:`~edgeroute.signature.Batch` and
returns a :class:`Reply` carrying the model's own outputs, or raises a
:class:`TargetError`. Foreign exceptions (httpx's, Ray's, timeouts)
are translated here and nowhere else:

* ``TargetError`` — the target did not answer usefully; ``retryable`` says
  whether another attempt (here or elsewhere) may succeed.

  * ``TargetUnavailable`` — refused, reset, 503/429, a dead actor, a lost packet.
  * ``TargetTimeout`` — no answer within the attempt's timeout.
  * ``TargetRejected`` — the target answered 4xx: a contract mismatch between
    router and target, not the client's fault (the router validated the input).

Callers bound every call with ``timeout_s``: a Ray handle call to a replica
whose node is gone does not fail, it hangs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from edgeroute import contract
from edgeroute.http import parse_server_timing
from edgeroute.oip import InferRequest, OIPError, Tensor, decode_response, encode_request
from edgeroute.signature import Batch, Signature
from router.context import DEADLINE_HEADER, REQUEST_ID_HEADER, request_id

_NO_CONFIDENCE = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Reply:
    outputs: tuple[Tensor, ...]
    """Every output of the model, in its signature's order."""
    model_version: str
    server_ms: float
    """Compute time the server reports for the batch this request ran in."""
    queue_ms: float
    """Time the server reports this request waited before its batch started."""
    batch_rows: int
    confidence_output: str | None = None
    """The output holding class probabilities (the cascade reads it), if the model has one."""

    def output(self, name: str) -> np.ndarray:
        return next(t.data for t in self.outputs if t.name == name)

    @property
    def probabilities(self) -> np.ndarray:
        """The confidence output [N, C]; an empty [0, 0] array for a model without one (so
        no answer is ever taken for unsure)."""
        if self.confidence_output is None:
            return _NO_CONFIDENCE
        return self.output(self.confidence_output)


def model_outputs(signature: Signature, outputs: dict[str, np.ndarray]) -> tuple[Tensor, ...]:
    """The signature's outputs from a target's answer; a missing one is a ``KeyError``."""
    return tuple(Tensor(s.name, np.asarray(outputs[s.name])) for s in signature.outputs)


class TargetError(Exception):
    retryable = True

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason


class TargetUnavailable(TargetError):
    def __init__(self, target: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(target, reason)
        self.retry_after_s = retry_after_s


class TargetTimeout(TargetError):
    pass


class TargetRejected(TargetError):
    retryable = False


class Transport(Protocol):
    name: str

    async def infer(self, x: Batch, timeout_s: float) -> Reply: ...

    async def probe(self, timeout_s: float) -> None:
        """Raise a ``TargetError`` unless the target answers its readiness check in time."""

    async def aclose(self) -> None: ...


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


class HttpTransport:
    """One model of an OIP v2 server over a pooled keep-alive httpx client, tensors in
    binary form."""

    def __init__(self, name: str, url: str, client: httpx.AsyncClient | None = None, *,
                 signature: Signature = contract.SIGNATURE,
                 confidence_output: str | None = contract.OUTPUT_PROBABILITIES) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.signature = signature
        self.confidence_output = confidence_output
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            timeout=httpx.Timeout(30.0),
            headers={"accept-encoding": "identity"},  # binary tensors: not worth gzip's CPU
        )
        self._infer_url = f"{self.url}/v2/models/{signature.name}/infer"

    async def infer(self, x: Batch, timeout_s: float) -> Reply:
        request = InferRequest(inputs=x.tensors, binary_output_default=True)
        body, headers = encode_request(request, binary=True)
        headers[DEADLINE_HEADER] = str(max(int(timeout_s * 1000), 1))
        rid = request_id.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        response = await self._send("POST", self._infer_url, timeout_s, content=body,
                                    headers=headers)
        try:
            decoded = decode_response(response.content, response.headers)
            outputs = model_outputs(self.signature, {t.name: t.data for t in decoded.outputs})
        except (OIPError, KeyError) as exc:
            raise TargetRejected(self.name, f"malformed response: {exc}") from None
        timing = parse_server_timing(response.headers.get("server-timing"))
        return Reply(
            outputs=outputs,
            model_version=decoded.model_version or "unknown",
            server_ms=timing.get("infer", 0.0),
            queue_ms=timing.get("queue", 0.0),
            batch_rows=len(x),
            confidence_output=self.confidence_output,
        )

    async def probe(self, timeout_s: float) -> None:
        await self._send("GET", f"{self.url}/v2/health/ready", timeout_s)

    async def _send(self, method: str, url: str, timeout_s: float, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(
                method, url, timeout=httpx.Timeout(max(timeout_s, 1e-3)), **kwargs
            )
        except httpx.TimeoutException:
            raise TargetTimeout(self.name, f"no answer within {timeout_s * 1000:.0f} ms") from None
        except httpx.TransportError as exc:
            raise TargetUnavailable(self.name, f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (429, 503) or response.status_code >= 500:
            raise TargetUnavailable(
                self.name, f"HTTP {response.status_code}", retry_after_s=_retry_after(response)
            )
        if response.status_code >= 400:
            raise TargetRejected(self.name, f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


class HandleTransport:
    """One model's cloud deployment through a Ray Serve ``DeploymentHandle``."""

    def __init__(self, name: str, handle: Any, *, signature: Signature = contract.SIGNATURE,
                 confidence_output: str | None = contract.OUTPUT_PROBABILITIES) -> None:
        self.name = name
        self._handle = handle
        self.signature = signature
        self.confidence_output = confidence_output

    async def infer(self, x: Batch, timeout_s: float) -> Reply:
        result = await self._call(self._handle.infer, timeout_s,
                                  {t.name: t.data for t in x.tensors})
        try:
            outputs = model_outputs(self.signature, result["outputs"])
        except KeyError as exc:
            raise TargetRejected(self.name, f"malformed response: no output {exc}") from None
        return Reply(
            outputs=outputs,
            model_version=result["model_version"],
            server_ms=result["service_ms"],
            queue_ms=result["queue_ms"],
            batch_rows=result["batch_rows"],
            confidence_output=self.confidence_output,
        )

    async def probe(self, timeout_s: float) -> None:
        await self._call(self._handle.ready, timeout_s)

    async def _call(self, method: Any, timeout_s: float, *args: Any) -> Any:
        response = method.remote(*args)
        try:
            return await asyncio.wait_for(response, timeout=max(timeout_s, 1e-3))
        except asyncio.TimeoutError:
            response.cancel()
            raise TargetTimeout(self.name, f"no answer within {timeout_s * 1000:.0f} ms") from None
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:
            raise TargetUnavailable(self.name, f"{type(exc).__name__}: {exc}"[:300]) from None

    async def aclose(self) -> None:
        return None
