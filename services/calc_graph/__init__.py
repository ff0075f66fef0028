"""calc_graph: Felix's calculation graph as one service for the whole cluster.

The datastore syncer feeds one shared graph; each node's dataplane driver subscribes with
``Sync(node)`` and receives Felix's own ``ToDataplane`` messages: ConfigUpdate and
Encapsulation, a snapshot in dependency order, InSync, then deltas. ``BGPSync(node)`` gives a
node's BGP driver its view; ``Report`` takes status back. ``graph.build_graph`` wires the stages
and draws the map.

Designed for 1,000 nodes, 250,000 workload endpoints, 10,000 policies and 1,000 network sets:

- cluster-wide stages (label index, IP-set membership, routes, VTEPs, hosts, pools, config)
  are computed once; per-node state (active policies, endpoint tiers, what was sent) exists
  only for nodes with a subscriber;
- endpoints with equal labels share a label set, and selectors are matched per label set
  through hint buckets (the required label with the most distinct values), never endpoint x
  selector;
- an IP set's members are kept once and refcounted by the nodes that need it; its delta, its
  full membership, the routes most nodes see and the cluster-wide tables are each one message
  per flush shared by every node;
- a slow subscriber is cut off (bounded queue) instead of stalling the graph.

``bench/calc_graph.py`` measures it; ``tests/unit/fake_dataplane.py`` is the strict consumer the
tests replay every stream into.
"""
