"""``capinfer cluster up|down|status``: the local control plane with fake GPU nodes."""

from __future__ import annotations

import argparse
import sys
import time

from capinfer.localcluster.cluster import LocalCluster


def _progress(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cluster = LocalCluster(args.name)
    cluster.up(_progress, timeout_s=args.timeout)
    _progress(f"ready in {time.monotonic() - started:.1f} s")
    print(cluster.kubeconfig)
    return 0


def _down(args: argparse.Namespace) -> int:
    LocalCluster(args.name).down(_progress)
    return 0


def _status(args: argparse.Namespace) -> int:
    status = LocalCluster(args.name).status()
    if not status.daemons:
        print(f"cluster {status.name!r}: not running")
        return 1
    print(f"cluster {status.name!r}: {'running' if status.running else 'DEGRADED'}")
    print(f"  api server: {status.apiserver_url}")
    print(f"  kubeconfig: {status.kubeconfig}")
    for name, alive in status.daemons.items():
        print(f"  {name:<24} {'running' if alive else 'STOPPED'}")
    return 0 if status.running else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="a local Kubernetes control plane with fake GPU nodes",
        description=(
            "A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,"
            " kube-scheduler, built from source on first use) with kwok-managed fake nodes"
            " that advertise nvidia.com/gpu. Everything binds to 127.0.0.1 on free ports."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up", help="build what is missing, start the cluster, print the kubeconfig path"
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait (default 180)")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="stop every process of the cluster, delete its state")
    down.set_defaults(handler=_down)
    status = actions.add_parser("status", help="show whether the cluster's processes run")
    status.set_defaults(handler=_status)
    for sub in (up, down, status):
        sub.add_argument("--name", default="capinfer", help="cluster name (default: capinfer)")
