"""Lab nodes: the hook ``calico-lab up --nodes N`` calls once the control plane is healthy,
and ``down`` calls before stopping it. The nodes themselves are ``libcalico.lab.nodes``:

- ``create_nodes(layout, count, report, options)`` makes nodes ``node-1`` .. ``node-<count>``
  idempotently (an existing node is left alone, a dead agent restarted), registers each as a
  ``Node`` resource, writes its CNI config and MTU file, and starts its agents through
  ``ProcessTable(layout.root)`` as ``<node>.<agent>``; one line per node is reported;
- ``delete_nodes(layout, report)`` removes every pod, node process and namespace the lab made
  (recorded in ``<state>/lab-nodes.json`` before each was made) and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from libcalico.cli.lab.control_plane import Layout

if TYPE_CHECKING:
    from libcalico.lab.nodes import NodeOptions


def create_nodes(
    layout: Layout, count: int, report: Callable[[str], None],
    options: NodeOptions | None = None,
) -> int:
    """Bring the lab to at least ``count`` nodes; returns how many exist. Raises LabError."""
    from libcalico.lab import nodes

    return nodes.create_nodes(layout, count, report, options)


def delete_nodes(layout: Layout, report: Callable[[str], None]) -> bool:
    """Remove every lab node, pod and namespace; False if something could not be removed."""
    from libcalico.lab import nodes

    return nodes.delete_nodes(layout, report)
