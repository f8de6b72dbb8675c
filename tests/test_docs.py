"""Every command shown in the README, docs/ and configs/slurm parses with the real parsers.

`phdl fit|predict|...` lines go through LightningCLI with `--print_config` (configs resolved,
every option and class path checked, nothing run); `phdl synth|report|demo` and
`python -m phdl.data.files` lines through their argparse parsers. What the commands do is
tested elsewhere (test_fit_cli, test_predict_cli, test_demo, test_synth_run, ...); the Python
blocks of docs/guide.md run in tests/test_guide.py.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPOSITORY

DOCUMENTS = sorted(
    [
        REPOSITORY / "README.md",
        REPOSITORY / "checkpoints" / "README.md",
        *(REPOSITORY / "docs").glob("*.md"),
    ]
    + list((REPOSITORY / "configs" / "slurm").glob("*.sbatch"))
)


def shell_lines(path: Path) -> list[str]:
    """Command lines of ```bash blocks (or a whole sbatch script), continuation lines joined."""
    text = path.read_text()
    if path.suffix == ".sbatch":
        blocks = [text]
    else:
        blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def phdl_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `phdl`) for every phdl invocation in the documents."""
    found = []
    for path in DOCUMENTS:
        for line in shell_lines(path):
            lexer = shlex.shlex(line.split("  #")[0], posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            tokens, parts = list(lexer), [[]]
            for token in tokens:  # split at && and ; outside quotes
                if token in ("&&", ";"):
                    parts.append([])
                else:
                    parts[-1].append(token)
            for words in parts:
                part = " ".join(words)
                if words[:1] == ["srun"]:
                    words = words[1:]
                if words[:1] == ["torchrun"]:
                    words = words[words.index("-m") + 1 :]
                if words[:1] == ["phdl"]:
                    found.append((f"{path.name}: {part.strip()}", words[1:]))
                elif words[:3] == ["python", "-m", "phdl.data.files"]:
                    found.append((f"{path.name}: {part.strip()}", ["data.files", *words[3:]]))
    return found


COMMANDS = phdl_commands()


def test_the_documents_show_commands():
    names = {argv[0] for _, argv in COMMANDS}
    assert {"demo", "fit", "predict", "report", "synth", "data.files"} <= names


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w[:90] for w, _ in COMMANDS])
def test_documented_command_parses(where, argv, monkeypatch):
    monkeypatch.chdir(REPOSITORY)  # documented paths are relative to the repository root
    command, arguments = argv[0], argv[1:]
    for i, word in enumerate(arguments):  # every config file named must exist
        if arguments[i - 1] in ("--config", "--trainer.logger") and word.endswith(".yaml"):
            assert (REPOSITORY / word).exists(), f"{where}: {word} does not exist"
    if command in ("fit", "validate", "test", "predict"):
        from phdl.cli import lightning_cli

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as stop:
            lightning_cli([command, *arguments, "--print_config"])
        assert stop.value.code in (0, None), f"{where}: exit {stop.value.code}"
        assert "class_path" in printed.getvalue()
        return
    parsers = {
        "synth": "phdl.synth.run",
        "report": "phdl.report",
        "demo": "phdl.demo",
        "data.files": "phdl.data.files",
    }
    assert command in parsers, f"{where}: unknown phdl command '{command}'"
    import importlib

    importlib.import_module(parsers[command]).build_parser().parse_args(arguments)


def test_ci_runs_the_readme_test_command():
    readme = shell_lines(REPOSITORY / "README.md")
    ci = [line for line in (REPOSITORY / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]  # fmt: skip
    assert ci[-1].strip() == readme[1], "the README's second command must be what .ci/run runs"
    assert "phdl demo" in readme[0], "the README's first command runs the demo"


def test_wandb_sync_is_available():
    """The docs tell users to `wandb sync` their offline runs: the wandb command is installed."""
    assert shutil.which("wandb") is not None
