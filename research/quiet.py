"""Silence, one by one, the messages of libraries that a user of this package cannot act on.

Each filter matches one known message at its source (a logger or a warning's module and text), so
every other warning, and every warning that asks the user to do something, still shows.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


_silenced = False


def silence_known_noise() -> None:
    """Lightning's litlogger advertisement, its note on our own summary, and a torch API it still uses (once)."""
    global _silenced
    if _silenced:
        return
    _silenced = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    # Printed at every Trainer start unless a LitLogger is used; Lightning has no option to turn it off.
    rank_zero.addFilter(_DropMessage("💡 Tip: For seamless cloud"))
    # the fit command adds its own model summary (research.callbacks.summary); Lightning says so at every start.
    rank_zero.addFilter(_DropMessage("Trainer already configured with model summary callbacks"))
    # WeightAveraging (EMA) warns of sharding whenever a task overrides configure_model; ours fits the model to its
    # data there and shards only under FSDP2Strategy, which refuses weight averaging with its own message.
    warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that overrides",
                            category=UserWarning)
    # lightning/pytorch/utilities/_pytree.py builds a LeafSpec, which torch >= 2.9 deprecates; Lightning's to fix.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
