"""calico-py's shared package: resource model, selectors, datastore client, runtime, stubs, CLIs.

Importing it picks gRPC core's I/O engine for the process before anything loads ``grpc``
(see ``libcalico.grpc_engine``), so every entry point gets it without ordering its imports.
"""

from libcalico.grpc_engine import prefer_poller as _prefer_poller

_prefer_poller()
