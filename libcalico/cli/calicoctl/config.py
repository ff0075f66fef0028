"""Where ``calicoctl`` finds the datastore service.

Calico's calicoctl talks to etcd (or the Kubernetes API) directly; ours talks to the datastore
service, which owns etcd. The target is a gRPC address, ``unix:///path.sock`` or ``host:port``,
taken from the first of:

1. ``--datastore TARGET`` on the command line;
2. the environment variable ``CALICO_DATASTORE``;
3. the config file, ``--config FILE`` (default ``/etc/calico/calicoctl.cfg``), a Calico
   ``CalicoAPIConfig`` document (YAML or JSON) whose ``spec.datastoreEndpoint`` names the
   service -- our own key, next to Calico's ``datastoreType``/``etcdEndpoints``::

       apiVersion: projectcalico.org/v3
       kind: CalicoAPIConfig
       metadata: {}
       spec:
         datastoreEndpoint: unix:///run/calico-lab/sock/datastore.sock

   Calico's own ``etcdEndpoints`` (or ``ETCD_ENDPOINTS``) cannot be used: etcd is reached only
   through the datastore service. A file that sets only those is reported, not ignored;
4. the lab's default socket, ``unix:///run/calico-lab/sock/datastore.sock``.

A config file that is named explicitly must exist; the default path is optional.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libcalico.errors import ValidationError

DEFAULT_CONFIG_PATH = "/etc/calico/calicoctl.cfg"
LAB_DEFAULT_TARGET = "unix:///run/calico-lab/sock/datastore.sock"
ENV_DATASTORE = "CALICO_DATASTORE"


@dataclass(frozen=True)
class DatastoreTarget:
    target: str
    # Where the target came from, for messages: "--datastore", "CALICO_DATASTORE",
    # "<path> (spec.datastoreEndpoint)" or "lab default".
    source: str


def resolve_target(
    flag: str | None,
    config_path: str | None,
    environ: Mapping[str, str] | None = None,
) -> DatastoreTarget:
    """Apply the discovery order above. ``config_path`` None means the default path."""
    env = os.environ if environ is None else environ
    if flag:
        return DatastoreTarget(normalise_target(flag), "--datastore")
    if env.get(ENV_DATASTORE):
        return DatastoreTarget(normalise_target(env[ENV_DATASTORE]), ENV_DATASTORE)
    explicit = config_path is not None
    path = Path(config_path or DEFAULT_CONFIG_PATH)
    if path.exists():
        endpoint = read_config_file(path)
        if endpoint:
            return DatastoreTarget(normalise_target(endpoint), f"{path} (spec.datastoreEndpoint)")
    elif explicit:
        raise ValidationError(f"config file {path} does not exist", resource="calicoctl")
    return DatastoreTarget(LAB_DEFAULT_TARGET, "lab default")


def read_config_file(path: Path) -> str | None:
    """The ``spec.datastoreEndpoint`` of a CalicoAPIConfig file, or None when it has none."""
    import yaml

    where = f"CalicoAPIConfig({path})"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(f"cannot read config file: {exc}".replace("\n", " "),
                              resource=where) from exc
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValidationError("expected a CalicoAPIConfig document", resource=where)
    kind = doc.get("kind")
    if kind not in (None, "CalicoAPIConfig"):
        raise ValidationError(f"kind is {kind!r}, expected 'CalicoAPIConfig'", resource=where,
                              field="kind")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ValidationError("must be a mapping", resource=where, field="spec")
    endpoint = spec.get("datastoreEndpoint")
    if endpoint:
        if not isinstance(endpoint, str):
            raise ValidationError("must be a string such as unix:///path.sock or host:port",
                                  resource=where, field="spec.datastoreEndpoint")
        return endpoint
    if spec.get("etcdEndpoints"):
        raise ValidationError(
            "calico-py reaches etcd only through the datastore service; set "
            "spec.datastoreEndpoint to the service's address (e.g. "
            f"{LAB_DEFAULT_TARGET})",
            resource=where,
            field="spec.etcdEndpoints",
        )
    return None


def normalise_target(target: str) -> str:
    """Accept ``unix:/abs``, ``unix:///abs`` and a bare socket path; leave ``host:port`` alone."""
    target = target.strip()
    if target.startswith("/"):
        return "unix://" + target
    if target.startswith("unix:/") and not target.startswith("unix://"):
        return "unix://" + target[len("unix:"):]
    return target


def unix_socket_path(target: str) -> str | None:
    """The filesystem path of a ``unix://`` target, else None."""
    if target.startswith("unix://"):
        return target[len("unix://"):]
    return None
