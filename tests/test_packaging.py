"""The package as users get it.

The wheel tests (``e2e``) build the wheel, install it into a fresh virtualenv and run ``target-loops-demo`` from it.
Nothing there uses the checkout once the wheel is built: the demo runs in a temporary folder and must find the sample
streams inside the installed package, and the dependencies come from the package index, as for a user. About half a
minute, most of it ``pip install``.

The import test (fast layer) checks that every third-party module the packages import is a declared dependency.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SAMPLE_FILES = sorted(p.name for p in (REPO / "sample_streams").iterdir() if p.is_file())


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    def bin(self, name: str) -> Path:
        return self.venv / ("Scripts" if os.name == "nt" else "bin") / name

    def run(self, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # No PYTHONPATH, no TARGET_LOOPS_* settings: only what the wheel installed.
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
        return subprocess.run(
            list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )


def _check(run: subprocess.CompletedProcess[str], what: str) -> None:
    assert run.returncode == 0, f"{what} failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"


def pyproject_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "no version in pyproject.toml"
    return match.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(REPO), "-w", str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    _check(build, "pip wheel")
    (wheel,) = dist.glob("target_loops-*.whl")
    venv = root / "venv"
    _check(
        subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False), "venv"
    )
    result = Installed(wheel, venv)
    _check(
        # --no-compile: bytecode for what a test imports is written when imported, not for every module installed.
        result.run(str(result.bin("pip")), "install", "--quiet", "--no-compile", str(wheel), cwd=root, timeout=600),
        "pip install <wheel>",
    )
    yield result


@pytest.mark.e2e
def test_wheel_carries_the_sample_streams_and_the_typed_marker(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in SAMPLE_FILES:
        assert f"target_loops/sample_streams/{name}" in names
    assert "target_loops/py.typed" in names
    for template in ("run_report.html", "sandbox_page.html", "_chart.html", "_table.html", "_style.css"):
        assert f"target_loops/templates/{template}" in names, template


@pytest.mark.e2e
def test_pages_render_from_the_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    """The Jinja2 templates are found in the installed package (not the repository's folder)."""
    code = (
        "from target_loops.sandbox.page import PageOptions, TeamInfo, render_page; "
        "print(render_page({}, TeamInfo('Acme', 10, False, 'http://127.0.0.1:1/api'), PageOptions(), "
        "'2025-01-01T00:00:00Z'))"
    )
    shown = installed.run(str(installed.bin("python")), "-c", code, cwd=tmp_path)
    _check(shown, "rendering the sandbox page")
    assert '<span class="team" id="team-name">Acme</span>' in shown.stdout and "</html>" in shown.stdout


@pytest.mark.e2e
def test_demo_runs_from_the_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    where = installed.run(
        str(installed.bin("python")), "-c", "import target_loops.demo as d; print(d.SAMPLES)", cwd=tmp_path
    )
    _check(where, "locating the samples")
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout  # the package's copy, not the repo's

    run = installed.run(str(installed.bin("target-loops-demo")), cwd=tmp_path)
    _check(run, "target-loops-demo")
    out = run.stdout
    # Every sample file synced without an error (the same figures the README states for the demo).
    assert out.count("exit status 0;") == 3, out
    assert "exit status 0 (tap), 0 (target);" in out, out  # the sample Segment archive, through the bundled tap
    assert "--- 13 contacts in the sandbox" in out, out
    assert "--- 13 events in the sandbox" in out, out
    assert ": 6 rejected records, 2 sent without one value" in out, out
    rejects = (tmp_path / "demo-output" / "loops_rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 8 and all(json.loads(line)["reason"] for line in rejects)


@pytest.mark.e2e
def test_installed_version_is_pyproject_version(installed: Installed, tmp_path: Path) -> None:
    version = pyproject_version()
    shown = installed.run(str(installed.bin("target-loops")), "--version", cwd=tmp_path)
    _check(shown, "target-loops --version")
    assert shown.stdout.startswith(f"target-loops v{version},"), shown.stdout
    about = installed.run(str(installed.bin("target-loops")), "--about", "--format", "json", cwd=tmp_path)
    _check(about, "target-loops --about")
    assert json.loads(about.stdout)["version"] == version
    dunder = installed.run(
        str(installed.bin("python")), "-c", "import target_loops; print(target_loops.__version__)", cwd=tmp_path
    )
    _check(dunder, "target_loops.__version__")
    assert dunder.stdout.strip() == version


# ----- declared dependencies (fast) ------------------------------------------------------------------------------


def _pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _provided(requirements: list[str]) -> set[str]:
    """Distributions a list of requirements brings in directly, including the extras it asks for
    (``singer-sdk[msgspec]`` provides ``msgspec``)."""
    names: set[str] = set()
    for requirement in map(Requirement, requirements):
        names.add(canonicalize_name(requirement.name))
        try:
            declared = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:  # not installed here: only its own name counts
            declared = []
        for extra in requirement.extras:
            for line in declared:
                sub = Requirement(line)
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    names.add(canonicalize_name(sub.name))
    return names


def _imported_modules(package: Path) -> dict[str, str]:
    """Top-level module → the first ``file:line`` importing it, for every absolute import in the package."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.partition(".")[0], f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_imported_distribution_is_declared() -> None:
    """Item: declare what is imported (``sqlalchemy`` used to arrive only through singer-sdk).

    ``target_loops`` may import only its own modules, the standard library and ``[project] dependencies``; a package
    that ships with optional extras (``tap_segment_archive``) may also import what its extras declare.
    """
    project = _pyproject()["project"]
    core = _provided(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    with_extras = core.union(*(_provided(reqs) for name, reqs in optional.items() if name != "test"))
    distributions = metadata.packages_distributions()
    own = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    problems = []
    for package, allowed in (("target_loops", core), ("tap_segment_archive", with_extras)):
        if not (REPO / package).is_dir():
            continue
        for module, where in sorted(_imported_modules(REPO / package).items()):
            if module in sys.stdlib_module_names or module in own or module == "__future__":
                continue
            dists = {canonicalize_name(d) for d in distributions.get(module, [])}
            if not dists:
                problems.append(f"{where}: imports {module!r}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(f"{where}: imports {module!r} from {sorted(dists)}, not declared in pyproject.toml")
    assert not problems, "\n".join(problems)
