"""The one registry style of featbench: names -> things, registered where they are defined.

Every registry (run kinds, tasks, networks, face detectors) is a :class:`Registry`:

- **registration at the definition site**: ``@KINDS.register("lstm")`` above a definition, or
  ``KINDS.add(name, obj)`` for an object made by a call (a plug-in, a test's toy);
- **lazy entries**: ``KINDS.lazy("lstm", "classify.netkinds:LSTM", trained_by="classify")``
  names where a built-in lives without importing it, so that ``featbench --help`` (which lists
  names) imports nothing heavy; the entry is imported the first time it is asked for (the
  module's own registration, if any, then holds it). Keyword *facts* are attributes of the
  object said beside the name, so that :meth:`Registry.names` can select by them without an
  import (the choices of ``featbench classify --clf``); the object is checked to agree when it
  is imported;
- **a duplicate name raises** (:class:`DuplicateNameError`, a ``ValueError`` and a
  ``UsageError``), unless ``replace=True`` (torchvision's model registry does the same);
- **an unknown name lists the choices** and the closest one (STYLE.md lesson 2).

A registered object may itself name its heavy parts lazily: :class:`Lazy` (``lazy("classify.lstm:
lstm_method")``) is a function imported the first time it is called (a run kind's trainer,
saver and method, so that applying a run never imports the training modules).

``tests/test_layers.py`` reads every ``"module:attr"`` string (entries and :class:`Lazy` alike)
as an import of that module, so one pointing up the layers is caught as an import would be.
"""

import importlib

from featbench.core.errors import UsageError, did_you_mean


class DuplicateNameError(UsageError, ValueError):
    """A name registered twice (the second registration is refused)."""


class Registry:
    """Names -> objects, some of them lazy ``"module:attr"`` entries (see the module docstring).

    Parameters
    ----------
    what : str
        What a name names, for messages ("run kind", "task", "model", "face detector").
    hint : str, optional
        Where a user sees every name (``featbench models lists all``).
    """

    def __init__(self, what, *, hint=None):
        self.what, self.hint = what, hint
        self._objects, self._lazy, self._builtin = {}, {}, set()
        self._order = {}  # every name once, in the order it was first registered
        self._facts = {}  # name -> the attributes a lazy entry says its object has

    def lazy(self, name, target, **facts):
        """Name a built-in by where it lives (``"module:attr"``), imported on first use;
        ``facts``: attributes of the object, known without importing it."""
        if name in self._lazy or name in self._objects:
            raise DuplicateNameError(f"{self.what} {name!r} is already registered")
        self._lazy[name] = target
        self._facts[name] = facts
        self._builtin.add(name)
        self._order.setdefault(name, None)

    def add(self, name, obj, *, replace=False, builtin=False):
        """Register ``obj`` under ``name``; return it. A lazy entry's own module registering the
        object it names is no duplicate; ``builtin`` ones are never removed."""
        lazy = self._lazy.get(name)
        own = lazy is not None and getattr(obj, "__module__", None) == lazy.partition(":")[0]
        taken = name in self._objects or (lazy is not None and not own)
        if taken and not replace:
            raise DuplicateNameError(f"{self.what} {name!r} is already registered")
        self._objects[name] = obj
        self._order.setdefault(name, None)
        if builtin:
            self._builtin.add(name)
        return obj

    def register(self, name=None, *, replace=False):
        """Decorator: register the decorated object under ``name`` (default: its ``name``
        attribute or ``__name__``)."""
        def deco(obj):
            self.add(name or getattr(obj, "name", None) or obj.__name__, obj, replace=replace)
            return obj

        return deco

    def remove(self, name):
        """Remove a name registered by :meth:`add` (tests, plug-ins); built-ins stay."""
        if name not in self._builtin:
            self._objects.pop(name, None)
            self._order.pop(name, None)

    def names(self, **facts):
        """Every registered name, in registration order (nothing imported); with ``facts``, the
        names whose object has those attribute values (a lazy entry's said facts, a registered
        object's attributes)."""
        return [n for n in self._order if all(self._fact(n, k) == v for k, v in facts.items())]

    def _fact(self, name, key):
        if name in self._facts and key in self._facts[name]:
            return self._facts[name][key]
        obj = self._objects.get(name)
        return getattr(obj, key, None) if obj is not None else None

    def __contains__(self, name):
        return name in self._objects or name in self._lazy

    def loaded(self, name):
        """The object of ``name`` if already imported (None otherwise): nothing is imported."""
        return self._objects.get(name)

    def get(self, name):
        """Return the object called ``name``, importing a lazy entry now.

        Raises
        ------
        UsageError
            An unknown name, with the closest one and the list.
        """
        if name in self._objects:
            return self._objects[name]
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            mod = importlib.import_module(module)
            if name not in self._objects:  # the module did not register it itself
                self._objects[name] = getattr(mod, attr)
            obj = self._objects[name]
            wrong = {k: v for k, v in self._facts.get(name, {}).items() if getattr(obj, k, None) != v}
            if wrong:  # the entry says what the object is not: a mistake in the code
                raise ValueError(f"{self.what} {name!r} ({self._lazy[name]}) does not have {wrong}")
            return obj
        raise UsageError(did_you_mean(str(name), tuple(self.names()), what=self.what, hint=self.hint))

    def values(self):
        """Every registered object (lazy ones imported now)."""
        return [self.get(n) for n in self.names()]


def resolve(target):
    """The object ``"module:attr"`` names (its module imported now)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Lazy:
    """A function named by where it lives (``"module:attr"``), imported when first called.

    What a frozen spec (a :class:`classify.kinds.RunKind`) holds in place of a function whose
    module is heavy or sits on the other side of a boundary (training code, for a kind that
    predict loads). Equal when the names are; pickled as the name.
    """

    __slots__ = ("target", "_fn")

    def __init__(self, target):
        self.target, self._fn = str(target), None

    def resolve(self):
        """The function itself (imported now, the first time)."""
        if self._fn is None:
            self._fn = resolve(self.target)
        return self._fn

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other):
        return isinstance(other, Lazy) and other.target == self.target

    def __hash__(self):
        return hash(self.target)

    def __repr__(self):
        return f"lazy({self.target!r})"

    def __reduce__(self):
        return (Lazy, (self.target,))


def lazy(target):
    """A :class:`Lazy` of ``target`` (``"module:attr"``)."""
    return Lazy(target)

