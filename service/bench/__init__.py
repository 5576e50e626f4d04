"""`dynanoise bench`: the defense micro-benchmark, load tests of the service against a
naive FastAPI app and BentoML, memory; results as JSON, then markdown and plots."""

from .config import SECTIONS, BenchConfig
from .runner import run_bench

__all__ = ["SECTIONS", "BenchConfig", "run_bench"]
