"""What every settings model of the project shares (run configs, the demos): unknown keys refused,
values frozen, numbers finite, and seeds in the range numpy and torch accept."""

from typing import Annotated

from pydantic import ConfigDict, Field

STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="a seed: 0 to 2**32 - 1")]
