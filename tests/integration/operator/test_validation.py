"""Every string of the spec that reaches a command line, a path, a URL or a label is checked by
the real API server when the object is written, naming the field.

The schema's rules run on every object, including the ones no test ever sees; so besides
listed examples, hypothesis generates bad (and good) values for each field. Each value is
sent as a server-side dry run: the API server validates it fully and stores nothing.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pci_helpers import inference

from capinfer.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

GENERATED = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def api(cluster: LocalCluster, crd_installed: None) -> Iterator[client.CustomObjectsApi]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield client.CustomObjectsApi(api_client)
    finally:
        api_client.close()


def with_value(namespace: str, path: str, value: Any) -> dict[str, Any]:
    """A valid object with the field at ``path`` (dotted, under spec) set to ``value``."""
    obj = inference("checked", namespace)
    node = obj["spec"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = copy.deepcopy(value)
    return obj


def refusal(api: client.CustomObjectsApi, obj: dict[str, Any]) -> str | None:
    """The API server's message when it refuses the object, None when it accepts it."""
    try:
        api.create_namespaced_custom_object(
            "capinfer.io", "v1alpha1", obj["metadata"]["namespace"], "powercappedinferences",
            obj, dry_run="All",
        )  # fmt: skip
    except ApiException as error:
        assert error.status == 422, f"{error.status}: {error.body}"
        return str(error.body)
    return None


def assert_refused(api: client.CustomObjectsApi, namespace: str, path: str, value: Any) -> None:
    message = refusal(api, with_value(namespace, path, value))
    assert message is not None, f"spec.{path} = {value!r} was accepted"
    field = f"spec.{path}"
    assert field in message, f"the refusal of {value!r} does not name {field}: {message}"


def assert_accepted(api: client.CustomObjectsApi, namespace: str, path: str, value: Any) -> None:
    message = refusal(api, with_value(namespace, path, value))
    assert message is None, f"spec.{path} = {value!r} was refused: {message}"


# -- listed examples ----------------------------------------------------------------------------
BAD: list[tuple[str, Any]] = [
    ("triton.model", "Res Net/50"),
    ("triton.model", "../x"),
    ("triton.model", ".."),
    ("triton.model", ".hidden"),
    ("triton.model", "-rf"),
    ("triton.model", "models/resnet"),
    ("triton.model", "resnet\n50"),
    ("triton.model", "resnet?v=2"),
    ("triton.model", "résnet"),
    ("triton.model", "x" * 201),
    ("triton.image", "nvcr.io/NVIDIA/tritonserver:24.08-py3"),
    ("triton.image", "https://nvcr.io/nvidia/tritonserver"),
    ("triton.image", "tritonserver:24.08 py3"),
    ("triton.image", "tritonserver@sha256:xyz"),
    ("triton.image", "--privileged"),
    ("triton.args", ["--model-repository", "/elsewhere"]),
    ("triton.args", ["--log-verbose 1"]),
    ("triton.args", ["-v"]),
    ("triton.args", ["--log-file=/tmp/x\n--exit-on-error=false"]),
    ("triton.modelRepository.uri", "http://models.example/repo"),
    ("triton.modelRepository.uri", "s3://bucket/my models"),
    ("triton.modelRepository.uri", "models/relative"),
    ("triton.modelRepository.uri", "/models/../etc"),
    ("triton.modelRepository.uri", "s3://bucket/../other"),
    ("triton.env", [{"name": "1ABC", "value": "x"}]),
    ("triton.env", [{"name": "A=B", "value": "x"}]),
    ("triton.env", [{"value": "no name"}]),
    ("sidecar.image", "capinfer:latest\n"),
    ("sidecar.image", ""),
    ("nodeSelector", {"bad key": "x"}),
    ("nodeSelector", {"nvidia.com/gpu.product": "H100 80GB"}),
    ("nodeSelector", {"zone": "x" * 64}),
    ("priorityClassName", "High_Priority"),
]


@pytest.mark.parametrize(("path", "value"), BAD, ids=[f"{p}={v!r}"[:60] for p, v in BAD])
def test_the_api_server_refuses_strings_that_would_break_a_command_path_or_label(
    api: client.CustomObjectsApi, namespace: str, path: str, value: Any
) -> None:
    assert_refused(api, namespace, path, value)


def test_a_bad_claim_and_sub_path_are_refused(api: client.CustomObjectsApi, namespace: str) -> None:
    for claim, field in [
        ({"claimName": "My_Claim"}, "claimName"),
        ({"claimName": "models", "subPath": "/abs"}, "subPath"),
        ({"claimName": "models", "subPath": "../up"}, "subPath"),
        ({"claimName": "models", "subPath": "a/../../b"}, "subPath"),
    ]:
        obj = with_value(namespace, "triton.modelRepository", {"persistentVolumeClaim": claim})
        message = refusal(api, obj)
        assert message is not None, f"{claim} was accepted"
        assert f"spec.triton.modelRepository.persistentVolumeClaim.{field}" in message, message


GOOD: list[tuple[str, Any]] = [
    ("triton.model", "resnet50"),
    ("triton.model", "ResNet-50_v1.5"),
    ("triton.model", "_ensemble"),
    ("triton.image", "nvcr.io/nvidia/tritonserver:24.08-py3"),
    ("triton.image", "localhost:5000/team/triton_server:v2.51.0"),
    ("triton.image", "tritonserver@sha256:" + "a" * 64),
    ("triton.image", "registry.example.com/triton:24.08@sha256:" + "0" * 64),
    ("triton.args", ["--log-verbose=1", "--backend-config=python,shm-default-byte-size=1048576"]),
    ("triton.args", ["--strict-readiness=false", "--exit-on-error"]),
    ("triton.modelRepository.uri", "s3://https://minio.example:9000/bucket/models"),
    ("triton.modelRepository.uri", "gs://bucket/models"),
    ("triton.modelRepository.uri", "/opt/models"),
    ("triton.env", [{"name": "CUDA_VISIBLE_DEVICES", "value": "a b c"}]),
    ("sidecar.image", "capinfer:test"),
    ("nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "zone": ""}),
    ("priorityClassName", "system-node-critical"),
]


@pytest.mark.parametrize(("path", "value"), GOOD, ids=[f"{p}={v!r}"[:60] for p, v in GOOD])
def test_the_api_server_accepts_what_triton_and_kubernetes_take(
    api: client.CustomObjectsApi, namespace: str, path: str, value: Any
) -> None:
    assert_accepted(api, namespace, path, value)


def test_a_claim_with_a_sub_path_is_accepted(api: client.CustomObjectsApi, namespace: str) -> None:
    claim = {"claimName": "models.v2", "subPath": "team/repo"}
    obj = with_value(namespace, "triton.modelRepository", {"persistentVolumeClaim": claim})
    assert refusal(api, obj) is None


# -- generated values ---------------------------------------------------------------------------
MODEL_CHARS = string.ascii_letters + string.digits + "_.-"
# What breaks a folder name, a path, a URL or a command line: separators, spaces and control
# characters, URL and shell metacharacters, anything beyond ASCII.
BREAKING = st.sampled_from(list("/\\ \t\n\r:*?\"'<>|#%&;$`()[]{}=@!,+~^")) | st.characters(
    min_codepoint=0x80, max_codepoint=0x2FFF
)
model_part = st.text(MODEL_CHARS, max_size=12)

bad_models = st.one_of(
    st.builds(lambda a, bad, b: f"{a}{bad}{b}", model_part, BREAKING, model_part),
    st.builds(lambda lead, rest: f"{lead}{rest}", st.sampled_from([".", "-"]), model_part),
    st.text(MODEL_CHARS, min_size=201, max_size=260),
)
good_models = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}\Z")


@GENERATED
@given(name=bad_models)
def test_generated_bad_model_names_are_refused(
    api: client.CustomObjectsApi, namespace: str, name: str
) -> None:
    assert_refused(api, namespace, "triton.model", name)


@GENERATED
@given(name=good_models)
def test_generated_folder_names_are_accepted_as_models(
    api: client.CustomObjectsApi, namespace: str, name: str
) -> None:
    assert_accepted(api, namespace, "triton.model", name)


component = st.from_regex(r"\A[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}\Z")
good_images = st.builds(
    lambda registry, path, tag: f"{registry}{'/'.join(path)}{tag}",
    st.sampled_from(["", "nvcr.io/", "localhost:5000/", "registry.example.com:443/"]),
    st.lists(component, min_size=1, max_size=3),
    st.sampled_from(["", ":24.08-py3", ":v1", ":latest", "@sha256:" + "f" * 64]),
)
bad_images = st.builds(
    lambda image, bad, at: image[:at] + bad + image[at:],
    good_images,
    st.sampled_from([*" \t\n\"'$;|&`<>\\", "://", "//", "@", "#"]),
    st.integers(min_value=0, max_value=40),
)


@GENERATED
@given(image=bad_images)
def test_generated_bad_image_references_are_refused(
    api: client.CustomObjectsApi, namespace: str, image: str
) -> None:
    assert_refused(api, namespace, "triton.image", image)
    assert_refused(api, namespace, "sidecar.image", image)


@GENERATED
@given(image=good_images)
def test_generated_image_references_are_accepted(
    api: client.CustomObjectsApi, namespace: str, image: str
) -> None:
    assert_accepted(api, namespace, "triton.image", image)


bad_args = st.one_of(
    st.builds(lambda a, bad, b: f"--{a}{bad}{b}", st.from_regex(r"\A[a-z]{1,10}\Z"),
              st.sampled_from([*" \t\n/\\:;$", "A", "_"]), st.text(MODEL_CHARS, max_size=8)),
    st.text(string.ascii_letters + string.digits + "/=.", min_size=1, max_size=20).filter(
        lambda arg: not arg.startswith("--")
    ),
    st.builds(lambda name, value, ctl: f"--{name}={value}{ctl}", st.from_regex(r"\A[a-z]{1,10}\Z"),
              st.text(MODEL_CHARS, max_size=8), st.sampled_from(["\n", "\r", "\t", "\x1b"])),
)  # fmt: skip


@GENERATED
@given(arg=bad_args)
def test_generated_bad_triton_args_are_refused(
    api: client.CustomObjectsApi, namespace: str, arg: str
) -> None:
    assert_refused(api, namespace, "triton.args", ["--log-verbose=1", arg])
