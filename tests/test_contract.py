"""The protobuf contract in protos/: buf lint, buf breaking, and a comment on every element."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
BUF = ROOT / "node_modules" / ".bin" / "buf"

# Descriptor field numbers that make up a SourceCodeInfo.Location path.
_FILE_MESSAGE = descriptor_pb2.FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER
_FILE_ENUM = descriptor_pb2.FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER
_FILE_SERVICE = descriptor_pb2.FileDescriptorProto.SERVICE_FIELD_NUMBER
_MESSAGE_FIELD = descriptor_pb2.DescriptorProto.FIELD_FIELD_NUMBER
_MESSAGE_NESTED = descriptor_pb2.DescriptorProto.NESTED_TYPE_FIELD_NUMBER
_MESSAGE_ENUM = descriptor_pb2.DescriptorProto.ENUM_TYPE_FIELD_NUMBER
_MESSAGE_ONEOF = descriptor_pb2.DescriptorProto.ONEOF_DECL_FIELD_NUMBER
_ENUM_VALUE = descriptor_pb2.EnumDescriptorProto.VALUE_FIELD_NUMBER
_SERVICE_METHOD = descriptor_pb2.ServiceDescriptorProto.METHOD_FIELD_NUMBER

Path_ = tuple[int, ...]
Element = tuple[str, str, Path_]  # (kind, full name, location path)


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if shutil.which("npx") is None:
        pytest.fail("npx is not on PATH: install Node.js and npm, then run `make node-deps`")
    if not BUF.exists():
        pytest.fail("buf is not installed in node_modules: run `make node-deps`")
    return subprocess.run(
        ["npx", "--no-install", "buf", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.slow
def test_buf_lint() -> None:
    proc = _buf("lint")
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow
def test_buf_lint_reports_violations(tmp_path: Path) -> None:
    """The lint run above would notice a bad contract: buf really lints."""
    (tmp_path / "buf.yaml").write_text(
        "version: v2\nmodules:\n  - path: p\nlint:\n  use:\n    - STANDARD\n", encoding="utf-8"
    )
    bad = tmp_path / "p" / "bad" / "v1" / "bad.proto"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        'syntax = "proto3";\npackage bad.v1;\nmessage foo_bar { string X = 1; }\n', encoding="utf-8"
    )
    proc = _buf("lint", str(tmp_path))
    assert proc.returncode != 0
    assert "foo_bar" in proc.stdout + proc.stderr


def _main_branch_exists() -> bool:
    if shutil.which("git") is None:
        return False
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "main"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


@pytest.mark.slow
def test_buf_breaking_against_main() -> None:
    if not _main_branch_exists():
        pytest.skip("no main branch with commits yet: nothing to compare the contract against")
    proc = _buf("breaking", "--against", ".git#branch=main")
    assert proc.returncode == 0, f"buf breaking failed:\n{proc.stdout}{proc.stderr}"


def _descriptor_set(
    proto_root: Path, files: Sequence[str], out: Path
) -> descriptor_pb2.FileDescriptorSet:
    """Compiles files (relative to proto_root) into a FileDescriptorSet with source info."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{WELL_KNOWN}",
            f"--descriptor_set_out={out}",
            "--include_source_info",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"protoc failed:\n{proc.stdout}{proc.stderr}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _message_elements(
    message: descriptor_pb2.DescriptorProto, scope: str, path: Path_
) -> Iterator[Element]:
    name = f"{scope}.{message.name}"
    yield "message", name, path
    for i, field in enumerate(message.field):
        yield "field", f"{name}.{field.name}", (*path, _MESSAGE_FIELD, i)
    for i, oneof in enumerate(message.oneof_decl):
        members = [f for f in message.field if f.HasField("oneof_index") and f.oneof_index == i]
        if members and all(f.proto3_optional for f in members):
            continue  # synthetic oneof of a proto3 `optional` field: not in the source
        yield "oneof", f"{name}.{oneof.name}", (*path, _MESSAGE_ONEOF, i)
    for i, nested in enumerate(message.nested_type):
        if nested.options.map_entry:
            continue  # synthesized for a map field, which carries the comment
        yield from _message_elements(nested, name, (*path, _MESSAGE_NESTED, i))
    for i, enum in enumerate(message.enum_type):
        yield from _enum_elements(enum, name, (*path, _MESSAGE_ENUM, i))


def _enum_elements(
    enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: Path_
) -> Iterator[Element]:
    name = f"{scope}.{enum.name}"
    yield "enum", name, path
    for i, value in enumerate(enum.value):
        yield "enum value", f"{name}.{value.name}", (*path, _ENUM_VALUE, i)


def _file_elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    for i, message in enumerate(file.message_type):
        yield from _message_elements(message, file.package, (_FILE_MESSAGE, i))
    for i, enum in enumerate(file.enum_type):
        yield from _enum_elements(enum, file.package, (_FILE_ENUM, i))
    for i, service in enumerate(file.service):
        name = f"{file.package}.{service.name}"
        yield "service", name, (_FILE_SERVICE, i)
        for j, method in enumerate(service.method):
            yield "rpc", f"{name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)


def _uncommented(proto_root: Path, out: Path) -> tuple[int, list[str]]:
    """Counts the elements of every .proto under proto_root and lists those without a comment."""
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    assert files, f"no .proto files under {proto_root}"
    checked = 0
    missing: list[str] = []
    for file in _descriptor_set(proto_root, files, out).file:
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for kind, name, path in _file_elements(file):
            checked += 1
            if not comments.get(path, "").strip():
                missing.append(f"{file.name}: {kind} {name}")
    return checked, missing


def test_every_contract_element_has_a_leading_comment(tmp_path: Path) -> None:
    checked, missing = _uncommented(PROTOS, tmp_path / "contract.binpb")
    assert checked > 50, f"only {checked} elements found in protos/: is the walk broken?"
    listing = "\n  ".join(missing)
    assert not missing, f"every contract element needs a leading comment; missing on:\n  {listing}"


def test_comment_check_finds_uncommented_elements(tmp_path: Path) -> None:
    root = tmp_path / "protos"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "demo.proto").write_text(
        """syntax = "proto3";
package demo;

// Commented.
message Good {
  // Commented.
  string a = 1;
  string b = 2;  // trailing only: does not count
  map<string, string> labels = 3;
}

message Bad {
  // Commented.
  oneof kind {
    string c = 1;
  }
}

// Commented.
enum Color {
  // Commented.
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
}

// Commented.
service Demo {
  rpc Call(Good) returns (Bad);
}
""",
        encoding="utf-8",
    )
    checked, missing = _uncommented(root, tmp_path / "demo.binpb")
    assert checked == 12
    assert missing == [
        "demo/demo.proto: field demo.Good.b",
        "demo/demo.proto: field demo.Good.labels",
        "demo/demo.proto: message demo.Bad",
        "demo/demo.proto: field demo.Bad.c",
        "demo/demo.proto: enum value demo.Color.COLOR_RED",
        "demo/demo.proto: rpc demo.Demo.Call",
    ]
