"""Built-in DTLS Connection-ID cluster (Californium's DtlsClusterConnector family).

* ``_header``: the cluster record header (forward/backward), its MAC and the forward decision,
  in C for the per-datagram path;
* ``management``: node membership over ping/pong (static, dynamic and k8s modes);
* ``k8s``: pod discovery through the Kubernetes API;
* ``monitor``: the ``/alive`` and ``/ready`` HTTP endpoints;
* ``options``: the command-line options and the ``ClusterConfig`` they produce;
* ``keys``: the cluster MAC keys from the management channel's DTLS key block.
"""
