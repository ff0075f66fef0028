"""The lab's nodes and pods: network namespaces that behave like a small cluster's hosts.

What ``calico-lab up --nodes N`` adds to the control plane (``libcalico.cli.lab``), and what
``calico-lab pod|exec|probe|ns`` work on. Modules:

- ``nodes``: node namespaces on one or two underlay segments (a router namespace between
  them with ``--two-subnets``), their Node resources, CNI config and MTU file, the default IP
  pool, and each node's supervised processes (dataplane and BGP agents, the pod server);
- ``pods``: a pod is a network namespace plus the CNI chain run for it from inside its
  node's namespace, as a container runtime would (``cni_runtime``);
- ``namespaces``: Kubernetes namespaces as Calico sees them, ``kns.<name>`` Profiles;
- ``podserver``: the small server every pod runs (TCP and UDP on 80 and 81);
- ``probe``: one connection attempt from inside a pod, bounded in time;
- ``cni_runtime``: the runtime's side of CNI (what libcni does), used by pods, tests, bench;
- ``testing``: a private control plane and plugin-run helpers for the CNI tests and bench;
- ``demo``: ``calico-lab demo`` (``scripts/demo.sh``) and ``calico-lab trace``.

State dir additions (next to the control plane's)::

    <state>/
      lab-nodes.json                 every namespace the lab made, nodes, mode, segments
      nodes/<node>/10-calico.conflist  the node's CNI config (calico + calico-ipam + portmap)
      nodes/<node>/mtu               the pod MTU (the dataplane agent keeps it up to date)
      nodes/<node>/bird/             BIRD's config, socket and log (BGP modes)
      nodes/<node>/podserver.sock    the pod server's control socket
      nodes/<node>/endpoint-status/  the driver's status file per programmed endpoint (what
                                     the plugin waits on with policy_setup_timeout_seconds)
      nodes/<node>/{pids,logs}/      the pod server's pid file and log
      pods/<ns>/<pod>.json           one pod: node, netns, container ID, labels, ports,
                                     cached CNI result (the calico plugin reads labels and
                                     ports from here: its ``pod_metadata_dir``)
      logs/cni.log                   the calico CNI plugin's log
      logs/<node>.<agent>.log        agents, in the control plane's process table
      sock/<node>.<agent>.sock       each agent's gRPC health (``calico-lab status``); the
                                     dataplane driver's /metrics is 127.0.0.1:9091 inside
                                     the node's namespace
      <name>.yaml                    the demo's policies, as applied with calicoctl

Nothing is created in the machine's own network namespace: underlays are bridges inside
namespaces of their own, and every veth is made inside a lab namespace. ``down`` deletes
exactly the namespaces listed in ``lab-nodes.json`` and the pods' namespaces, and stops only
processes with pid files of ours.
"""
