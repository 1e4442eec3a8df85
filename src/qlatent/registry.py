"""One generic name -> factory registry, used for every family that is built by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the known ones.

    A ``KeyError`` subclass, raised by :meth:`Registry.get` and :meth:`Registry.build` (and so by
    ``qlatent.bottlenecks.build``) for an unknown or unhashable name.
    """

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories (usually classes) and builds them by name.

    >>> reg = Registry[object]("widget")
    >>> @reg.register("plain")
    ... class Plain: ...
    >>> isinstance(reg.build("plain"), Plain)
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name`` and returns it unchanged.

        ValueError for a name that is not a non-empty string without surrounding white space
        or that is already registered; TypeError for a factory that is not callable.
        """
        # a name that is not a non-empty string could never be built by name (and broke
        # ``names()``'s sorting for every other name)
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"a {self.kind} name must be a non-empty string without surrounding white "
                f"space, got {name!r}"
            )

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if not callable(factory):
                raise TypeError(
                    f"{self.kind} {name!r}: a factory must be callable (a class or a "
                    f"function), got {type(factory).__name__}"
                )
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; :class:`UnknownNameError` (listing the known
        names) otherwise."""
        try:
            return self._factories[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, e.g. a list
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known names: {known}") from None

    def build(self, name: str, **kwargs) -> T:
        """``get(name)(**kwargs)``: the factory's own errors for bad keyword arguments pass
        through."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._factories
