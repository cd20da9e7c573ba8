"""Regenerates everything derived from protos/ (run as `make gen`).

- Copies the googleapis protos we import from the pinned googleapis-common-protos
  wheel into protos/google/ (so buf and Envoy resolve them offline).
- Python messages, gRPC stubs and their .pyi types (mypy-protobuf) into gen/.
- TypeScript messages and service descriptors for @cowatch/client into
  sdk/typescript/src/gen/ (protoc-gen-es as a local plugin of `buf generate`), and
  the web page's bundle into web/dist/ (committed so `make run` needs no Node).
  Both need Node >= 20; without it they are skipped with a warning (an error when
  CI is set, so the drift check never passes by skipping).
- A descriptor set (with imports, including google/rpc/error_details.proto so
  errors transcode) into gen/descriptors/cowatch.binpb for Envoy's
  grpc_json_transcoder.

Modelled on Temporal's scripts/gen_protos.py: generated code is committed and
CI regenerates it and fails on drift (`make gen-check`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
DESCRIPTOR = GEN / "descriptors" / "cowatch.binpb"
TS_SDK = ROOT / "sdk" / "typescript"
WEB = ROOT / "web"

# googleapis files our protos import (directly or transitively), plus
# error_details.proto so the descriptor set can render error details as JSON.
GOOGLEAPIS_FILES = [
    "google/api/annotations.proto",
    "google/api/client.proto",
    "google/api/field_behavior.proto",
    "google/api/http.proto",
    "google/api/launch_stage.proto",
    "google/api/resource.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
]


def vendor_googleapis() -> None:
    # Located through the distribution, not `import google.api`: run as a script, this file's directory
    # (protos/, holding the copies) is on sys.path and would shadow the wheel.
    wheel = distribution("googleapis-common-protos")
    for rel in GOOGLEAPIS_FILES:
        target = PROTOS / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(str(wheel.locate_file(rel))), target)


def generate_python() -> None:
    for path in GEN.glob("cowatch"):
        shutil.rmtree(path)
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "cowatch").rglob("*.proto"))
    wkt = Path(grpc_tools.__path__[0]) / "_proto"
    bin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--proto_path={wkt}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        f"--mypy_out={GEN}",
        f"--mypy_grpc_out={GEN}",
        *files,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    # Regular packages (not namespace packages) so mypy and importlib agree.
    for directory in [GEN / "cowatch", *(p for p in (GEN / "cowatch").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def build_descriptor_set() -> None:
    DESCRIPTOR.parent.mkdir(parents=True, exist_ok=True)
    buf = Path(sys.executable).parent / "buf"
    subprocess.run(
        [str(buf), "build", "--as-file-descriptor-set", "-o", str(DESCRIPTOR)],
        check=True,
        cwd=ROOT,
    )


def _npm_ci(package: Path, npm: str) -> None:
    """Install a package's locked dependencies once (``npm ci``); later runs reuse node_modules."""
    if not (package / "node_modules" / ".package-lock.json").is_file():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], check=True, cwd=package)


def generate_typescript() -> bool:
    """sdk/typescript/src/gen (protoc-gen-es) and web/dist (vite build); False when Node is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = (
            "node/npm not found: skipped the TypeScript SDK (sdk/typescript/src/gen) and the web bundle "
            "(web/dist). Install Node >= 20 to regenerate or drift-check them."
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            sys.exit(f"error: {message}")
        print(f"warning: {message}", file=sys.stderr)
        return False
    _npm_ci(TS_SDK, npm)
    buf = Path(sys.executable).parent / "buf"
    subprocess.run(
        [str(buf), "generate", "--template", str((TS_SDK / "buf.gen.yaml").relative_to(ROOT))],
        check=True,
        cwd=ROOT,
    )
    _npm_ci(WEB, npm)
    subprocess.run([npm, "run", "--silent", "build"], check=True, cwd=WEB, stdout=subprocess.DEVNULL)
    return True


def main() -> None:
    vendor_googleapis()
    generate_python()
    build_descriptor_set()
    typescript = generate_typescript()
    done = [f"{GEN.relative_to(ROOT)}/", str(DESCRIPTOR.relative_to(ROOT))]
    if typescript:
        done += ["sdk/typescript/src/gen/", "web/dist/"]
    print("generated " + ", ".join(done))


if __name__ == "__main__":
    main()
