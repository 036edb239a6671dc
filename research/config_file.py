"""Read a YAML config file, or stop with one message that names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from research.errors import UserError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a config file holds (``model:``, ``data:``, ``trainer:`` ...).

    Raises:
        UserError: no such file, not UTF-8 text, not valid YAML (tabs included: YAML indents with
            spaces), or its top level is not a mapping (an empty file, a list, a bare string).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found{' (it is a folder)' if path.is_dir() else ''}; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 YAML") from err
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        tab = "\t" in text and mark is not None and "\t" in text.splitlines()[mark.line][: mark.column + 1]
        why = "a tab: YAML indents with spaces only" if tab else getattr(err, "problem", None) or "not valid YAML"
        raise UserError(f"config file {path} is not valid YAML{where} ({why}); fix the file") from err
    if not isinstance(content, dict):
        found = "empty" if content is None else f"a {type(content).__name__}, {str(content)[:40]!r}"
        raise UserError(
            f"config file {path} is {found}, but a config is a mapping of sections (model:, data:, trainer: ...); "
            "see configs/ for examples"
        )
    return content


def config_files(argv: list[str]) -> list[str]:
    """The files given as ``--config FILE``, ``--config=FILE`` or ``-c FILE`` in a command line.

    A config given inline (``--config '{...}'`` or YAML text with newlines) is not a file and is left out.
    """
    given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    return [value for value in given if "\n" not in value and not value.lstrip().startswith(("{", "["))]
