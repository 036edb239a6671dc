"""The model summary at the start of fit, without a FLOPs column when nothing could count them."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count


class ModelSummary(RichModelSummary):
    """Lightning's rich model summary, except that FLOPs appear only when they were counted.

    Lightning counts FLOPs by running the task's ``example_input_array``; a task without one got a
    FLOPs column of zeros and "Total FLOPs: 0", which reads as a fact about the model.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if total_flops or name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            right = name not in ("", " ", "Name", "Type", "Mode")
            table.add_column(name or " ", justify="right" if right else "left", no_wrap=name == "Name",
                             style="dim" if name in ("", " ") else None)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        rows = [("Trainable params", get_human_readable_count(int(trainable_parameters))),
                ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
                ("Total params", get_human_readable_count(int(total_parameters))),
                ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
                ("Modules in train mode", total_training_modes["train"]),
                ("Modules in eval mode", total_training_modes["eval"])]
        if total_flops:
            rows.append(("Total FLOPs", get_human_readable_count(total_flops)))
        for name, value in rows:
            grid.add_row(f"[bold]{name}[/]: {value}")
        console.print(grid)
