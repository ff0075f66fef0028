"""Kernel owners: one per kind of kernel object, each holding desired state and a shadow of
what it believes the kernel has, writing only the difference in one batch per ``apply()``.

Every owner follows the same contract (Felix's ``iptables/``, ``ipsets/``, ``routetable/``):

- setters record intent and mark keys dirty; they never touch the kernel;
- ``apply(allow_deletes)`` writes the dirty keys in one batch; when ``allow_deletes`` is false
  (before the datastore is in sync) nothing the owner did not just write is removed;
- ``mark_resync()`` makes the next ``apply`` read the kernel back first and repair any drift;
  objects the owner recognises as its own but does not want are removed only with
  ``allow_deletes`` (mark-and-sweep);
- a failed write raises ``KernelError`` and leaves the owner marked for resync, so the driver
  can retry with backoff.
"""
