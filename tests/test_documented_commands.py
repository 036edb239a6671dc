"""Every command the documentation shows runs (issue 13, item 4).

The commands are read from the docs themselves, so one added later is run without a change here:

* README.md: every line of its ```bash blocks (backslash continuations joined, ``# comments``
  dropped, ``a && b`` split), every inline code span ``python -m research COMMAND ARGS`` (a bare
  command name is no command line), and each ```python block, run as a whole;
* every docstring (module, class, function) under research/: lines starting with
  ``python -m research``, joined over backslash continuations; usage brackets are expanded
  (``[--quick]`` -> ``--quick``, ``[--mode auto|dynamic|static]`` -> ``--mode auto``).

Each command runs in-process (through ``research.commands.dispatch``, as ``python -m research`` runs it) at tiny
settings appended to its own arguments (one epoch of two batches, two PGD steps, ``--quick``),
in a working folder per source with ``configs/`` linked in, in the documented order: a command
that reads a checkpoint finds what the commands above it wrote, as a reader following the text
would. A checkpoint that the docs read but never show being trained is listed in ``PREREQUISITES``
(a test checks that every other one is written by an earlier command of the same source) and is
made by a tiny fit of its config. Placeholders (DIR, CKPT) become real tiny paths; downloads become
the offline stand-in data of ``fake_torchvision_root``. What is not run is in ``EXCEPTIONS`` with
the reason, and a test checks that nothing else is skipped. Whole file: about 1 min of CPU.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "research"

# Commands that are shown but not run here, matched on the start of the command, with the reason.
EXCEPTIONS = {
    "pip install": "installs the package; the environment running this test already has it",
    "pytest": "runs the whole test suite, this file included; CI runs it as its own step",
}

# Appended to each command (argparse and jsonargparse keep the last value given), so the
# documented arguments are all parsed and used but the work is a few batches.
TINY_TRAINER = [
    "--trainer.max_epochs", "1",
    "--trainer.max_steps", "2",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip
TINY_BATCH = ["--data.init_args.batch_size", "4"]  # for every config whose data has a batch_size
TINY_DATA = {
    # an untrained decoder never says EOS and runs every sentence to its length limit: decode 4, all of them
    "TranslationDataModule": [
        "--data.init_args.eval_batch_size", "4",
        "--model.init_args.val_bleu_samples", "null",
        "--model.init_args.test_bleu_samples", "null",
    ],
}  # fmt: skip
# Checkpoints the docs read without showing the fit that writes them, with where they are read.
PREREQUISITES = {
    "cnn/mnist_five_layer_cnn": "the attack and quantize examples (README, research/commands/attack.py, "
                                "research/commands/quantize.py)",
    "resnet/mnist_resnet18": "the teacher of the README's distillation command",
}
TINY_ATTACK = ["--num_samples", "8", "--batch_size", "8", "--steps", "2"]
TINY_QUANTIZE = ["--repeats", "1", "--calibration_batches", "1"]


@dataclass
class Command:
    source: str  # "README.md:12" or "research/fit.py:3"
    text: str  # shell words as shown (continuations joined, comment dropped), or a ```python block
    kind: str = "shell"  # "shell" or "python"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def id(self) -> str:
        return f"{self.source} {self.text.splitlines()[0][:70]}"


# ------------------------------------------------------------------ extraction


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join lines ending in a backslash with the next; the line number is the first one's."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1].rstrip())
            continue
        pending = None
        joined.append((number, line))
    if pending is not None:
        joined.append(pending)
    return joined


def _shell_commands(source: str, line: str) -> list[Command]:
    """A shell line's commands: ``# comment`` dropped, split at ``&&``."""
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for word in [*words, "&&"]:
        if word == "&&":
            if current:
                commands.append(Command(source, shlex.join(current)))
            current = []
        else:
            current.append(word)
    return commands


def readme_commands(path: Path = README) -> list[Command]:
    commands: list[Command] = []
    lines = path.read_text().splitlines()
    fence: str | None = None
    block: list[tuple[int, str]] = []
    start = 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence, block, start = stripped[3:].strip().lower(), [], number
            continue
        if fence is not None and stripped == "```":
            if fence in ("bash", "sh", "shell", "console", ""):
                for first, logical in _logical_lines(block):
                    commands += _shell_commands(f"README.md:{first}", logical)
            elif fence == "python":
                commands.append(Command(f"README.md:{start}", "\n".join(text for _, text in block), "python"))
            fence = None
            continue
        if fence is not None:
            block.append((number, line))
            continue
        for inline in re.findall(r"`(python -m research [^`]*)`", line):
            if len(shlex.split(inline)) > 4:  # a bare `python -m research attack` names the tool, it is no command
                commands += _shell_commands(f"README.md:{number} (inline)", inline)
    return commands


def _expand_usage(text: str) -> str:
    """``[--quick]`` -> ``--quick``; ``[--mode auto|dynamic|static]`` -> ``--mode auto``."""
    text = re.sub(r"\[([^\[\]]*)\]", r"\1", text)
    return re.sub(r"(\S+?)\|\S+", lambda m: m.group(1), text)


def docstring_commands(package: Path = PACKAGE) -> list[Command]:
    commands: list[Command] = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node, clean=False)
            if not docstring:
                continue
            first_line = node.body[0].lineno  # the docstring's opening line
            numbered = list(enumerate(docstring.splitlines(), first_line))
            starts = [n for n, line in numbered if line.strip().startswith("python -m research")]
            for number, logical in _logical_lines(numbered):
                if number in starts:
                    commands += _shell_commands(f"{path.relative_to(ROOT).as_posix()}:{number}", _expand_usage(logical))
    return commands


README_COMMANDS = readme_commands()
DOCSTRING_COMMANDS = docstring_commands()
ALL_COMMANDS = README_COMMANDS + DOCSTRING_COMMANDS


def exception_for(command: Command) -> str | None:
    for start, reason in EXCEPTIONS.items():
        if command.text == start or command.text.startswith(start + " "):
            return reason
    return None


def runner_for(command: Command):
    if command.kind == "python":
        return run_python
    argv = command.argv
    if argv[:3] == ["python", "-m", "research"] and len(argv) > 3:
        return RUNNERS.get(argv[3])
    return None


def test_documented_commands_are_found_and_each_is_run_or_excused():
    sources = {c.source.split(":")[0] for c in ALL_COMMANDS}
    assert README_COMMANDS and DOCSTRING_COMMANDS
    documented = {"README.md", *(f"research/commands/{name}.py" for name in ("fit", "attack", "quantize"))}
    assert documented <= sources
    for command in ALL_COMMANDS:
        assert runner_for(command) or exception_for(command), (
            f"{command.source}: {command.text!r} is neither run by tests/test_documented_commands.py "
            "nor listed in its EXCEPTIONS (with the reason)"
        )
    # the command is among them
    assert any(c.text.startswith("python -m research test") and "--ckpt_path best" in c.text for c in ALL_COMMANDS)


def test_checkpoints_read_are_written_by_an_earlier_command():
    """Test, attack, quantize, distillation and probe commands come after the fit that writes their checkpoint."""
    written: dict[str, set[str]] = {}
    for command in ALL_COMMANDS:
        if command.kind != "shell" or exception_for(command):
            continue
        source = command.source.split(":")[0]
        argv = _offline(command.argv, Path("DATA"))
        for experiment in _needed_checkpoints(argv):
            assert experiment in written.get(source, set()) or experiment in PREREQUISITES, (
                f"{command.source}: {command.text!r} reads checkpoints/{experiment}/, which no command above it "
                f"in {source} writes: show that fit first, or list it in PREREQUISITES with the reason"
            )
        if argv[2:4] == ["research", "fit"] and "--print_config" not in argv:
            written.setdefault(source, set()).add(_experiment_of(argv))


# ------------------------------------------------------------------ running


@dataclass
class Workspace:
    """One working folder per documentation source, so its commands see each other's outputs in order."""

    path: Path
    data_root: Path


def _config_data_class(config: str) -> str:
    data = yaml.safe_load((ROOT / config).read_text()).get("data", {})
    return str(data.get("class_path", "")).rsplit(".", 1)[-1]


def _experiment(config: str) -> str:
    return Path(config).with_suffix("").as_posix().removeprefix("configs/")


def _experiment_of(argv: list[str]) -> str:
    """The run name of a fit command: --experiment, else the config's <family>/<name>."""
    return _option(argv, "--experiment") or _experiment(_option(argv, "--config"))


def _offline(argv: list[str], data_root: Path) -> list[str]:
    """Placeholders become tiny real paths; a download becomes the offline stand-in ``data_root``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "DIR":  # a folder to write to after --figures, else a data root
            arg = "figures" if i > 0 and argv[i - 1] == "--figures" else str(data_root)
        elif arg in ("CKPT", "PATH"):
            config = argv[argv.index("--config") + 1]
            arg = f"checkpoints/{_experiment(config)}/last.ckpt"
        elif i > 0 and argv[i - 1] == "--data.init_args.download" and arg == "true":
            arg = "false"
            out[-1:] = ["--data.init_args.root", str(data_root), "--data.init_args.download"]
        out.append(arg)
    return out


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _needed_checkpoints(argv: list[str]) -> list[str]:
    """The experiments whose checkpoints the command reads."""
    needed = [m.group(1) for arg in argv if (m := re.fullmatch(r"checkpoints/(.+)/[^/]+\.ckpt", arg))]
    if _option(argv, "--ckpt_path") in ("last", "best"):
        needed.append(_experiment_of(argv))
    return needed


def _tiny_fit_args(config: str) -> list[str]:
    data = yaml.safe_load((ROOT / config).read_text()).get("data", {})
    batch = TINY_BATCH if "batch_size" in data.get("init_args", {}) else []
    return TINY_TRAINER + batch + TINY_DATA.get(_config_data_class(config), [])


def _ensure_checkpoints(argv: list[str], workspace: Workspace) -> None:
    """Make by a tiny fit what the command reads and is not there: a prerequisite, or (when this test
    was selected alone) what the commands above it would have written."""
    from research.commands.fit import main as fit

    for experiment in _needed_checkpoints(argv):
        if (workspace.path / "checkpoints" / experiment / "last.ckpt").is_file():
            continue
        config = f"configs/{experiment}.yaml"
        args = ["fit", "--config", config, *_tiny_fit_args(config)]
        if _config_data_class(config) in (
            "MNISTDataModule", "FashionMNISTDataModule", "CIFAR10DataModule", "CIFAR100DataModule"
        ):
            args += ["--data.init_args.root", str(workspace.data_root)]
        fit(args)


def run_fit(argv: list[str], workspace: Workspace) -> None:
    from research.commands import dispatch as fit

    args = argv[3:]
    config = _option(args, "--config")
    tiny = _tiny_fit_args(config) if args[0] in ("fit", "test", "validate", "predict") else []
    if "--print_config" in args:  # jsonargparse prints after all arguments are parsed, then exits 0
        at = args.index("--print_config")
        args = args[:at] + tiny + args[at:]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            fit(args)
        assert stop.value.code in (0, None)
        printed = yaml.safe_load(out.getvalue())
        assert printed["model"] and printed["data"] and printed["trainer"]
        return
    cli = fit(args + tiny)
    assert cli.trainer.state.finished


def run_attack(argv: list[str], workspace: Workspace) -> None:
    from research.commands import dispatch

    rows = dispatch(argv[3:] + TINY_ATTACK)
    assert rows and all(0 <= r["accuracy"] <= 1 for r in rows)


def run_quantize(argv: list[str], workspace: Workspace) -> None:
    from research.commands import dispatch

    results = dispatch(argv[3:] + TINY_QUANTIZE)
    assert results


def run_reproduce(argv: list[str], workspace: Workspace) -> None:
    from research.commands import dispatch
    from research.reproduce import TABLES

    args = argv[4:]
    if args[0] in TABLES and TABLES[args[0]].cache and "--quick" not in args:
        args.append("--quick")  # a table that trains: its tiny settings
    assert dispatch(["reproduce", *args]) == 0


def run_python(command: Command, workspace: Workspace) -> None:
    exec(compile(command.text, command.source, "exec"), {"__name__": "__readme__"})


RUNNERS = {
    "fit": run_fit,
    "validate": run_fit,
    "test": run_fit,
    "predict": run_fit,
    "attack": run_attack,
    "quantize": run_quantize,
    "reproduce": run_reproduce,
}


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """source file -> its Workspace: an empty folder with configs/ linked in and offline stand-in data."""
    return {}


@pytest.fixture
def workspace(request, workspaces, tmp_path_factory, monkeypatch, fake_torchvision_root):
    command: Command = request.param
    source = command.source.split(":")[0]
    if source not in workspaces:
        path = tmp_path_factory.mktemp(source.replace("/", "_").replace(".", "_"))
        (path / "configs").symlink_to(ROOT / "configs")
        data_root = path / "data-stand-in"
        fake_torchvision_root.rename(data_root)
        workspaces[source] = Workspace(path, data_root)
    monkeypatch.chdir(workspaces[source].path)
    monkeypatch.setattr(sys, "argv", ["python"])  # pytest's own arguments are not the commands'
    return workspaces[source]


RUN = [c for c in ALL_COMMANDS if not exception_for(c)]


@pytest.mark.parametrize("workspace", RUN, ids=[c.id for c in RUN], indirect=True)
def test_documented_command_runs(workspace: Workspace, request):
    command: Command = request.node.callspec.params["workspace"]
    if command.kind == "python":
        run_python(command, workspace)
        return
    argv = _offline(command.argv, workspace.data_root)
    _ensure_checkpoints(argv, workspace)
    runner_for(command)(argv, workspace)
