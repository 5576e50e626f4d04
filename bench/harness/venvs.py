"""The peers' virtual environments: one per peer under bench/.venvs/<peer>/, never the
service's own (``make bench-venvs``, or ``python bench/harness/venvs.py [peer ...]``).

Each peer gets its framework at a pinned, verified version and the same onnxruntime
as the service, so the comparison is between frameworks, not runtimes. Standard
library only: it runs before any dependency is installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

VENVS_DIR = Path(__file__).resolve().parents[1] / ".venvs"
ONNXRUNTIME = "onnxruntime==1.32.*"

# What each peer's environment holds (pip requirement strings), and the module that
# proves it works. The naive FastAPI app and the floor run in the service's own venv.
PEER_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    # httptools: uvicorn's fast HTTP parser, which the service and the other peers get
    # from their dependencies and `pip install mlserver` alone does not bring.
    "mlserver": ("mlserver==1.7.1", ONNXRUNTIME, "numpy", "httptools"),
    "kserve": ("kserve==0.21.0", ONNXRUNTIME, "numpy"),
    "litserve": ("litserve==0.2.19", ONNXRUNTIME, "numpy"),
    "bentoml": ("bentoml==1.4.40", ONNXRUNTIME, "numpy"),
}
PEER_MODULES = {"mlserver": "mlserver", "kserve": "kserve", "litserve": "litserve",
                "bentoml": "bentoml"}  # fmt: skip


def peer_python(peer: str, venvs_dir: Path = VENVS_DIR) -> Path:
    """Where ``peer``'s interpreter is (or would be)."""
    return venvs_dir / peer / "bin" / "python"


def build(peer: str, *, venvs_dir: Path = VENVS_DIR, python: str = sys.executable) -> Path:
    """Create (or update) ``peer``'s venv and install its pinned requirements."""
    venv = venvs_dir / peer
    if not peer_python(peer, venvs_dir).is_file():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(peer_python(peer, venvs_dir)), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *PEER_REQUIREMENTS[peer]], check=True)
    subprocess.run(
        [str(peer_python(peer, venvs_dir)), "-c", f"import {PEER_MODULES[peer]}"], check=True
    )
    return venv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the benchmark peers' virtual envs.")
    parser.add_argument("peers", nargs="*", help=f"some of {', '.join(PEER_REQUIREMENTS)} (all)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venvs")
    args = parser.parse_args(argv)
    unknown = set(args.peers) - set(PEER_REQUIREMENTS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}")
    failed = []
    for peer in args.peers or list(PEER_REQUIREMENTS):
        print(f"bench venv {peer}: {' '.join(PEER_REQUIREMENTS[peer])}", flush=True)
        try:
            build(peer, python=args.python)
        except subprocess.CalledProcessError as exc:
            print(f"bench venv {peer}: failed ({exc})", file=sys.stderr, flush=True)
            failed.append(peer)
    if failed:
        print(f"not built: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
