"""The test node agent: test infrastructure standing in for a kubelet, never product code.

It runs the pods bound to its Node as local processes (no containers: see image_map.py
and environment.py for how images and mounts are stood in for). Started by the test
harness as ``python -m tests.cluster.node_agent``.
"""
