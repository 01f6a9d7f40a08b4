"""Model configs are dataclasses stored as JSON in weight files; this is their one (de)serialisation."""
from __future__ import annotations

from dataclasses import asdict, fields


class DictConfig:
    """Mixin for a config dataclass: ``to_dict`` and a ``from_dict`` that names any unknown field."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**d)
