"""Regenerate the Python code for ``privtrain/v1/*.proto``.

Run ``python -m privtrain.proto.generate`` (or ``make proto``). The output is
committed; ``tests/proto/test_generated_code.py`` regenerates into a temporary
folder and fails on any difference.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_PACKAGE = "privtrain/proto/privtrain/v1"


def source_root() -> Path:
    """Folder that ``privtrain`` sits in (``src/``): the protoc include root."""
    return Path(str(resources.files("privtrain"))).parent


def proto_files(root: Path) -> list[Path]:
    """The ``.proto`` sources, relative to ``root``, sorted."""
    return sorted(p.relative_to(root) for p in (root / PROTO_PACKAGE).glob("*.proto"))


def generate(out_dir: Path, root: Path | None = None) -> list[Path]:
    """Run protoc (grpcio-tools) over every source into ``out_dir``.

    Returns the generated files, relative to ``out_dir``.

    Raises
    ------
    RuntimeError
        If protoc reports an error.
    """
    from grpc_tools import protoc

    root = root or source_root()
    include = str(resources.files("grpc_tools") / "_proto")
    files = [str(p) for p in proto_files(root)]
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {files}")
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*_pb2*.py*"))


def main() -> int:
    """Regenerate in place."""
    root = source_root()
    for path in generate(root, root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
