"""What ships: the Docker image and the wheel hold every package the console script can import
(the image once had no `web/`, so `rstar ui` could not start there, and no demo problems), and the
compose file starts nothing before what it needs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def packages() -> list[str]:
    """The top-level packages pyproject.toml ships ("rstar*" -> "rstar")."""
    return [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]


def console_script_imports() -> set[str]:
    """The top-level packages of this repository the console script can reach: those `cli` imports,
    those they import, and so on (imports inside functions included: they run too)."""
    local = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    [target] = PYPROJECT["project"]["scripts"].values()
    todo, seen = [target.split(".")[0]], set()
    while todo:
        package = todo.pop()
        seen.add(package)
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                todo += [n.split(".")[0] for n in names if n.split(".")[0] in local - seen]
    return seen


def test_the_console_script_imports_only_shipped_packages() -> None:
    # `tests` is not shipped: a command that imports it breaks in the image and the wheel.
    reached = console_script_imports()
    assert {"cli", "web", "db", "workers", "tasks", "rstar", "localmodels"} <= reached  # migrations: a path
    assert reached <= set(packages()), reached - set(packages())


def test_the_image_copies_every_shipped_package() -> None:
    copied = set(re.findall(r"^COPY (\S+) \1$", (REPO / "Dockerfile").read_text(), re.M))
    assert console_script_imports() | set(packages()) <= copied, set(packages()) - copied


def test_compose_workers_and_flower_wait_for_redis_and_the_readme_submits_a_file_that_exists() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    anchor = compose.split("\nservices:")[0]  # x-rstar: what every rstar service inherits
    assert re.search(r"depends_on:.*\n\s+redis:\n\s+condition: service_healthy", anchor, re.S)
    assert "./data:/data" in anchor
    readme = (REPO / "README.md").read_text()
    [submitted] = re.findall(r"docker compose run --rm cli submit /data/(\S+)", readme)
    assert re.search(rf"cp \S+/{re.escape(submitted)} data/", readme)  # copied into ./data first
    assert (REPO / "cli" / "data" / submitted).exists()


@pytest.mark.timeout(600)
def test_the_wheel_holds_every_package_its_templates_and_the_demo_problems(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    [wheel] = tmp_path.glob("rstar_batch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in packages():
        assert f"{package}/__init__.py" in names, package
    must = [
        "cli/data/gsm8k_sample.jsonl",  # rstar demo's problems
        "migrations/script.py.mako",
        "migrations/versions/0005_sampled_sequences.py",
        "web/templates/job.html",
        "web/static/htmx.min.js",
    ]
    assert not [m for m in must if m not in names], [m for m in must if m not in names]
    # Every file the source tree has under web/ and migrations/ is in the wheel.
    for folder in ("web", "migrations"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert path.relative_to(REPO).as_posix() in names, path
