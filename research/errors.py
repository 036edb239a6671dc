"""A mistake a user can make ends a command with one line; anything else with its full traceback.

The convention, for every ``python -m research <command>``:

- :class:`UserError` (a ``ValueError``) says what was wrong in what the user gave (an option, a
  file, the data) and what to do. Raise it for new checks.
- A ``ValueError`` or a missing/unreadable path (``FileNotFoundError``, ``NotADirectoryError``,
  ``IsADirectoryError``, ``PermissionError``) raised by the code of this package counts the same:
  those messages were written for the user. The same types raised inside torch or another
  library do not (they usually mean a bug here, and the traceback is what is needed).
- Lightning's ``MisconfigurationException`` (its message for a misused option) and the command
  line parser's ``ArgumentError`` (an unknown option, a value of the wrong type) count too.

jsonargparse builds the task and the datamodule inside its type checks and wraps whatever their
constructors raise in "Does not validate against any of the Union subtypes ... Errors: - ...";
the message that counts is found by walking the chain of causes (:func:`user_message`).

``python -m research <command>`` (:func:`research.commands.main`) runs every command through
:func:`run_command`, so each command's ``main()`` keeps raising for tests and for Python callers.
``RESEARCH_TRACEBACK=1`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

TRACEBACK_ENV = "RESEARCH_TRACEBACK"
EXIT_USER_ERROR = 2  # as argparse exits on a usage error
_PACKAGE = Path(__file__).resolve().parent
_OURS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(ValueError):
    """A mistake in what the user gave; the message says what was wrong and what to do."""


def _raised_here(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in this package's code."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def _is_misconfiguration(err: BaseException) -> bool:
    return any(cls.__name__ == "MisconfigurationException" for cls in type(err).__mro__)


def _causes(err: BaseException) -> list[BaseException]:
    """``err``, its cause, the cause's cause, ... (the implicit context where no cause was given)."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())


# A task's optimizer arguments before they became one group (research.tasks.optim.OptimizerSettings, `optim:`),
# with their name inside it: a config written for the flat arguments gets the new spelling in its error.
_FORMER_OPTIMIZER_ARGUMENTS = {
    "optimizer": "name", "base_lr": "lr", "lr_scale": "lr", **{name: name for name in (
        "lr", "weight_decay", "momentum", "nesterov", "betas", "warmup_epochs", "warmup_steps", "min_lr_ratio",
        "schedule", "cycle_peak", "layer_decay")},
}


def _former_optimizer_hint(text: str) -> str:
    """For ``Option 'lr' is not accepted`` under the task (``model``): where that setting is now."""
    match = re.search(r"Option '(\w+)' is not accepted", text)
    if 'Parser key "model"' not in text or not match or match[1] not in _FORMER_OPTIMIZER_ARGUMENTS:
        return ""
    name = _FORMER_OPTIMIZER_ARGUMENTS[match[1]]
    return (f"; the optimizer settings are one group now: --model.init_args.optim.{name} "
            f"(in YAML, optim: {{{name}: ...}} under the model's init_args)")


def _parser_message(err: argparse.ArgumentError) -> str:
    """The parser's message without its dump of the value: the first error under ``Errors:``."""
    text = str(err)
    if "Errors:" in text:
        head = text.split("Does not validate", 1)[0].strip().rstrip(":")
        body, _, given = text.split("Errors:", 1)[1].partition("Given value type:")
        items: list[list[str]] = []
        for line in body.splitlines():
            if line.strip().startswith("- ") and (not items or len(line) - len(line.lstrip()) <= items[0][0]):
                items.append([len(line) - len(line.lstrip()), line.strip()[2:]])
            elif items and line.strip():
                items[-1].append(line.strip())
        errors = [" ".join(item[1:]) for item in items]
        first = next((e for e in errors if "NoneType" not in e), errors[0] if errors else "")
        value = given.partition("Given value:")[2].strip()
        if first.startswith("Expected a") and value and len(value) < 60:
            first += f", got {value!r}"
        text = f"{head}: {first}" if head else first
    return f"{_one_line(text)}{_former_optimizer_hint(text)} (--help lists the options)"


def _from_worker(message: str) -> str:
    """A DataLoader worker's error reads "Caught X in DataLoader worker ... Original Traceback ...": its last line."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def user_message(err: BaseException) -> str | None:
    """The one line to print for ``err`` if it is a mistake of the user's (see the module doc), else None."""
    chain = _causes(err)
    for cause in chain:
        if isinstance(cause, UserError) or _is_misconfiguration(cause):
            return _one_line(_from_worker(str(cause)))
        if isinstance(cause, _OURS) and _raised_here(cause):
            return _one_line(str(cause))
    if isinstance(err, argparse.ArgumentError):
        return _parser_message(err)
    return None


def _finish_pending_output() -> None:
    """Let what would print at exit (an open wandb run's summary) print now, before the message."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=EXIT_USER_ERROR, quiet=True)
        except Exception:  # noqa: BLE001  (the user's error is what must be printed)
            pass
    sys.stdout.flush()


def run_command(main: Callable[[], object]) -> NoReturn:
    """Run a command's ``main()`` and exit: with its int result, 0, or one line for a user's mistake.

    Anything that is not a user's mistake, and every error when ``RESEARCH_TRACEBACK=1``, is raised
    with its traceback.
    """
    try:
        result = main()
    except Exception as err:
        message = user_message(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        _finish_pending_output()
        print(f"error: {message} [{TRACEBACK_ENV}=1 shows the traceback]", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
