"""The report stage: bench reports -> rows compared across boards, runtimes and models."""

from edgecls.api_package import callable_as_api

callable_as_api(__name__)  # edgecls.report(...) is edgecls.api.report (edgecls/api_package.py)
