"""Command-line tools: ``calicoctl`` (``libcalico.cli.calicoctl``) and ``calico-lab``
(``libcalico.cli.lab``).

Both keep their import graph lean so that a command starts fast: gRPC stubs, the datastore
client and the resource model are imported inside the command that needs them, and
OpenTelemetry's SDK only when tracing is configured.
"""
