"""What reconcile compares a new template with: the watch's index, not a GET per object."""

from __future__ import annotations

from capinfer_operator import handlers
from capinfer_operator.builders import TEMPLATE_HASH_ANNOTATION, Target

TARGET = Target(name="resnet", namespace="ml")


def test_the_index_keeps_each_managed_deployments_template_hash() -> None:
    entry = handlers.deployment_templates(
        namespace="ml", name="resnet", annotations={TEMPLATE_HASH_ANNOTATION: "abc"}
    )
    assert entry == {("ml", "resnet"): "abc"}
    unmarked = handlers.deployment_templates(namespace="ml", name="resnet", annotations={})
    assert unmarked == {("ml", "resnet"): handlers.NOT_APPLIED}


def test_no_deployment_is_none_and_one_without_a_hash_differs_from_every_template() -> None:
    assert handlers._template_before({}, TARGET) is None
    assert handlers._template_before({("ml", "resnet"): ["abc"]}, TARGET) == "abc"
    assert handlers._template_before({("ml", "other"): ["abc"]}, TARGET) is None
    assert handlers._template_before({("ml", "resnet"): [""]}, TARGET) == handlers.NOT_APPLIED
