"""What every part of the spec shares: the strict base model, names, units."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$"
AUTO_MODEL = "auto"

PositiveInt = Annotated[int, Field(ge=1)]
Price = Annotated[float, Field(ge=0.0, description="US dollars per 1M tokens")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
