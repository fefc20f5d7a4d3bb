"""One small registry type for datasets, models, backbones and experiments."""

from collections.abc import Callable, Iterator
from difflib import get_close_matches
from typing import Generic, TypeVar

from torchdojo.errors import DojoError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map; registering a name twice raises, looking up an unknown one suggests."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`; without `obj`, return a decorator."""
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name`, or a DojoError listing the known names."""
        try:
            return self._items[name]
        except KeyError:
            close = get_close_matches(name, self._items, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DojoError(
                f"unknown {self.kind} {name!r}",
                f"{hint}known {self.kind}s: {', '.join(self.names())} (see `torchdojo list`)",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
