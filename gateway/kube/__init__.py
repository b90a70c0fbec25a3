"""The Kubernetes API as jobgate uses it, shared by the Kubernetes executor (worker Jobs and
pods) and the Lease membership (replica presence, the leader): the seam (``base.KubeApi``)
and its real client (``api``), raw objects (``objects``), and the naming rules every object
jobgate makes on Kubernetes follows (``names``)."""
