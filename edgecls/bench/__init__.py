"""The bench stage: timings on boards, locally or emulated, and instruction counts under qemu."""

from edgecls.api_package import callable_as_api

callable_as_api(__name__)  # edgecls.bench(...) is edgecls.api.bench (edgecls/api_package.py)
