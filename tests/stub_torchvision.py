"""A stand-in ``torchvision`` package for tests (copied to ``<tmp>/torchvision/__init__.py``).

torchvision does not install beside the CPU torch wheel used here, and without it transformers
refuses to construct its Qwen video processors, so ``AutoProcessor.from_pretrained`` cannot be
tried at all. With this stand-in on ``PYTHONPATH`` every ``torchvision.*`` module imports and
every attribute is a placeholder that raises when called: transformers' own classes read a
checkpoint's processor files, but no pixel work can run (a wrong file still fails).
"""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.28.0"


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, a):
        if a.startswith("__"):
            raise AttributeError(a)
        return _Missing(f"{self._name}.{a}")

    def __call__(self, *a, **k):
        raise RuntimeError(f"stand-in torchvision: {self._name} was called")

    def __hash__(self):
        return hash(self._name)

    def __eq__(self, other):
        return isinstance(other, _Missing) and other._name == self._name


def _attr(module, a):
    if a.startswith("__"):
        raise AttributeError(a)
    return _Missing(f"{module}.{a}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes every ``torchvision.<sub>`` import succeed with a module of placeholders."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []
        m.__getattr__ = lambda a, n=spec.name: _attr(n, a)
        return m

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())


def __getattr__(a):
    return _attr("torchvision", a)
