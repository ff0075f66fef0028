"""Lab nodes: the hook ``calico-lab up --nodes N`` calls once the control plane is healthy.

Nodes (one network namespace per host, each running the node agents: dataplane driver, BGP
driver, CNI) arrive with the CNI issue. The contract for whoever writes them:

- ``create_nodes(layout, count, report)`` makes nodes ``node-1`` .. ``node-<count>``
  idempotently (an existing node is left alone), registers each as a ``Node`` resource through
  the datastore at ``layout.target("datastore")``, starts its agents through
  ``ProcessTable(layout.root)`` with names ``<node>.<agent>`` (so ``status`` and ``down`` see
  them with no further change), and reports one line per node;
- ``delete_nodes(layout, report)`` removes every node namespace the lab made (``down`` calls
  it before stopping the control plane). Namespaces are found by their prefix, see
  ``libcalico.netns``.
"""

from __future__ import annotations

from collections.abc import Callable

from libcalico.cli.lab.control_plane import Layout

NODES_PENDING = (
    "node namespaces arrive with the CNI issue: started the control plane only "
    "(--nodes {count} noted, no nodes created)"
)


def create_nodes(layout: Layout, count: int, report: Callable[[str], None]) -> int:
    """Create ``count`` lab nodes; returns how many exist afterwards. Not built yet."""
    if count > 0:
        report(NODES_PENDING.format(count=count))
    return 0


def delete_nodes(layout: Layout, report: Callable[[str], None]) -> None:
    """Remove every lab node. Nothing to do until nodes exist."""
