"""The README and docs/ keep up with the code: every command has help and an example, every
task and mode is documented, every command shown runs, and the set-up commands stand at the
top of a README short enough to be a front door."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bptt_cli.cli import app
from bptt_cli.tasks import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_readme_opens_with_the_two_setup_commands():
    top = "\n".join(README.splitlines()[:12])
    assert 'python -m pip install -e ".[dev]" && bptt train configs/quickstart.yaml' in top
    assert "python -m pytest" in top


def test_readme_has_no_unfilled_placeholder():
    assert "PLACEHOLDER" not in README


def test_readme_is_a_front_door_that_links_every_docs_page():
    assert len(README.encode()) < 12_000, "move long sections to docs/"
    for name in DOCS:
        assert f"](docs/{name})" in README, f"README does not link docs/{name}"


@pytest.mark.parametrize("name", list(DOCS))
def test_docs_links_point_at_files_that_exist(name):
    import re

    for target in re.findall(r"\]\(([^)#]+)\)", DOCS[name]):
        if "://" not in target:
            assert (ROOT / "docs" / target).exists(), f"docs/{name} links to missing {target}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_a_readme_example(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"bptt {command}" in README, f"README has no example of `bptt {command}`"


@pytest.mark.parametrize("task", list(REGISTRY))
def test_every_task_is_in_the_tasks_page(task):
    assert f"| `{task}` |" in DOCS["tasks.md"]


def test_every_truncation_mode_is_in_the_readme_table():
    section = README.split("## Truncation modes", 1)[1].split("\n## ", 1)[0]
    for spec in ("`full`", "`k_truncated:K`", "`subsequence:K`", "`tbptt:K1:K2`",
                 "`adaptive:DELTA[:KMIN:KMAX]`", "`random_k:MEAN`", "`artbp:MEAN`"):
        assert spec in section


def _readme_examples() -> list[str]:
    """Every `bptt ...` line of the bash blocks of the README and docs/ that runs as written
    (no placeholders), once each."""
    lines = []
    for block in "".join([README, *DOCS.values()]).split("```bash\n")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            cmd = line.split("  #", 1)[0].strip()
            if cmd.startswith("bptt ") and "<" not in cmd and "--resume" not in cmd:
                lines.append(cmd)
    return list(dict.fromkeys(lines))


@pytest.mark.parametrize("example", _readme_examples())
def test_readme_examples_run(example, tmp_path, monkeypatch):
    """The commands of the README and docs work as written; train and compare shrunk with --smoke."""
    import shlex

    args = shlex.split(example)[1:]
    if args[0] in ("train", "compare"):
        args += ["--smoke", "--runs-root", str(tmp_path), "-q"]
        if args[0] == "compare":
            args += ["--workers", "1"]
    monkeypatch.chdir(ROOT)  # the examples name configs/... relative to the checkout
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{example}\n{result.output}"
