"""``python -m research <command> ...``: see :mod:`research.commands`."""

from research.commands import main

if __name__ == "__main__":
    main()
