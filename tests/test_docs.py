"""The README's commands and the CI script stay in step."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    return [line.strip() for line in lines[:20] if line.startswith("python3.11 -m venv")]


def test_readme_starts_with_run_and_test_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].split("&&")[-1].strip().startswith("emcopilot ")
    assert "pytest" in commands[1].split("&&")[-1]


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_recipe_examples_validate(tmp_path):
    import re

    from emcopilot.core.recipe import load_recipe

    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks
    for index, block in enumerate(blocks):
        path = tmp_path / f"example{index}.yaml"
        path.write_text(block)
        load_recipe(str(path))  # raises with file:line: key on any mistake


def test_the_python_api_page_runs(tmp_path, monkeypatch):
    """Every ```python block of docs/python-api.md, in order, in one namespace (as a notebook would)."""
    import re

    import matplotlib
    import pytest
    pytest.importorskip("torch")
    pytest.importorskip("hyperspy")
    matplotlib.use("Agg")
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/python-api.md block {index + 1}", "exec"), namespace)
    assert namespace["later"].table.equals(namespace["result"].table)
