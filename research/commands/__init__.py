"""The commands, apart from the library they use: ``python -m research <command> ...`` or ``research <command> ...``.

    python -m research fit --config configs/cnn/mnist_five_layer_cnn.yaml
    python -m research attack --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt --eps 0.1 0.3
    python -m research reproduce list

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (:mod:`research.commands.fit`);
``attack`` (:mod:`research.commands.attack`) and ``quantize`` (:mod:`research.commands.quantize`)
read a trained run through :func:`research.commands.load.load_run`; ``reproduce``
(:mod:`research.commands.reproduce`) prints the paper tables. The commands over a trained run share
their flags: ``--config``, ``--ckpt_path``, ``--seed``, and fit's overrides (``--data.init_args.NAME
VALUE``, ``--model.init_args.NAME VALUE``) for whatever they do not know themselves.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from research.errors import UserError, run_command

#: Command name -> (its module, one line on what it does). Each module has ``main(argv)``.
COMMANDS = {
    "fit": ("research.commands.fit", "train (LightningCLI; then tests the best checkpoint)"),
    "validate": ("research.commands.fit", "evaluate a checkpoint on the validation split (LightningCLI)"),
    "test": ("research.commands.fit", "evaluate a checkpoint on the test split (LightningCLI)"),
    "predict": ("research.commands.fit", "write a checkpoint's predictions (LightningCLI)"),
    "attack": ("research.commands.attack", "clean and robust accuracy of a checkpoint per attack and eps"),
    "quantize": ("research.commands.quantize", "int8 post-training quantization: size, latency, accuracy"),
    "reproduce": ("research.commands.reproduce", "the paper tables beside our numbers"),
}
_LIGHTNING = ("fit", "validate", "test", "predict")


def usage() -> str:
    """What ``python -m research --help`` prints: the commands, one line each."""
    lines = ["usage: python -m research <command> [arguments]  (or: research <command> ...)", "", "commands:"]
    lines += [f"  {name:10s} {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "python -m research <command> --help lists a command's arguments."]
    return "\n".join(lines)


def dispatch(argv: Sequence[str] | None = None) -> object:
    """Run the command named first in ``argv`` (default: the command line) and return what it returns.

    Raises:
        UserError: no command, or an unknown one.

    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1) if argv else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"{given}; {hint}choose one of {', '.join(COMMANDS)} (python -m research --help)")
    command = importlib.import_module(COMMANDS[argv[0]][0])
    if argv[0] in _LIGHTNING:
        # LightningCLI reads its subcommand itself, from the command line when run from one (as it warns
        # when given both arguments and a command line).
        return command.main(None if from_command_line else argv)
    return command.main(argv[1:])


def main() -> NoReturn:
    """The console script ``research`` and ``python -m research``: run the command, exit with its status."""
    if sys.argv[0].endswith("__main__.py"):
        sys.argv[0] = "python -m research"  # LightningCLI's usage line names the program by sys.argv[0]
    run_command(dispatch)
