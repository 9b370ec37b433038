"""`NamedTuple` for krate's records, without typing's check of every field's type.

krate's records are NamedTuples, not dataclasses (policy/model.py says why). Making a
`typing.NamedTuple` class checks each field's annotation: under `from __future__ import
annotations` each is a string, turned into a ForwardRef and compiled, about 0.2 ms per
class, and some 35 classes are made on every `krate run`. This builds the same class
through `collections.namedtuple` as typing does, minus that check: the same fields,
defaults, docstring, methods and properties; `__annotations__` keeps the strings as
written. Type checkers see `typing.NamedTuple`. Standard library only: the egress proxy
loads it with the policy modules (egress/helperlib.py).
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path

# As typing.NamedTupleMeta: what a class body may not set, and what it sets but is not copied.
_PROHIBITED = frozenset(
    {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
     "_make", "_replace", "_asdict", "_source"}
)  # fmt: skip
_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})


def _make(name: str, namespace: dict) -> type:
    fields = namespace.get("__annotations__", {})
    with_default: list[str] = []
    for field in fields:
        if field in namespace:
            with_default.append(field)
        elif with_default:
            raise TypeError(
                f"Non-default namedtuple field {field} cannot follow default field"
                f"{'s' if len(with_default) > 1 else ''} {', '.join(with_default)}"
            )
    cls = collections.namedtuple(
        name, list(fields), defaults=[namespace[f] for f in with_default],
        module=namespace["__module__"],
    )  # fmt: skip
    cls.__annotations__ = cls.__new__.__annotations__ = dict(fields)
    for key, value in namespace.items():
        if key in _PROHIBITED:
            raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
        if key not in _SPECIAL and key not in cls._fields:
            setattr(cls, key, value)
    return cls


class _Maker(type):
    def __new__(mcs, name: str, bases: tuple, namespace: dict):
        if not bases:  # the base class below
            return super().__new__(mcs, name, bases, namespace)
        if len(bases) != 1:
            raise TypeError("a krate NamedTuple has no other base class")
        return _make(name, namespace)


if TYPE_CHECKING:
    from typing import NamedTuple
else:

    class NamedTuple(metaclass=_Maker):
        """`class Record(NamedTuple): field: type = default`, as with typing.NamedTuple."""


__all__ = ["NamedTuple"]
