"""krate.records.NamedTuple makes the classes typing.NamedTuple makes, only faster."""

from __future__ import annotations

import pickle
import time
import typing

import pytest

from krate import records

SOURCE = '''
from __future__ import annotations
from {module} import NamedTuple

class Point(NamedTuple):
    """A point."""

    x: int
    y: list[str] | None = None
    z: tuple[int, ...] = ()

    LIMIT = 3

    def total(self) -> int:
        return self.x + len(self.z)

    @property
    def doubled(self) -> int:
        return self.x * 2

    @classmethod
    def origin(cls) -> Point:
        return cls(0)

    def to_dict(self) -> dict:
        return self._asdict()
'''


def make(module: str):
    namespace = {"__name__": "krate_records_test"}
    exec(SOURCE.format(module=module), namespace)
    return namespace["Point"]


def test_the_class_behaves_as_typings():
    fast, slow = make("krate.records"), make("typing")
    for cls in (fast, slow):
        p = cls(2, ["a"], (1, 2))
        assert p == (2, ["a"], (1, 2)) and p.total() == 4 and p.doubled == 4
        assert cls.origin() == (0, None, ()) and cls.LIMIT == 3
        assert p._replace(x=5).x == 5 and p.to_dict() == {"x": 2, "y": ["a"], "z": (1, 2)}
        assert isinstance(p, tuple) and cls.__bases__ == (tuple,)
    for attribute in ("_fields", "_field_defaults", "__doc__", "__module__", "__qualname__",
                      "__name__", "__slots__", "__match_args__"):  # fmt: skip
        assert getattr(fast, attribute) == getattr(slow, attribute), attribute
    assert repr(fast(1)) == repr(slow(1)) == "Point(x=1, y=None, z=())"
    assert list(fast.__annotations__) == list(slow.__annotations__) == ["x", "y", "z"]


def test_pickles_like_any_module_level_class():
    fast = records.NamedTuple
    globals()["Pickled"] = type(
        "Pickled",
        (fast,),
        {
            "__module__": __name__,
            "__qualname__": "Pickled",
            "__annotations__": {"a": "int"},
        },  # fmt: skip
    )
    value = Pickled(1)  # noqa: F821
    assert pickle.loads(pickle.dumps(value)) == value


@pytest.mark.parametrize("module", ["krate.records", "typing"])
def test_a_field_without_default_after_one_with_is_refused(module):
    with pytest.raises(TypeError, match="Non-default namedtuple field b"):
        exec(
            f"from __future__ import annotations\nfrom {module} import NamedTuple\n"
            "class Bad(NamedTuple):\n    a: int = 1\n    b: int\n",
            {"__name__": "m"},
        )


def test_a_namedtuple_attribute_cannot_be_overwritten():
    with pytest.raises(AttributeError, match="_replace"):
        type("Bad", (records.NamedTuple,), {"__module__": "m", "__annotations__": {},
                                            "_replace": lambda self: None})  # fmt: skip


def test_it_is_cheaper_to_make():
    codes = {m: compile(SOURCE.format(module=m), "x", "exec") for m in ("typing", "krate.records")}

    def cost(module: str) -> float:
        start = time.perf_counter()
        for _ in range(30):
            exec(codes[module], {"__name__": "x"})
        return time.perf_counter() - start

    cost("typing"), cost("krate.records")  # warm up
    assert min(cost("krate.records") for _ in range(3)) < min(cost("typing") for _ in range(3))
    assert typing.NamedTuple is not records.NamedTuple
