"""Every YAML in configs/ parses and instantiates (`run=False`), so no config users see can rot.

Configs are found by glob, so configs added later are covered without editing this file. A
Lightning config (top-level `model`/`data`/`trainer`) is checked twice: parsed with its
subcommand (`--print_config`: every key and class path valid) and instantiated with
`run=False`. A grid path that does not exist is replaced by the toy grid; a config that needs
other files which do not exist here (e.g. a trained checkpoint) is only parsed, and says so.
Logger configs (configs/logger/) are checked as `--trainer.logger` of the demo config.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from phdl.cli import LIGHTNING_COMMANDS, lightning_cli, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOGGER_CONFIGS = sorted((CONFIGS / "logger").glob("*.yaml"))
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
TOP_CONFIGS = [path for path in ALL_CONFIGS if path not in LOGGER_CONFIGS]
LIGHTNING_KEYS = {"model", "data", "trainer"}
#: keys of a `fit`/`predict`... subcommand that `run=False` parsing does not know.
SUBCOMMAND_KEYS = ("ckpt_path", "return_predictions", "verbose", "weights_only")
OUTPUT_KEYS = {"output", "dirpath", "save_dir", "default_root_dir", "log_dir"}
FILE_SUFFIXES = (".h5", ".hdf5", ".ckpt", ".pt", ".fits", ".fits.gz", ".csv", ".npz")
#: keys whose string values are input files or folders whatever their names end with.
INPUT_KEYS = {"path", "paths", "checkpoint"}


def _subcommand(path: Path) -> str:
    """fit_x.yaml -> fit, predict_y.yaml -> predict; anything else is taken as a fit config."""
    prefix = path.stem.split("_")[0]
    return prefix if prefix in LIGHTNING_COMMANDS else "fit"


def _input_files(node, found: list[str]) -> list[str]:
    """String values of a config that name input files or folders (by key or suffix; outputs by
    key excluded)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in INPUT_KEYS and isinstance(value, str):
                found.append(value)  # e.g. a LAMOST folder (../shared/... may be absent)
            elif key not in OUTPUT_KEYS:
                _input_files(value, found)
    elif isinstance(node, list):
        for value in node:
            _input_files(value, found)
    elif isinstance(node, str) and node.endswith(FILE_SUFFIXES):
        found.append(node)
    return found


def _print_config(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(args + ["--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()
    return out.getvalue()


@pytest.fixture
def repo_cwd(monkeypatch, tmp_path):
    """Relative paths in configs resolve against the repository (as `phdl` users run it)."""
    monkeypatch.chdir(CONFIGS.parent)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_configs_exist():
    assert (CONFIGS / "fit_demo.yaml") in TOP_CONFIGS
    assert {p.name for p in LOGGER_CONFIGS} >= {"wandb.yaml", "csv.yaml"}


@pytest.mark.parametrize("path", TOP_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_instantiates(path, toy_grid, repo_cwd):
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict), f"{path}: expected a mapping at the top level"
    if not LIGHTNING_KEYS & set(config):
        return  # a config of a non-Lightning command (e.g. phdl synth): loading it is the check
    _print_config([_subcommand(path), "--config", str(path)])

    data = config.get("data") or {}
    init_args = data.get("init_args") or {}
    overrides = []
    if (
        str(data.get("class_path", "")).endswith("GridDataModule")
        and not Path(init_args.get("path", "")).exists()
    ):
        overrides = ["--data.init_args.path", str(toy_grid)]
        init_args = {**init_args, "path": str(toy_grid)}
    missing = [f for f in _input_files({**config, "data": {**data, "init_args": init_args}}, [])
               if not Path(f).exists()]  # fmt: skip
    if missing:
        pytest.skip(f"{path.name} parsed; not instantiated: needs {missing}, absent here")
    stripped = {key: value for key, value in config.items() if key not in SUBCOMMAND_KEYS}
    runnable = repo_cwd / path.name
    runnable.write_text(yaml.safe_dump(stripped))
    cli = lightning_cli(["--config", str(runnable), *overrides], run=False)
    assert cli.model is not None and cli.trainer is not None


@pytest.mark.parametrize("path", LOGGER_CONFIGS, ids=lambda p: p.name)
def test_logger_config_is_one_line_away(path, toy_grid, repo_cwd):
    args = ["--config", str(CONFIGS / "fit_demo.yaml"), "--trainer.logger", str(path)]
    args += ["--data.init_args.path", str(toy_grid)]
    printed = yaml.safe_load(_print_config(["fit", *args]))
    expected = yaml.safe_load(path.read_text())["class_path"]
    assert printed["trainer"]["logger"]["class_path"] == expected
    cli = lightning_cli(args, run=False)
    assert type(cli.trainer.logger).__name__ == expected.rsplit(".", 1)[1]


def test_wandb_logger_config_never_goes_online():
    logger = yaml.safe_load((CONFIGS / "logger/wandb.yaml").read_text())["init_args"]
    assert logger["offline"] is True and logger["log_model"] is False  # DESIGN section 7
    demo = yaml.safe_load((CONFIGS / "fit_demo.yaml").read_text())["trainer"]["logger"]
    assert demo["class_path"].endswith("WandbLogger") and demo["init_args"]["offline"] is True
