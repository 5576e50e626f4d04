"""The serving core: one data plane that every protocol calls.

A protocol is a codec (`codecs`) plus a thin route; `DataPlane.infer` does the rest
once, for all of them: observe, read the body, authenticate, rate-limit, authorize,
decode, validate, predict, encode.
"""

from .codecs import CODECS, Codec, Decoded, Encoded
from .dataplane import DataPlane, InferenceCall, RequestObservation
from .services import Services, build_services

__all__ = [
    "CODECS",
    "Codec",
    "DataPlane",
    "Decoded",
    "Encoded",
    "InferenceCall",
    "RequestObservation",
    "Services",
    "build_services",
]
