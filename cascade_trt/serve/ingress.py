"""The HTTP ingress: a FastAPI app in its own deployment, in front of the model deployment.

Routes: `POST /v1/images/generations` (OpenAI's Images API, see `schema`), `GET /health` (the service
answers) and `GET /ready` (a model replica is loaded and warmed up). Every refusal is JSON in OpenAI's error
shape, naming the field:

| status | when |
|---|---|
| 400 | the body is not JSON, a field is unknown or of the wrong type, a value the service or the pipeline refuses |
| 401 | an API key is set and the request lacks `Authorization: Bearer KEY` (`/health` and `/ready` are open) |
| 413 | the body is larger than `max_body_bytes` |
| 500 | the pipeline call failed: the error's message |
| 503 | the model replica died while it held the request (Ray replaces it): retry |
| 504 | no answer within `timeout_s` |

Living apart from the model, the ingress survives a model replica's death and turns it into a 503 instead of a
dropped connection; and it refuses bad requests without touching a model replica.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the Serve class at run time.

import asyncio
import base64
import hmac
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from cascade_trt.serve.config import ServeConfig, format_size
from cascade_trt.serve.schema import (
    ImageData,
    ImageRequest,
    ImageResponse,
    RequestError,
    check_limits,
    error_body,
    validation_error,
)

log = logging.getLogger(__name__)

MODEL_DEPLOYMENT = "CascadeModel"
_REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)

api = FastAPI(
    title="cascade_trt",
    summary="Stable Cascade text-to-image, OpenAI Images API compatible",
)


@api.exception_handler(RequestError)
async def _refuse(request: Request, exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


@api.exception_handler(ValidationError)
async def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
    return await _refuse(request, validation_error(exc.errors()))


async def _result(response: Any) -> Any:
    return await response  # wait_for takes a coroutine; a DeploymentResponse is only awaitable


def _error(message: str, status: int) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(error_body(message, status), status_code=status, headers=headers)


# Helpers above the class: `serve.ingress` pickles the class when it decorates it, with the globals it sees then.
@serve.deployment(name="CascadeIngress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class CascadeIngress:
    def __init__(self, model: Any, config: ServeConfig) -> None:
        self.model, self.config = model, config

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> JSONResponse:
        app = serve.get_replica_context().app_name
        status = serve.status().applications[app].deployments[MODEL_DEPLOYMENT]
        running = status.replica_states.get("RUNNING", 0)
        body = {"ready": running > 0, "replicas": running, **self._describe()}
        return JSONResponse(body, status_code=200 if running else 503)

    @api.post(
        "/v1/images/generations",
        response_model=ImageResponse,
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": ImageRequest.model_json_schema()}}}
        },
    )
    async def generations(self, request: Request) -> JSONResponse:
        self._authorize(request)
        parsed = ImageRequest.model_validate_json(await self._body(request))
        check_limits(parsed, self.config)  # service limits here; the pipeline's checks in the replica
        response = self.model.generate.remote(parsed.model_dump())
        try:
            result = await asyncio.wait_for(_result(response), self.config.timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            return _error(f"no answer within {self.config.timeout_s:g} s (--timeout): try again later", 504)
        except _REPLICA_GONE as exc:
            log.warning("a model replica died holding a request: %s", type(exc).__name__)
            return _error("the model replica serving this request stopped; it is being replaced: retry", 503)
        except Exception as exc:  # noqa: BLE001 (any failure of the call is this request's 500, with its message)
            cause = exc.cause if isinstance(exc, RayTaskError) else exc
            log.error("request failed: %s: %s", type(cause).__name__, cause)
            return _error(f"{type(cause).__name__}: {cause}", 500)
        if isinstance(result, RequestError):
            raise result
        data = [
            ImageData(b64_json=base64.b64encode(png).decode(), seed=seed)
            for png, seed in zip(result.images, result.seeds, strict=True)
        ]
        body = ImageResponse(created=int(time.time()), data=data, batch_size=result.batch_size)
        return JSONResponse(body.model_dump())

    def _describe(self) -> dict[str, Any]:
        """The service's settings, for a load test to record with what it measured."""
        c = self.config
        return {
            "sizes": [format_size(s) for s in c.sizes],
            "max_batch": c.max_batch,
            "batch_wait_ms": c.batch_wait_ms,
            "backend": c.backend,
            "device": c.device,
            "precision": c.precision,
        }

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise RequestError(
                "missing or wrong API key: send the header Authorization: Bearer <key>", None, 401
            )

    async def _body(self, request: Request) -> bytes:
        """The body, refused with 413 past the limit (by its Content-Length before reading, or while reading)."""
        limit = self.config.max_body_bytes
        too_large = RequestError(
            f"the body is larger than {limit} bytes: a request is a prompt and a few fields", None, 413
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)
