"""The processes of one run: which one this is, how many there are, and a barrier between them.

Under ``accelerate launch --num_processes N -m comal run CONFIG`` (or ``comal run --processes N``)
every process runs the same loop on the same run folder. Sampling, judging and log-probs are
sharded by prompt (:func:`~comal.llm.run_folder.write_sharded`), training is data-parallel, and
every other stage is written by the main process alone while the others wait at the barrier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

Item = TypeVar("Item")

# a process waits at the barrier while the main one evaluates or decides alone; gloo's default 30 min is short
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    count: int = 1
    barrier: Callable[[], None] = field(default=lambda: None, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[Item], rank: int | None = None) -> list[Item]:
        """Process ``rank``'s share of ``items`` (this process's by default): every ``count``-th item."""
        return list(items[self.rank if rank is None else rank::self.count])


ONE_PROCESS = Processes()


def current_processes() -> Processes:
    """This process among those ``accelerate launch`` (or ``torchrun``) started; one process otherwise."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    if state.num_processes == 1:
        return ONE_PROCESS
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone)
