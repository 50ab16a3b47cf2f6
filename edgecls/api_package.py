"""`edgecls.compile`, `edgecls.bench` and `edgecls.report` are both subpackages (the pipeline's
folders) and the Python API's calls (edgecls/api.py).

Importing a submodule (edgecls.bench.run) makes the import system set the parent's attribute to
the subpackage, which would replace a function of that name at any later import (measured: a
test importing edgecls.bench.* turned `edgecls.bench(...)` into "'module' object is not
callable"). So each of those packages makes its own module object callable, in its __init__, so
that every import of it (a re-import too) forwards a call to the API function of its name.
"""

from __future__ import annotations

import sys
import types


class ApiPackage(types.ModuleType):
    """A package module that is also an API call: edgecls.<name>(...) is edgecls.api.<name>(...)."""

    def __call__(self, *args, **kwargs):
        from edgecls import api
        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def callable_as_api(module_name: str) -> None:
    """Make the (already imported) package `module_name` callable as its API function."""
    sys.modules[module_name].__class__ = ApiPackage
