"""The one entry point: `phdl fit|validate|test|predict` (LightningCLI) and the extra subcommands.

`fit`, `validate`, `test` and `predict` are Lightning's own, driven by YAML configs in `configs/`
with any LightningModule / LightningDataModule selectable by `class_path`. Commands that do not
run a Trainer loop (`synth`, `report`, `demo`, ...) are plain argparse programs registered in
`EXTRA_COMMANDS`; each takes an argument list so tests can call them in-process.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

#: name -> "module:function" taking an argument list; imported only when used (fast start-up).
EXTRA_COMMANDS: dict[str, str] = {
    "report": "phdl.report:main",
    "demo": "phdl.demo:main",
    "synth": "phdl.synth.run:main",
}

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _configure_environment() -> None:
    # wandb must never prompt or reach the network unless the user asked for it explicitly.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


def lightning_cli(args: Sequence[str] | None = None, run: bool = True):
    """Build phdl's LightningCLI (any LightningModule/DataModule selectable from YAML)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    class PhdlCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # The emulator learns its grid description (label scaling fitted on the training
            # split, wavelengths, ...) from the datamodule, so it lands in the checkpoint's
            # hyper-parameters. A model or datamodule without these names is left untouched.
            from phdl.emulator import _scaling_to_dict, _to_float_list

            links = {
                "label_scaling": _scaling_to_dict,
                "wavelength": _to_float_list,
                "medium": None,
                "resolution": None,
                "gradient_names": list,
                "gradient_scale": _to_float_list,
            }
            for name, compute in links.items():
                parser.link_arguments(
                    f"data.{name}", f"model.init_args.{name}", compute, apply_on="instantiate"
                )

        def before_instantiate_classes(self) -> None:
            # Logger folders are fixed when the run starts: wandb's service process (which may
            # have been started from another directory) otherwise resolves a relative save_dir
            # against its own working directory when it writes the run's files.
            config = self.config[self.subcommand] if self.subcommand else self.config
            loggers = config.get("trainer.logger")
            for logger in loggers if isinstance(loggers, list) else [loggers]:
                init_args = getattr(logger, "init_args", None)
                if init_args is not None and isinstance(init_args.get("save_dir"), str):
                    init_args.save_dir = os.path.abspath(init_args.save_dir)

    argv = list(sys.argv[1:] if args is None else args)
    # Training runs keep their resolved config in the run folder. validate/test/predict have no
    # run folder of their own (with no logger Lightning would drop config.yaml into the current
    # directory); the catalogue writer records the fit settings in the catalogue header.
    save_config = SaveConfigCallback if argv[:1] == ["fit"] else None
    return PhdlCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # the process's own arguments go in as None (Lightning warns when given both)
        args=None if args is None or list(args) == sys.argv[1:] else list(args),
        run=run,
        save_config_callback=save_config,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def _usage() -> str:
    extra = ", ".join(sorted(EXTRA_COMMANDS)) or "none"
    return (
        "usage: phdl {fit,validate,test,predict} --config CONFIG.yaml [options]\n"
        f"       phdl {{{extra}}} [options]   (see phdl COMMAND --help)\n"
    )


def main(args: Sequence[str] | None = None) -> object:
    """Run one phdl command; `args` defaults to the process arguments."""
    _configure_environment()
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return None
    command = argv[0]
    if command in EXTRA_COMMANDS:
        module_name, function_name = EXTRA_COMMANDS[command].split(":")
        function: Callable = getattr(importlib.import_module(module_name), function_name)
        return function(argv[1:])
    if command in LIGHTNING_COMMANDS:
        return lightning_cli(argv)
    sys.stderr.write(f"phdl: unknown command '{command}'\n" + _usage())
    raise SystemExit(2)


def console() -> None:
    """The `phdl` console script: like `main`, but returns nothing (exit status 0 on success).

    Console scripts pass the return value to `sys.exit`, which would print a returned object
    (e.g. a report summary) and exit with status 1. Ctrl-C ends with one line instead of a
    traceback (status 130, as a shell reports SIGINT); what was written stays (`phdl synth` and
    `phdl predict` resume from it).
    """
    try:
        main()
    except KeyboardInterrupt:
        sys.stderr.write("\nphdl: interrupted; what was written is kept (rerun to resume)\n")
        raise SystemExit(130) from None
