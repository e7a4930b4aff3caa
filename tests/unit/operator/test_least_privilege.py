"""No object can make the operator render a privileged or capability-holding container.

Hypothesis draws objects that set every field a user controls that reaches the pod
(sidecar image and resources, Triton's env, args and resources, scheduling, the model
repository, clock control) to arbitrary values; whatever the operator renders runs every
container non-root, with all capabilities dropped, no privilege escalation, RuntimeDefault
seccomp, no host namespaces and no hostPath volume.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capinfer_operator.builders import SpecError, Target, build_children

TARGET = Target(name="pci", namespace="tenant")
text = st.text(min_size=1, max_size=12)
resources = st.dictionaries(  # what the schema admits: core/v1 ResourceRequirements
    st.sampled_from(["limits", "requests"]),
    st.dictionaries(st.sampled_from(["cpu", "memory", "hugepages-2Mi"]), text, max_size=2),
)
escalations = st.fixed_dictionaries(
    {},
    optional={
        "privileged": st.just(True),
        "runAsUser": st.just(0),
        "capabilities": st.just({"add": ["SYS_ADMIN"]}),
        "hostNetwork": st.just(True),
        "hostPID": st.just(True),
        "securityContext": st.just({"privileged": True}),
    },
)


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    env_names = st.sampled_from(["A", "LD_PRELOAD", "NVIDIA_VISIBLE_DEVICES", "HOME"])
    return {
        "replicas": draw(st.integers(0, 4)),
        "gpusPerReplica": draw(st.integers(1, 8)),
        "triton": {
            "image": draw(text),
            "model": "m",
            "modelRepository": draw(
                st.sampled_from(
                    [
                        {"uri": "s3://b/m"},
                        {"persistentVolumeClaim": {"claimName": "c"}},
                        {"volume": {"hostPath": {"path": "/"}}},
                        {"volume": {"nfs": {"server": "n", "path": "/"}}},
                    ]
                )
            ),
            "args": draw(st.lists(text, max_size=3)),
            "env": draw(st.lists(st.builds(lambda n: {"name": n, "value": "x"}, env_names))),
            "resources": draw(resources),
            **draw(escalations),
        },
        "sidecar": {
            "image": draw(text),
            "resources": draw(resources),
            "logLevel": draw(text),
            **draw(escalations),
        },
        "power": {"capWatts": 100, "clockControl": {"enabled": draw(st.booleans())}},
        "nodeSelector": draw(st.dictionaries(text, text, max_size=2)),
        "tolerations": draw(st.lists(st.dictionaries(text, text, max_size=2), max_size=2)),
        **draw(escalations),
    }


@settings(max_examples=300, deadline=None)
@given(objects(), st.sampled_from(["", "tcp://capinfer-node-agent.capinfer-system.svc:9404"]))
def test_whatever_the_object_every_container_is_unprivileged(
    spec: dict[str, Any], agent: str
) -> None:
    try:
        children = build_children(TARGET, spec, "ghcr.io/capinfer/capinfer:0.1.0", agent)
    except SpecError:
        return  # refused with a message naming the field: nothing rendered
    (deployment,) = [c for c in children if c["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    assert pod["automountServiceAccountToken"] is False
    assert all("hostPath" not in volume for volume in pod["volumes"])
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(
            e.get("name") in ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
            for e in container.get("env", [])
            if container["name"] == "triton"
        )
