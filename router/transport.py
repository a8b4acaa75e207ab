"""One async seam for every target: edge workers and external OIP servers over httpx (on
aiohttp's connection pool), the cloud deployment over a Ray Serve ``DeploymentHandle``.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from edgeroute import contract
from edgeroute.http import parse_server_timing
from edgeroute.oip import (
    DATATYPES,
    InferRequest,
    OIPError,
    Tensor,
    decode_response,
    encode_request,
)
from edgeroute.signature import Batch, Signature, TensorSpec
from router.aiohttp_pool import AiohttpTransport
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


def conform(spec: TensorSpec, data: np.ndarray, rows: int) -> np.ndarray:
    """An output as the signature states it. A server may answer a column vector [N, 1]
    for [N], or FP64 for FP32 (MLServer's scikit-learn runtime does both): the values are
    reshaped when their count fits the signature's fixed shape, and converted within their
    kind (float to float, integer to integer when every value fits). Anything else is a
    ``ValueError`` naming what was expected."""
    want = np.dtype(DATATYPES[spec.datatype])
    expected = tuple(rows if i == 0 and d == -1 else d for i, d in enumerate(spec.shape))
    fits = len(data.shape) == len(expected) and all(
        d == -1 or d == got for d, got in zip(expected, data.shape, strict=True))
    if not fits and -1 not in expected and data.size == int(np.prod(expected)):
        data, fits = data.reshape(expected), True
    if not fits:
        raise ValueError(f"output '{spec.name}' has shape {list(data.shape)}, "
                         f"the model's is {list(expected)}")
    if data.dtype == want:
        return data
    same_kind = (data.dtype.kind == "f" and want.kind == "f") or (
        data.dtype.kind in "iu" and want.kind in "iu")
    converted = data.astype(want) if same_kind else None
    if converted is None or (want.kind in "iu" and not np.array_equal(converted, data)):
        raise ValueError(f"output '{spec.name}' is {data.dtype}, the model's is {spec.datatype}")
    return converted


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
    """One model of an OIP v2 server over a pooled keep-alive httpx client (on aiohttp's
    connection pool, :mod:`router.aiohttp_pool`), tensors in
    binary form (``binary=False``: JSON tensors). ``output_names`` maps a model output to
    the server's name for it: the request then names every output, by the server's names,
    and the answers are renamed back. Answers are conformed to the signature
    (:func:`conform`)."""

    def __init__(self, name: str, url: str, client: httpx.AsyncClient | None = None, *,
                 signature: Signature = contract.SIGNATURE,
                 confidence_output: str | None = contract.OUTPUT_PROBABILITIES,
                 binary: bool = True, output_names: Mapping[str, str] | None = None) -> None:
        unknown = sorted(set(output_names or {}) - {s.name for s in signature.outputs})
        if unknown:
            raise ValueError(f"target '{name}': output_names names {', '.join(unknown)}, not "
                             f"outputs of model '{signature.name}' "
                             f"({', '.join(s.name for s in signature.outputs)})")
        self.name = name
        self.url = url.rstrip("/")
        self.signature = signature
        self.confidence_output = confidence_output
        self.binary = binary
        self._server_names = {s.name: (output_names or {}).get(s.name, s.name)
                              for s in signature.outputs}
        self._ask = tuple(self._server_names.values()) if output_names else None
        self._client = client or httpx.AsyncClient(
            transport=AiohttpTransport(),  # httpx's API over aiohttp's cheaper pool
            timeout=httpx.Timeout(30.0), trust_env=False,
            headers={"accept-encoding": "identity"},  # binary tensors: not worth gzip's CPU
        )
        self._infer_url = f"{self.url}/v2/models/{signature.name}/infer"

    async def infer(self, x: Batch, timeout_s: float) -> Reply:
        request = InferRequest(inputs=x.tensors, outputs=self._ask,
                               binary_outputs=frozenset(self._ask or ()) if self.binary
                               else frozenset(), binary_output_default=self.binary)
        body, headers = encode_request(request, binary=self.binary)
        headers[DEADLINE_HEADER] = str(max(int(timeout_s * 1000), 1))
        rid = request_id.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        response = await self._send("POST", self._infer_url, timeout_s, content=body,
                                    headers=headers)
        try:
            decoded = decode_response(response.content, response.headers)
            answered = {t.name: t.data for t in decoded.outputs}
            outputs = tuple(Tensor(s.name, conform(s, answered[self._server_names[s.name]],
                                                   len(x)))
                            for s in self.signature.outputs)
        except KeyError as exc:
            raise TargetRejected(self.name, f"malformed response: no output {exc}") from None
        except (OIPError, ValueError) as exc:
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
