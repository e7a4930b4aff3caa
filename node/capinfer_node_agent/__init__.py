"""capinfer's node agent: the one privileged process on a GPU node.

It owns every NVML ``Set*`` call (locked SM clocks, the board power limit) for the pods of
its node, authenticates each caller by a ServiceAccount token bound to a pod, authorises
only the GPUs the kubelet allocated to that pod, and gives the GPUs back their defaults
when the pod is gone.
"""
