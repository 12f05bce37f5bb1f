"""The house plan of docs/architecture.md, checked: layers that import one way, no import cycles
(imports inside functions and under TYPE_CHECKING count), every package placed in a layer, and
fleet data read only through the zone gate."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fsdtrain"


def _layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_layer_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    exe = str(lint) if lint.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter) is not installed: pip install -e '.[dev]'"
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and "1 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_every_top_level_module_is_in_a_layer():
    listed = set(_layers())
    found = {f"fsdtrain.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    found |= {f"fsdtrain.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert found - listed == set(), f"add these to the layers in pyproject.toml and docs/architecture.md: {sorted(found - listed)}"
    assert listed - found == set(), f"layers name modules that do not exist: {sorted(listed - found)}"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("fsdtrain", cache_dir=None)
    # a package's __init__ is a module too: `fsdtrain.data` importing `fsdtrain.data.stream` and back would be a cycle
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


# Reading fleet data (listings, manifests, indexes, shards) outside the store layer goes through
# fsdtrain.store.gate.ZoneGate, which checks the zone before the request and writes the audit log.
_READS = {"read_bytes", "list_keys", "exists"}
_MAY_READ_DIRECTLY = {
    "fsdtrain/format/writer.py": "lists its own output directory to replace stale shards of an earlier write (a write job)",
}


def _direct_reads(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _READS and isinstance(node.value, ast.Name) and node.value.id == "objects":
            found.append(f"{path.relative_to(root)}:{node.lineno}: objects.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "fsdtrain.store.objects":
            found += [f"{path.relative_to(root)}:{node.lineno}: imports {a.name}" for a in node.names if a.name in _READS]
    return found


def test_fleet_data_is_read_only_through_the_zone_gate():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel.startswith("fsdtrain/store/") or rel in _MAY_READ_DIRECTLY:
            continue
        offenders += _direct_reads(path)
    assert offenders == [], "read through a ZoneGate (fsdtrain/store/gate.py):\n" + "\n".join(offenders)


def test_the_gate_check_finds_a_direct_read(tmp_path):
    bad = tmp_path / "fsdtrain" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from fsdtrain.store import objects\nfrom fsdtrain.store.objects import exists\nobjects.read_bytes('s3://b/k')\n")
    assert sorted(_direct_reads(bad, tmp_path)) == ["fsdtrain/bad.py:2: imports exists", "fsdtrain/bad.py:3: objects.read_bytes"]
