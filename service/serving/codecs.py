"""A protocol, as the data plane sees it: decode a body into a batch, encode the
defended probabilities into a body. The wire formats themselves are
`service.protocol`; these adapters add what the model's manifest says."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import UnknownModel, UnsupportedMediaType, echo
from ..protocol import (
    HEADER_LENGTH,
    V2Request,
    decode_v1_request,
    decode_v2_request,
    encode_v1_response,
    encode_v2_response,
)
from ..runtime.manifest import ModelManifest as Manifest


@dataclass(frozen=True, slots=True)
class Decoded:
    """A request's input batch, and what the codec needs to answer it."""

    batch: NDArray[Any]
    context: Any = None


@dataclass(frozen=True, slots=True)
class Encoded:
    content: bytes
    media_type: str
    headers: Mapping[str, str] | None = None


class Codec(Protocol):
    """One protocol's body format; ``name`` labels the request metrics."""

    name: str

    def check_media_type(self, headers: Mapping[str, str]) -> None:
        """UnsupportedMediaType unless the request's Content-Type (if any) is one this
        protocol's bodies are sent as; checked before the body is read."""
        ...

    def decode(
        self,
        body: bytes,
        headers: Mapping[str, str],
        manifest: Manifest,
        version: str | None,
        max_batch: int,
    ) -> Decoded: ...

    def encode(
        self, manifest: Manifest, decoded: Decoded, probabilities: NDArray[np.float32]
    ) -> Encoded: ...


JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


def _check_media_type(headers: Mapping[str, str], accepted: tuple[str, ...]) -> None:
    """No Content-Type (tritonclient.http's geventhttpclient sends none, nor do requests
    or httpx with raw bytes) or one of ``accepted``, parameters such as charset aside."""
    value = headers.get("content-type")
    if value is None:
        return
    if value.partition(";")[0].strip().lower() not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {echo(value)} is not accepted here: send {' or '.join(accepted)}"
        )


class V1Codec:
    name = "v1"

    def check_media_type(self, headers: Mapping[str, str]) -> None:
        _check_media_type(headers, (JSON,))

    def decode(
        self,
        body: bytes,
        headers: Mapping[str, str],
        manifest: Manifest,
        version: str | None,
        max_batch: int,
    ) -> Decoded:
        float32 = manifest.input.dtype == "float32"
        return Decoded(decode_v1_request(body, max_batch, float32=float32))

    def encode(
        self, manifest: Manifest, decoded: Decoded, probabilities: NDArray[np.float32]
    ) -> Encoded:
        content = encode_v1_response(
            manifest.name, manifest.version, manifest.labels, probabilities
        )
        return Encoded(content, "application/json")


class V2Codec:
    name = "v2"

    def check_media_type(self, headers: Mapping[str, str]) -> None:
        # A JSON body may come as octet-stream: tritonclient.http.aio (aiohttp) labels
        # every bytes body so. One that carries binary tensor data is not JSON.
        binary = headers.get(HEADER_LENGTH) is not None
        _check_media_type(headers, (OCTET_STREAM,) if binary else (JSON, OCTET_STREAM))

    def decode(
        self,
        body: bytes,
        headers: Mapping[str, str],
        manifest: Manifest,
        version: str | None,
        max_batch: int,
    ) -> Decoded:
        if version is not None and version != manifest.version:
            raise UnknownModel(f"model {manifest.name!r} has no version {echo(version)}")
        request = decode_v2_request(
            body, headers.get(HEADER_LENGTH), manifest.input.name, max_batch
        )
        return Decoded(request.batch, request)

    def encode(
        self, manifest: Manifest, decoded: Decoded, probabilities: NDArray[np.float32]
    ) -> Encoded:
        request: V2Request = decoded.context
        content, headers = encode_v2_response(
            manifest.name, manifest.version, request, probabilities
        )
        if headers:
            return Encoded(content, "application/octet-stream", headers)
        return Encoded(content, "application/json")


CODECS: dict[str, Codec] = {"v1": V1Codec(), "v2": V2Codec()}
"""Every protocol the data plane speaks, by name."""
