"""Profile decoder: ``kns.<ns>`` and ``ksa.<ns>.<sa>`` profiles -> Namespace/ServiceAccount updates.

Kubernetes namespaces and service accounts reach Calico as profiles whose ``labelsToApply``
carry the original labels under ``pcns.``/``pcsa.`` prefixes. Felix strips the prefix and sends
every node a ``NamespaceUpdate``/``ServiceAccountUpdate`` (used by per-pod policy agents); the
prefixed labels themselves are inherited by endpoints through the label index.
"""

from __future__ import annotations

from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb

from .keyed_state import KeyedMessages
from .records import (
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_LABEL_PREFIX,
    SERVICE_ACCOUNT_PROFILE_PREFIX,
)


def _strip(prefix: str, labels: dict[str, Any]) -> dict[str, str]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): str(v) for k, v in labels.items()}


class ProfileDecoder:
    def __init__(self) -> None:
        self.namespaces: KeyedMessages[str] = KeyedMessages(
            lambda name: fb.ToDataplane(
                namespace_remove=fb.NamespaceRemove(id=fb.NamespaceID(name=name))
            )
        )
        self.service_accounts: KeyedMessages[tuple[str, str]] = KeyedMessages(
            lambda k: fb.ToDataplane(
                service_account_remove=fb.ServiceAccountRemove(
                    id=fb.ServiceAccountID(namespace=k[0], name=k[1])
                )
            )
        )

    def on_profile(self, name: str, value: dict[str, Any] | None) -> None:
        labels = ((value or {}).get("spec") or {}).get("labelsToApply") or {}
        if name.startswith(SERVICE_ACCOUNT_PROFILE_PREFIX):
            rest = name[len(SERVICE_ACCOUNT_PROFILE_PREFIX) :]
            ns, _, sa = rest.partition(".")
            if not ns or not sa:
                return
            msg = None
            if value is not None:
                msg = fb.ToDataplane(
                    service_account_update=fb.ServiceAccountUpdate(
                        id=fb.ServiceAccountID(namespace=ns, name=sa),
                        labels=_strip(SERVICE_ACCOUNT_LABEL_PREFIX, labels),
                    )
                )
            self.service_accounts.set((ns, sa), msg)
        elif name.startswith(NAMESPACE_PROFILE_PREFIX):
            ns = name[len(NAMESPACE_PROFILE_PREFIX) :]
            if not ns:
                return
            msg = None
            if value is not None:
                msg = fb.ToDataplane(
                    namespace_update=fb.NamespaceUpdate(
                        id=fb.NamespaceID(name=ns), labels=_strip(NAMESPACE_LABEL_PREFIX, labels)
                    )
                )
            self.namespaces.set(ns, msg)

    def end_flush(self) -> None:
        self.namespaces.end_flush()
        self.service_accounts.end_flush()
