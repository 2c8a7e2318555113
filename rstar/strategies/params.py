"""A strategy's parameters, stated once: a pydantic model gives each its type, default, range and
meaning; the strategy reads a job's parameters with it, stores what it holds, and `--param`'s help
and `rstar strategies` list it. (Before, `mutual` stated `max_rounds` in four places.)

Values are strict: 2.5 is no integer, "yes" and 1 are no booleans, an integer is a number. An
error names the parameter, what it must be, and the value given, as `rstar submit` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from annotated_types import Ge, Le
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo

SEED_MAX = 2**31 - 1

# The parameters most strategies share, each declared here once.
Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="sampling temperature")]
Tokens = Annotated[int, Field(ge=16, le=32768, description="tokens a reply may take at most")]
Seed = Annotated[
    int | None,
    Field(ge=0, le=SEED_MAX, description="the job's base seed (each request's is derived); null: unseeded"),
]
Peers = Annotated[
    Literal["next", "all"],
    Field(description="who judges a solution: the next model in the roster, or every other model"),
]


DEFAULT_ROUNDS_LIMIT = 10
"""RSTAR_MAX_ROUNDS_LIMIT's default; the strategies are given the setting's value."""


def _within_rounds_limit(value: int, info: ValidationInfo) -> int:
    limit = (info.context or {}).get("max_rounds_limit", DEFAULT_ROUNDS_LIMIT)
    if not 1 <= value <= limit:
        raise ValueError(f"max_rounds must be an integer from 1 to {limit}, got {value!r}")
    return value


MaxRounds = Annotated[
    int,
    Field(description="rounds at most: 1 to RSTAR_MAX_ROUNDS_LIMIT (default 10)"),
    AfterValidator(_within_rounds_limit),
]
SolutionFormat = Annotated[
    Literal["json", "prose"],
    Field(
        description='how solutions are written: JSON steps and "final_answer", or prose ending in \\boxed{}'
    ),
]


class ParamError(ValueError):
    """A strategy parameter is missing, of the wrong type or out of range."""


class Params(BaseModel):
    """Subclasses declare fields with `Field(default, ge=..., le=..., description=...)`."""

    # Unknown names are the strategy's to refuse (`get_strategy` names the ones it takes).
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    @classmethod
    def read(cls, given: Mapping[str, Any] | None = None, **context: Any) -> Self:
        """The parameters from a job's (missing ones take their defaults); ParamError naming the
        first one that is wrong. `context` reaches the models' validators (a limit from settings)."""
        try:
            return cls.model_validate(dict(given or {}), context=context)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else ""
            field = cls.model_fields.get(name)
            if field is None or error["type"] == "value_error":
                raise ParamError(str(error["msg"]).removeprefix("Value error, ")) from None
            raise ParamError(f"{name} must be {describe(field)}, got {error['input']!r}") from None

    def stored(self) -> dict[str, Any]:
        """What a job stores: every parameter, defaults included, so a later default never changes
        how an earlier job replays."""
        return self.model_dump()

    @classmethod
    def help(cls) -> list[tuple[str, str, Any, str]]:
        """(name, what it must be, default, meaning) of every parameter."""
        return [(name, describe(f), f.default, f.description or "") for name, f in cls.model_fields.items()]


def describe(field: FieldInfo) -> str:
    """What a value of the field must be: "an integer from 1 to 64", "one of json, prose"."""
    low = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    kind = field.annotation
    optional = get_origin(kind) is not None and type(None) in get_args(kind)
    if optional:
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Literal:
        text = "one of " + ", ".join(str(a) for a in get_args(kind))
    elif kind is bool:
        text = "true or false"
    elif kind is int:
        if low is not None and high is not None:
            text = f"an integer from {low} to {high}"
        else:
            text = f"an integer of at least {low}" if low is not None else "an integer"
    elif kind is float:
        text = f"a number from {low} to {high}"
    else:
        text = str(kind)
    return f"{text}, or null" if optional else text
