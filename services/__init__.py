"""calico-py's services, each its own process (``services.<name>.main``).

``libcalico`` is imported first so that gRPC core's I/O engine is chosen before any service
module imports ``grpc`` (see ``libcalico.grpc_engine``).
"""

import libcalico  # noqa: F401
