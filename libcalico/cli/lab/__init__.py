"""``calico-lab``: etcd and the control-plane services on one machine, as background processes.

State dir (``--state-dir``, default ``$CALICO_STATE_DIR`` or ``/run/calico-lab``)::

    <state>/
      lab.json            what `up` set up: etcd endpoint and ports, the services started
      lab.lock            flock held while up/down run, so two of them never interleave
      etcd/               etcd's data dir (kept by `down`, removed by `down --purge`)
      logs/<name>.log     stdout+stderr of each process; etcd.log is etcd's own zap log
      pids/<name>.pid     "<pid> <start-time>" of each process the lab started
      sock/<name>.sock    each service's gRPC unix socket: datastore.sock, ipam.sock,
                          calc_graph.sock, policy.sock
      traces.jsonl        spans from every service (CALICO_TRACE_FILE); calicoctl adds its
                          own only when CALICO_TRACE_FILE is set (opt-in: `up` prints the
                          export line, the demo sets it for the commands it runs); then one
                          `calicoctl apply` is one trace down to each node's kernel writes,
                          printed by `calico-lab trace --last`

Modules: ``main`` (arguments, locking, what is printed), ``control_plane`` (which services,
in which order, with which environment, and health), ``processes`` (pid files, logs, signals),
``nodes`` (the ``--nodes`` hook).

Only processes recorded in ``pids/`` are ever signalled, each by its pid after checking its
start time, so ``down`` never touches anything the lab did not start.
"""
