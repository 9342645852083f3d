"""The one registry style of featbench: names -> things, registered where they are defined.

Every registry (run kinds, tasks, networks, face detectors) is a :class:`Registry`:

- **registration at the definition site**: ``@KINDS.register("lstm")`` above a definition, or
  ``KINDS.add(name, obj)`` for an object made by a call (a plug-in, a test's toy);
- **lazy entries**: ``KINDS.lazy("lstm", "classify.lstm:KIND")`` names where a built-in lives
  without importing it, so that ``featbench --help`` (which lists names) imports nothing heavy;
  the entry is imported the first time it is asked for (the module's own registration, if
  any, then holds it);
- **a duplicate name raises** (:class:`DuplicateNameError`, a ``ValueError`` and a
  ``UsageError``), unless ``replace=True`` (torchvision's model registry does the same);
- **an unknown name lists the choices** and the closest one (STYLE.md lesson 2).

``tests/test_layers.py`` reads every ``"module:attr"`` entry as an import of that module, so an
entry pointing up the layers is caught as an import would be.
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

    def lazy(self, name, target):
        """Name a built-in by where it lives (``"module:attr"``), imported on first use."""
        if name in self._lazy or name in self._objects:
            raise DuplicateNameError(f"{self.what} {name!r} is already registered")
        self._lazy[name] = target
        self._builtin.add(name)

    def add(self, name, obj, *, replace=False, builtin=False):
        """Register ``obj`` under ``name``; return it. A lazy entry's own module registering the
        object it names is no duplicate; ``builtin`` ones are never removed."""
        lazy = self._lazy.get(name)
        own = lazy is not None and getattr(obj, "__module__", None) == lazy.partition(":")[0]
        taken = name in self._objects or (lazy is not None and not own)
        if taken and not replace:
            raise DuplicateNameError(f"{self.what} {name!r} is already registered")
        self._objects[name] = obj
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

    def names(self):
        """Every registered name: built-ins first, in registration order (nothing imported)."""
        return list(dict.fromkeys(list(self._lazy) + list(self._objects)))

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
            return self._objects[name]
        raise UsageError(did_you_mean(str(name), tuple(self.names()), what=self.what, hint=self.hint))

    def values(self):
        """Every registered object (lazy ones imported now)."""
        return [self.get(n) for n in self.names()]
