"""CNI plugins: ``calico`` and ``calico-ipam``, and the spec helpers they share."""
