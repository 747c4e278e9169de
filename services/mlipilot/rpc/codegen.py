"""Generate the Python code of ``protos/mlipilot/v1/*.proto`` into ``services/mlipilot/v1/``.

The generated files are committed, so a fresh clone imports them without grpcio-tools; the
test suite regenerates them into a temporary folder and fails when the committed ones differ.
``python -m mlipilot.rpc.codegen`` (or ``make protos``) rewrites them.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "protos"
SERVICES_ROOT = REPO_ROOT / "services"
PACKAGE = Path("mlipilot") / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every proto; return the files written under ``out_root / mlipilot/v1``."""
    from grpc_tools import protoc  # a dev dependency: only code generation needs it

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p for p in (out_root / PACKAGE).iterdir() if "_pb2" in p.name)


def main() -> None:
    written = generate(SERVICES_ROOT)
    for path in written:
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    sys.exit(main())
