"""How an audit queries the defended target: in process, or black-box over HTTP.

Both answer ``query(x) -> probabilities (n, k)`` and nothing else, so the attacks
run the same code whether the target is an ONNX file next to the auditor or a
live `dynanoise serve` deployment. The in-process oracle runs the same steps as
the server (validate, ONNX logits, defense), so keyed noise gives the same
numbers both ways when it is given the tenant's secret and model id.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import httpx
import numpy as np
from numpy.typing import NDArray

from ..protocol import (
    HEADER_LENGTH,
    V2_DTYPES,
    decode_v1_response,
    decode_v2_response,
    encode_v1_request,
    encode_v2_request,
)
from ..runtime import OnnxClassifier
from .defenses import AuditedDefense

Endpoint = Literal["v1", "v2"]


class OracleError(RuntimeError):
    """The defended model could not be queried (HTTP error, malformed answer)."""


@runtime_checkable
class Oracle(Protocol):
    """A defended classifier seen from outside: inputs in, probabilities out."""

    def query(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Defended probabilities (n, k) for the inputs ``x`` (n, *sample_shape)."""
        ...


class InProcessOracle:
    """An exported ONNX model behind an audited defense, in this process.

    ``rng`` feeds fresh noise; keyed defenses carry their own secret and model id.
    """

    def __init__(
        self,
        model: OnnxClassifier,
        defense: AuditedDefense,
        rng: np.random.Generator,
        *,
        batch_size: int = 1024,
    ) -> None:
        self.model = model
        self.defense = defense
        self.rng = rng
        self.batch_size = batch_size

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, defense: AuditedDefense, rng: np.random.Generator
    ) -> InProcessOracle:
        """Load ``model_dir`` (model.onnx + manifest.json) as the server would."""
        return cls(OnnxClassifier.load(Path(model_dir)), defense, rng)

    def query(self, x: NDArray[Any]) -> NDArray[np.float32]:
        batch = self.model.validate(np.asarray(x))
        parts = [
            self.model.logits(batch[i : i + self.batch_size])
            for i in range(0, len(batch), self.batch_size)
        ]
        logits = np.concatenate(parts)
        return np.asarray(self.defense(logits, batch, self.rng), dtype=np.float32)


class HttpOracle:
    """A live deployment, queried with a tenant's API key over v1 JSON or v2 binary.

    Batches larger than ``batch_size`` are split into several requests (keep it at
    or below the server's DYNANOISE_MAX_BATCH).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        endpoint: Endpoint = "v1",
        batch_size: int = 256,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
    ) -> None:
        if endpoint not in ("v1", "v2"):
            raise ValueError("endpoint must be 'v1' or 'v2'")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.endpoint = endpoint
        self.batch_size = batch_size
        self._owns_client = client is None
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._v2_input: tuple[str, str] | None = None

    def query(self, x: NDArray[Any]) -> NDArray[np.float32]:
        x = np.asarray(x)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError("x must be a non-empty batch (n, *sample_shape)")
        send = self._predict_v1 if self.endpoint == "v1" else self._infer_v2
        parts = [send(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(parts)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        response = self._client.post(path, content=content, headers={**self._headers, **headers})
        if not response.is_success:
            raise OracleError(f"POST {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def _predict_v1(self, x: NDArray[Any]) -> NDArray[np.float32]:
        response = self._post(
            f"/v1/models/{self.model}/predict",
            encode_v1_request(x),
            {"Content-Type": "application/json"},
        )
        try:
            probabilities, _ = decode_v1_response(response.content)
        except ValueError as exc:
            raise OracleError(str(exc)) from exc
        return _checked(probabilities, len(x))

    def _v2_input_spec(self) -> tuple[str, str]:
        if self._v2_input is None:
            response = self._client.get(f"/v2/models/{self.model}", headers=self._headers)
            if not response.is_success:
                raise OracleError(
                    f"model metadata: HTTP {response.status_code}: {response.text[:500]}"
                )
            spec = response.json()["inputs"][0]
            self._v2_input = (spec["name"], spec["datatype"])
        return self._v2_input

    def _infer_v2(self, x: NDArray[Any]) -> NDArray[np.float32]:
        name, datatype = self._v2_input_spec()
        if datatype not in V2_DTYPES:
            raise OracleError(f"unsupported input datatype {datatype}")
        body, headers = encode_v2_request(x, name, datatype=datatype)
        response = self._post(f"/v2/models/{self.model}/infer", body, headers)
        try:
            probabilities = decode_v2_response(
                response.content, response.headers.get(HEADER_LENGTH)
            )
        except ValueError as exc:
            raise OracleError(str(exc)) from exc
        return _checked(probabilities, len(x))


def _checked(probs: NDArray[np.float32], n: int) -> NDArray[np.float32]:
    if probs.ndim != 2 or probs.shape[0] != n or not np.isfinite(probs).all():
        raise OracleError(f"expected finite probabilities for {n} rows, got shape {probs.shape}")
    return probs
