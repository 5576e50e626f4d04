"""An ONNX graph's signature as onnxruntime reports it: what `dynanoise models add`
writes into a manifest, and what the loader and `dynanoise models check` compare a
manifest against. Every refusal is one line (an `InspectError`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from .manifest import DTYPES, ManifestError, ModelManifest, OutputKind, load_manifest

ORT_TO_NUMPY: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}
_FLOAT_OUTPUTS = ("tensor(float)", "tensor(double)", "tensor(float16)")
_PROBABILITY_TOLERANCE = 1e-4
"""How far from 1 a probed row's sum may be for the output to count as probabilities."""


class InspectError(ValueError):
    """A graph that cannot be served as a classifier, or not as asked (one line)."""


@dataclass(frozen=True)
class GraphTensor:
    """One input or output of a graph: dimensions are ints where fixed, else None."""

    name: str
    type: str
    dims: tuple[int | None, ...]

    @classmethod
    def of(cls, node: ort.NodeArg) -> GraphTensor:
        shape = node.shape if isinstance(node.shape, list) else []
        return cls(node.name, node.type, tuple(d if isinstance(d, int) else None for d in shape))

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the graph fixes axis 0 (None when it is dynamic)."""
        return self.dims[0] if self.dims and self.dims[0] is not None else None

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.name}: {self.type} [{dims}]"


@dataclass(frozen=True)
class GraphSignature:
    """The input a classifier is fed and the (n, k) output it is read from."""

    input: GraphTensor
    output: GraphTensor

    @property
    def dtype(self) -> str:
        return ORT_TO_NUMPY[self.input.type]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(d for d in self.input.dims[1:] if d is not None)


def open_session(path: Path, *, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session on ``path``; InspectError (not naming the path) when the file is not
    a loadable model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several unrelated types for bad files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InspectError(f"not a loadable ONNX model ({detail})") from exc


def read_signature(
    session: ort.InferenceSession,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
) -> GraphSignature:
    """Pick the classifier's input and output: the named ones, else the only input and
    the only 2-D float output. Refuses inputs of an unsupported dtype or with sample
    dimensions that are not fixed."""
    inputs = [GraphTensor.of(i) for i in session.get_inputs()]
    outputs = [GraphTensor.of(o) for o in session.get_outputs()]
    chosen_input = _pick_input(inputs, input_name)
    if chosen_input.type not in ORT_TO_NUMPY:
        raise InspectError(
            f"input {chosen_input.describe()} has an unsupported dtype "
            f"(supported: {', '.join(DTYPES)})"
        )
    if len(chosen_input.dims) < 2 or any(d is None or d <= 0 for d in chosen_input.dims[1:]):
        raise InspectError(
            f"input {chosen_input.describe()}: needs a batch axis first and fixed, "
            "positive sample dimensions"
        )
    return GraphSignature(chosen_input, _pick_output(outputs, output_name))


def detect_output_kind(
    path: Path, session: ort.InferenceSession, signature: GraphSignature
) -> tuple[OutputKind, str]:
    """Whether the output holds probabilities (a softmax inside) or logits, and why.

    The node that produces the output decides when the `onnx` package can read the
    graph (Softmax: probabilities; LogSoftmax: logits, being log-probabilities);
    otherwise a probe does: outputs on random inputs that are all in [0, 1] with rows
    summing to 1 are probabilities.
    """
    producer = _producer_op(path, signature.output.name)
    if producer == "Softmax":
        return "probabilities", "the graph's last node is Softmax"
    if producer == "LogSoftmax":
        return "logits", "the graph's last node is LogSoftmax (log-probabilities)"
    out = probe(session, signature)
    if np.all(out >= 0) and np.all(np.abs(out.sum(axis=1) - 1.0) < _PROBABILITY_TOLERANCE):
        return "probabilities", "its outputs on random inputs are rows that sum to 1"
    return "logits", "its outputs on random inputs are not probabilities"


def probe(session: ort.InferenceSession, signature: GraphSignature) -> np.ndarray:
    """The output (n, k) on a few random inputs of the graph's batch size (or 4 rows)."""
    rows = signature.input.fixed_batch or 4
    rng = np.random.default_rng(0)
    shape = (rows, *signature.sample_shape)
    dtype = np.dtype(signature.dtype)
    x = rng.normal(size=shape) if dtype.kind == "f" else rng.integers(0, 2, size=shape)
    try:
        (out,) = session.run([signature.output.name], {signature.input.name: x.astype(dtype)})
    except Exception as exc:  # onnxruntime's error types vary; the message is what matters
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InspectError(f"the graph fails on a probe batch of {rows} rows: {detail}") from exc
    return np.asarray(out, dtype=np.float64).reshape(rows, -1)


def manifest_for(
    path: Path,
    *,
    name: str,
    labels: list[str],
    input_name: str | None = None,
    output_name: str | None = None,
    output_kind: OutputKind | None = None,
    version: str = "1",
    description: str = "",
) -> tuple[dict[str, Any], str]:
    """The manifest of the graph at ``path`` served as ``name`` with ``labels``, and a
    line saying what kind of output it has and why. InspectError when it cannot be
    served as asked (labels that do not match the output width among others)."""
    session = open_session(path)
    signature = read_signature(session, input_name=input_name, output_name=output_name)
    width = signature.output.dims[1] or probe(session, signature).shape[1]
    if width != len(labels):
        raise InspectError(
            f"{len(labels)} labels given but output {signature.output.name!r} has {width} "
            "columns (one per class)"
        )
    if output_kind is None:
        output_kind, reason = detect_output_kind(path, session, signature)
    else:
        probe(session, signature)  # the graph must run at its batch size
        reason = "as --output says"
    spec: dict[str, Any] = {
        "name": signature.input.name,
        "shape": [-1, *signature.sample_shape],
        "dtype": signature.dtype,
    }
    if signature.input.fixed_batch is not None:
        spec["fixed_batch"] = signature.input.fixed_batch
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "file": "model.onnx",
        "input": spec,
        "output": {"name": signature.output.name, "kind": output_kind},
        "labels": labels,
        "description": description,
    }
    try:
        ModelManifest.model_validate(manifest)
    except ValidationError as exc:
        raise InspectError(f"invalid manifest: {_one_line(exc)}") from None
    return manifest, f"output {signature.output.name!r} holds {output_kind}: {reason}"


def check_model_dir(model_dir: Path) -> list[str]:
    """Every problem that would stop ``model_dir`` from serving, or make it answer
    wrongly (probabilities declared as logits), one line each (empty: none)."""
    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        return [str(exc)]
    path = model_dir / manifest.file
    if not path.is_file():
        return [f"model file {manifest.file!r} not found"]
    try:
        session = open_session(path)
    except InspectError as exc:
        return [str(exc)]
    problems = manifest_problems(manifest, session)
    if problems:
        return problems
    signature = GraphSignature(
        GraphTensor.of(next(i for i in session.get_inputs() if i.name == manifest.input.name)),
        GraphTensor.of(next(o for o in session.get_outputs() if o.name == manifest.output.name)),
    )
    try:
        detected, reason = detect_output_kind(path, session, signature)
    except InspectError as exc:
        return [str(exc)]
    if detected != manifest.output.kind:
        return [
            f'output.kind is "{manifest.output.kind}" but the output holds {detected}: {reason}'
        ]
    return []


def manifest_problems(manifest: ModelManifest, session: ort.InferenceSession) -> list[str]:
    """Every way the manifest disagrees with the graph, one line each (empty: none)."""
    inputs = {i.name: GraphTensor.of(i) for i in session.get_inputs()}
    outputs = {o.name: GraphTensor.of(o) for o in session.get_outputs()}
    spec = manifest.input
    problems: list[str] = []
    graph_input = inputs.get(spec.name)
    if graph_input is None:
        problems.append(f"the graph has no input named {spec.name!r}")
    else:
        if ORT_TO_NUMPY.get(graph_input.type) != spec.dtype:
            problems.append(f"input dtype {graph_input.type} != manifest {spec.dtype}")
        if len(graph_input.dims) != len(spec.shape) or any(
            g is not None and g != m
            for g, m in zip(graph_input.dims[1:], spec.shape[1:], strict=True)
        ):
            problems.append(f"input shape {list(graph_input.dims)} != manifest {spec.shape}")
        if graph_input.fixed_batch != spec.fixed_batch:
            problems.append(_batch_problem(graph_input.fixed_batch, spec.fixed_batch))
    graph_output = outputs.get(manifest.output.name)
    if graph_output is None:
        problems.append(f"the graph has no output named {manifest.output.name!r}")
    elif graph_output.type not in _FLOAT_OUTPUTS:
        problems.append(f"output {graph_output.describe()} is not a float tensor")
    elif len(graph_output.dims) != 2 or (
        graph_output.dims[1] is not None and graph_output.dims[1] != len(manifest.labels)
    ):
        problems.append(
            f"output shape {list(graph_output.dims)} does not match {len(manifest.labels)} labels"
        )
    return problems


def _batch_problem(graph: int | None, manifest: int | None) -> str:
    if manifest is None:
        return (
            f"the graph fixes the batch axis at {graph} but the manifest's input has no "
            f'"fixed_batch": {graph} (`dynanoise models add` writes it)'
        )
    if graph is None:
        return f'the graph\'s batch axis is dynamic but the manifest says "fixed_batch": {manifest}'
    return f"the graph fixes the batch axis at {graph}, the manifest at {manifest}"


def _pick_input(inputs: list[GraphTensor], name: str | None) -> GraphTensor:
    if name is not None:
        for tensor in inputs:
            if tensor.name == name:
                return tensor
        raise InspectError(f"the graph has no input named {name!r} (inputs: {_names(inputs)})")
    if len(inputs) != 1:
        raise InspectError(
            f"the graph has {len(inputs)} inputs ({_names(inputs)}); choose one with --input-name"
        )
    return inputs[0]


def _pick_output(outputs: list[GraphTensor], name: str | None) -> GraphTensor:
    if name is not None:
        matches = [t for t in outputs if t.name == name]
        if not matches:
            raise InspectError(
                f"the graph has no output named {name!r} (outputs: {_names(outputs)})"
            )
        chosen = matches[0]
        if chosen.type not in _FLOAT_OUTPUTS or len(chosen.dims) != 2:
            raise InspectError(f"output {chosen.describe()} is not a 2-D float tensor (n, classes)")
        return chosen
    candidates = [t for t in outputs if t.type in _FLOAT_OUTPUTS and len(t.dims) == 2]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        listing = "; ".join(t.describe() for t in outputs)
        raise InspectError(
            f"no output is a 2-D float tensor (n, classes) ({listing}); a scikit-learn export "
            "needs options={'zipmap': False}"
        )
    raise InspectError(
        f"the graph has {len(candidates)} (n, classes) outputs ({_names(candidates)}); "
        "choose one with --output-name"
    )


def _producer_op(path: Path, output_name: str) -> str | None:
    """The op type of the node that writes ``output_name`` (None: cannot tell)."""
    try:
        import onnx
    except ModuleNotFoundError:  # serving installs have no onnx: the probe decides
        return None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, ValueError):  # the session read it; onnx may still refuse it
        return None
    for node in reversed(graph.node):
        if output_name in node.output:
            return str(node.op_type)
    return None


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
        for err in exc.errors()
    )


def _names(tensors: list[GraphTensor]) -> str:
    return ", ".join(repr(t.name) for t in tensors)
