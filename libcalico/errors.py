"""Domain errors shared by every service, client and CLI.

Domain code raises these and never imports grpc. The runtime's server interceptor maps each
class to a gRPC status code (``grpc_code``) and puts ``details()`` into trailing metadata, and
the client side turns a status back into the same class, so a CLI prints the same one-line
message whether the error was raised locally or three services away.

Messages name the resource, the field and the reason, e.g.
``IPPool(default-ipv4-ippool) spec.blockSize: 19 is out of range 20-32 for an IPv4 pool``.
"""

from __future__ import annotations


class CalicoError(Exception):
    """Base class. ``grpc_code`` is the name of a ``grpc.StatusCode`` member."""

    grpc_code = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        resource: str = "",
        field: str = "",
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.resource = resource
        self.field = field
        self.reason = reason or message

    def details(self) -> dict[str, str]:
        """Structured details carried in gRPC trailing metadata (``calico-error-*`` keys)."""
        out = {"kind": type(self).__name__, "message": self.message}
        if self.resource:
            out["resource"] = self.resource
        if self.field:
            out["field"] = self.field
        if self.reason:
            out["reason"] = self.reason
        return out

    def __str__(self) -> str:
        return self.message


class ValidationError(CalicoError):
    """Bad input: YAML, kind, field value, selector, CIDR."""

    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, reason: str, *, resource: str = "", field: str = "") -> None:
        parts = [p for p in (resource, field) if p]
        prefix = " ".join(parts)
        message = f"{prefix}: {reason}" if prefix else reason
        super().__init__(message, resource=resource, field=field, reason=reason)


class NotFoundError(CalicoError):
    grpc_code = "NOT_FOUND"


class AlreadyExistsError(CalicoError):
    grpc_code = "ALREADY_EXISTS"


class ConflictError(CalicoError):
    """A compare-and-swap lost: the resourceVersion (etcd mod revision) was stale."""

    grpc_code = "ABORTED"


class RetriesExhaustedError(ConflictError):
    """Bounded compare-and-swap retries ran out under contention."""


class ResourceExhaustedError(CalicoError):
    """No free addresses in the named pools, or a per-host block limit was reached."""

    grpc_code = "RESOURCE_EXHAUSTED"


class UnavailableError(CalicoError):
    """etcd or a peer service cannot be reached; the operation may be retried."""

    grpc_code = "UNAVAILABLE"


class CompactedError(CalicoError):
    """A watch asked for a revision etcd has compacted away; the caller must re-list."""

    grpc_code = "OUT_OF_RANGE"


class FailedPreconditionError(CalicoError):
    grpc_code = "FAILED_PRECONDITION"


ERROR_CLASSES: dict[str, type[CalicoError]] = {
    cls.__name__: cls
    for cls in (
        CalicoError,
        ValidationError,
        NotFoundError,
        AlreadyExistsError,
        ConflictError,
        RetriesExhaustedError,
        ResourceExhaustedError,
        UnavailableError,
        CompactedError,
        FailedPreconditionError,
    )
}


def error_from_details(details: dict[str, str]) -> CalicoError:
    """Rebuild the domain error a remote service raised from its ``details()``."""
    cls = ERROR_CLASSES.get(details.get("kind", ""), CalicoError)
    message = details.get("message", "unknown error")
    err = cls.__new__(cls)
    CalicoError.__init__(
        err,
        message,
        resource=details.get("resource", ""),
        field=details.get("field", ""),
        reason=details.get("reason", ""),
    )
    return err
