"""Classes that register themselves under a name: ``class Mine(Base, name="mine")``.

Product heads, index backends and inference engines are found by the name a config
gives; each family's base class inherits ``Named`` and sets its own ``registry`` dict
and ``kind`` (for messages). A class without ``name=`` (a base, a test double) is not
registered."""

from __future__ import annotations

from typing import ClassVar


class Named:
    registry: ClassVar[dict[str, type]]
    kind: ClassVar[str] = "class"
    name: ClassVar[str] = ""

    def __init_subclass__(cls, name: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in cls.registry:
                raise ValueError(f"{cls.kind} {name!r} is registered twice")
            cls.name = name
            cls.registry[name] = cls
