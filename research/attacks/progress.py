"""Where an evaluation's attacks are, on stderr: a rich progress bar in a terminal, else a line per setting.

Used by :func:`research.attacks.evaluation.robust_accuracy` and the sanity panel; the lines are what a
log file or CI keeps, so each says a setting's accuracy, its time and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence


class AttackProgress:
    """Where the attacks are, on stderr: a rich progress bar in a terminal, else a line per finished setting.

    The bar shows the attack and eps, the images done, the time spent and the time left on the
    current setting, and over all settings (weighted by each attack's cost per image, so a PGD-40
    row counts 40 FGSM rows). The lines (also printed above the bar in a terminal) give each
    setting's accuracy, its time and the estimated time left, so a log shows how far a run got.

    Args:
        labels: one per setting, in the order they run.
        costs: forward-backward passes per image of each setting.
        live: report (a bar when stderr is a terminal, else lines); False says nothing.
        title: names the phase in the lines ("attacks", "sanity panel").

    """

    def __init__(self, labels: Sequence[str], costs: Sequence[float], *, live: bool = True,
                 title: str = "attacks") -> None:
        self.labels, self.costs, self.title = list(labels), [max(float(c), 1e-3) for c in costs], title
        self.quiet = not live
        self.bar = None
        self.done_work = 0.0
        self.total_work = 0.0

    def __enter__(self) -> AttackProgress:
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                                console=Console(file=sys.stderr), transient=True)
            self.bar.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _say(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def clean(self, correct: int, total: int, seconds: float) -> None:
        self.total_images = total
        self.total_work = sum(self.costs) * total
        self.attack_start = time.monotonic()
        self._say(f"{self.title}: clean {percent(correct, total)} in {duration(seconds)}; "
                  f"{len(self.labels)} settings to run on {total} images")
        if self.bar is not None:
            self.overall = self.bar.add_task(f"{self.title}: all", total=self.total_work,
                                             count=f"0/{len(self.labels)} settings")

    def begin(self, i: int, total: int) -> None:
        self.index, self.row_start, self.row_done = i, time.monotonic(), 0
        if self.bar is not None:
            self.current = self.bar.add_task(f"[{i + 1}/{len(self.labels)}] {self.labels[i]}", total=total,
                                             count=f"0/{total} images")

    def advance(self, images: int) -> None:
        self.row_done += images
        self.done_work += images * self.costs[self.index]
        if self.bar is not None:
            self.bar.update(self.current, advance=images, count=f"{self.row_done}/{self.total_images} images")
            self.bar.update(self.overall, advance=images * self.costs[self.index])

    def end(self, i: int, correct: int, total: int) -> None:
        now = time.monotonic()
        left = (now - self.attack_start) / max(self.done_work, 1e-9) * (self.total_work - self.done_work)
        after = f"; about {duration(left)} left" if i + 1 < len(self.labels) else ""
        self._say(f"[{i + 1}/{len(self.labels)}] {self.labels[i]}: {percent(correct, total)} "
                  f"in {duration(now - self.row_start)}{after}")
        if self.bar is not None:
            self.bar.remove_task(self.current)
            self.bar.update(self.overall, count=f"{i + 1}/{len(self.labels)} settings")


def percent(correct: int, total: int) -> str:
    return f"{100 * correct / total:.2f}% ({correct}/{total})"


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
