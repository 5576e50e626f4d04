"""The wire formats, both directions, in one place: v1 JSON and the Open Inference
Protocol v2 (JSON and binary tensors) to and from numpy.

numpy and orjson only: no web framework, no model runtime. The server decodes
requests and encodes responses; clients (the audit's HTTP oracle, the benchmark,
the tests) encode requests and decode responses with the same code.
"""

from .dtypes import MANIFEST_TO_V2, V2_DTYPES, v2_datatype
from .encoding import decompress
from .v1 import decode_v1_request, decode_v1_response, encode_v1_request, encode_v1_response
from .v2 import (
    HEADER_LENGTH,
    OUTPUT_NAME,
    V2Request,
    decode_v2_request,
    decode_v2_response,
    encode_v2_request,
    encode_v2_response,
)

__all__ = [
    "HEADER_LENGTH",
    "MANIFEST_TO_V2",
    "OUTPUT_NAME",
    "V2_DTYPES",
    "V2Request",
    "decode_v1_request",
    "decode_v1_response",
    "decode_v2_request",
    "decode_v2_response",
    "decompress",
    "encode_v1_request",
    "encode_v1_response",
    "encode_v2_request",
    "encode_v2_response",
    "v2_datatype",
]
