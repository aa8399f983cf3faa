"""The install and CI promises: README commands, .ci/run, environment.yml vs pyproject."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert block, "README.md has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_first_block_has_the_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "passion_kit" in main_job and "pytest" in tests
    for command in commands:  # each sets itself up on a fresh machine
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def _requirement(spec: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", spec)
    assert match, spec
    return match.group(1).lower().replace("_", "-"), match.group(3).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(s) for s in project["dependencies"])
    wanted.update(_requirement(s) for s in project["optional-dependencies"]["notebooks"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for entry in env["dependencies"]:
        entries = entry["pip"] if isinstance(entry, dict) else [entry]
        for spec in entries:
            if spec.startswith("-e") or spec in ("pip",) or spec.startswith("python"):
                continue
            name, version = _requirement(spec)
            found[name] = version
    assert found == wanted
    assert wanted["torch"] == "==2.13.0"


def test_nothing_reads_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = "../" + "shared"
    offenders = [
        path
        for path in tracked
        if (ROOT / path).is_file()
        and path.endswith((".py", ".ipynb", ".toml", ".yml", ".cfg", ".sh", "run"))
        and pattern in (ROOT / path).read_text(errors="ignore")
    ]
    assert offenders == []
