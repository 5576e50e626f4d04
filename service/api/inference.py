"""The inference endpoints of every protocol, from one route table.

Each route is a path template and a codec; `serve` turns the request into an
`InferenceCall` for the data plane and its answer (or its error, through the one
error table) into a response. FastAPI's routes (for the OpenAPI document and any
request the lean path does not take) and the lean ASGI path (`fastpath`) both
call `serve` with a route from `INFERENCE_ROUTES`: adding a protocol is a codec
and a line here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ..serving import CODECS, Codec, DataPlane, Encoded, InferenceCall
from .deps import bearer
from .schemas import (
    ERROR_RESPONSES,
    V2_ERROR_RESPONSES,
    V1PredictRequest,
    V1PredictResponse,
    V2InferenceRequest,
    V2InferenceResponse,
    self_contained_schema,
)
from .status import error_response

logger = logging.getLogger("dynanoise.api")

# Not sent (its client is gone); the status nginx logs for a request its client closed.
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class InferenceRoute:
    """POST ``path`` speaks ``codec``; ``docs`` are FastAPI's route options."""

    path: str
    codec: Codec
    docs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def parameters(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def _path_parameter(name: str) -> dict[str, Any]:
    description = "Model name, as listed by GET /v1/models." if name == "model" else "Version."
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "title": name.title()},
        "description": description,
        **({"example": "digits"} if name == "model" else {}),
    }


_V1_DOCS = {
    "response_model": V1PredictResponse,
    "responses": ERROR_RESPONSES,
    "summary": "Defended prediction",
    "description": (
        "Runs the batch through the model and the tenant's DynaNoise defense. Returns "
        "defended probabilities only; raw logits never leave the service."
    ),
    "tags": ["v1"],
    "request_schema": V1PredictRequest.model_json_schema(),
}
_V2_DOCS = {
    "response_model": V2InferenceResponse,
    "responses": V2_ERROR_RESPONSES,
    "summary": "Defended inference",
    "description": (
        "Open Inference Protocol v2 infer. Output tensor `probabilities` (FP32, [batch, classes]) "
        "holds the defended probabilities. Supports the binary tensor data extension both ways "
        "(`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`/`binary_data_output`)."
    ),
    "tags": ["v2 (Open Inference Protocol)"],
    "request_schema": self_contained_schema(V2InferenceRequest),
}

INFERENCE_ROUTES = (
    InferenceRoute("/v1/models/{model}/predict", CODECS["v1"], _V1_DOCS),
    InferenceRoute("/v2/models/{model}/infer", CODECS["v2"], _V2_DOCS),
    InferenceRoute("/v2/models/{model}/versions/{version}/infer", CODECS["v2"], _V2_DOCS),
)


def match(path: str) -> tuple[InferenceRoute, dict[str, str]] | None:
    """The inference route for ``path`` (relative to the app's root) and its parameters."""
    for route in INFERENCE_ROUTES:
        if found := route.pattern.fullmatch(path):
            return route, found.groupdict()
    return None


def api_key_of(headers: Mapping[str, str]) -> str | None:
    """The bearer token of an Authorization header, as FastAPI's HTTPBearer reads it."""
    scheme, token = get_authorization_scheme_param(headers.get("authorization"))
    if not token or scheme.lower() != "bearer":
        return None
    return token


BodyReader = Callable[[], Awaitable[bytes]]
"""Reads a request's whole body; raises ClientDisconnect when its client went away."""


async def respond(
    plane: DataPlane,
    route: InferenceRoute,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    read_body: BodyReader,
) -> Encoded | Response:
    """Answer one inference request: its encoded answer, or the error `Response`.

    Refused on its head when it may (no body read for a missing key,
    `DataPlane.screen`), else run inline on the event loop when nothing in it can
    block (`DataPlane.cached_tenant`; a model that gathers requests is awaited there,
    `DataPlane.infer_gathered`, and so is a model call that other requests of the
    loop's turn may share, `DataPlane.infer_coalescing`), else in the thread pool.
    Both routes call this: FastAPI's (`serve`) and the lean ASGI one
    (`service.api.fastpath`)."""
    try:
        head = InferenceCall(
            route.codec,
            params["model"],
            params.get("version"),
            api_key_of(headers),
            b"",
            headers,
        )
        plane.screen(head)
    except Exception as exc:
        return error_response(exc, route.path)
    try:
        body = await read_body()  # the guard's size limit raises through here
    except ClientDisconnect:
        # The client went away mid-body: nothing to answer, nothing gone wrong here.
        logger.debug("client disconnected before sending its body")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    try:
        call = head.with_body(body)
        tenant = plane.cached_tenant(call)
        if tenant is None and (lookup := plane.tenant_lookup(call)) is not None:
            # The key's entry expired while it was idle: wait for its lookup here, on
            # the event loop, then run inline, rather than give each request a pool
            # thread (threads convoy on the GIL: ~15 ms a request at the start of a
            # burst). A lookup that fails or is slow leaves the request to the pool.
            with contextlib.suppress(Exception):
                waiting = asyncio.shield(asyncio.wrap_future(lookup))  # never cancel it
                await asyncio.wait_for(waiting, plane.lookup_wait_seconds)
            tenant = plane.cached_tenant(call)
        if tenant is not None:
            if plane.gathers(call):
                return await plane.infer_gathered(call, tenant)
            if plane.coalescing():
                return await plane.infer_coalescing(call, tenant)
            return plane.infer(call, tenant)
        return await run_in_threadpool(plane.infer, call)
    except Exception as exc:
        return error_response(exc, route.path)


def encoded_response(encoded: Encoded) -> Response:
    """A Starlette response of ``encoded`` (FastAPI's route)."""
    return Response(
        encoded.content,
        media_type=encoded.media_type,
        headers=dict(encoded.headers) if encoded.headers else None,
    )


async def serve(request: Request, route: InferenceRoute, params: Mapping[str, str]) -> Response:
    """FastAPI's inference endpoint: `respond` to a Starlette request."""
    plane: DataPlane = request.app.state.dataplane
    answer = await respond(plane, route, params, request.headers, request.body)
    return answer if isinstance(answer, Response) else encoded_response(answer)


Endpoint = Callable[..., Coroutine[Any, Any, Response]]


def _endpoint(route: InferenceRoute) -> Endpoint:
    async def endpoint(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # for the docs
    ) -> Response:
        return await serve(request, route, request.path_params)

    return endpoint


def inference_router() -> APIRouter:
    """FastAPI routes for every entry of `INFERENCE_ROUTES`."""
    router = APIRouter()
    for route in INFERENCE_ROUTES:
        docs = dict(route.docs)
        schema = docs.pop("request_schema")
        router.add_api_route(
            route.path,
            _endpoint(route),
            methods=["POST"],
            openapi_extra={
                "parameters": [_path_parameter(name) for name in route.parameters],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
            },
            **docs,
        )
    return router
