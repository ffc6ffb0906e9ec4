"""Recording mocks for the Pulumi SDK's mock runtime (`pulumi.runtime.set_mocks`).

`EngineMonitor` extends the SDK's `MockMonitor` with what the engine knows and `MockResourceArgs`
leaves out: URNs with the parent's whole type chain, `aliases` as URNs, `ignoreChanges`, parent,
dependencies, `additionalSecretOutputs`, `replaceOnChanges`, `deleteBeforeReplace`. Like the
engine, it marks `additionalSecretOutputs` secret in the state it returns, and during a preview it
returns only the inputs, so every computed output is unknown.

`RecordingMocks` records every registration (inputs with their secret paths) and fakes providers
without side effects, except pulumi-tls and pulumi-random, which produce real keys, certificates
and randomness (see `providers.py`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.output import Unknown
from pulumi.runtime import mocks as sdk_mocks
from pulumi.runtime import rpc
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.sync_await import _sync_await

from engine import providers

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def unwrap(value: Any, path: str = "", secret_paths: list[str] | None = None) -> Any:
    """Plain value with secret wrappers removed; records where secrets were."""
    if is_secret(value):
        if secret_paths is not None:
            secret_paths.append(path or "<root>")
        return unwrap(value["value"], path, None)
    if isinstance(value, dict):
        return {k: unwrap(v, f"{path}.{k}" if path else k, secret_paths) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v, f"{path}[{i}]", secret_paths) for i, v in enumerate(value)]
    return value


def has_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def drop_unknowns(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if not has_unknown(v)}


def wrap_secrets(state: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: ({SIG_KEY: SECRET_SIG, "value": v} if k in keys and not is_secret(v) else v)
            for k, v in state.items()}


@dataclass
class Registration:
    typ: str
    name: str
    urn: str
    inputs: dict[str, Any]                    # plain values (secrets unwrapped)
    secret_paths: list[str]
    parent: str
    dependencies: list[str]
    additional_secret_outputs: list[str]
    replace_on_changes: list[str]
    delete_before_replace: bool
    custom: bool
    aliases: list[str] = field(default_factory=list)   # URNs this resource was known by before
    ignore_changes: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)


class EngineMonitor(sdk_mocks.MockMonitor):
    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """As the engine forms URNs: the parent's whole qualified type chain (`a$b$type`), not
        just its last type as the SDK's mock does, and nothing for the root stack."""
        if parent:
            qualified = parent.split("::")[2]
            if qualified != "pulumi:pulumi:Stack":
                type_ = f"{qualified}${type_}"
        return "urn:pulumi:" + "::".join([pulumi.get_stack(), pulumi.get_project(), type_, name])

    def alias_urn(self, alias: Any, request: Any) -> str:
        """The URN an `aliases` entry names; a spec's unset fields are the resource's own."""
        if alias.WhichOneof("alias") == "urn":
            return alias.urn
        spec = alias.spec
        parent = "" if spec.noParent else (spec.parentUrn or request.parent)
        return self.make_urn(parent, spec.type or request.type, spec.name or request.name)

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        sdk_mocks._ensure_event_loop()
        raw = rpc.deserialize_properties(request.object, keep_unknowns=True)
        secret_paths: list[str] = []
        reg = Registration(
            typ=request.type, name=request.name, urn=urn,
            inputs=unwrap(raw, "", secret_paths), secret_paths=secret_paths,
            parent=request.parent, dependencies=list(request.dependencies),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            replace_on_changes=list(request.replaceOnChanges),
            delete_before_replace=bool(request.deleteBeforeReplace),
            custom=bool(request.custom),
            aliases=[self.alias_urn(a, request) for a in request.aliases],
            ignore_changes=list(request.ignoreChanges),
        )
        id_, state = self.mocks.register(reg)  # type: ignore[attr-defined]
        state = wrap_secrets(state, reg.additional_secret_outputs)
        obj_proto = _sync_await(rpc.serialize_properties(state, {}))
        self.resources[urn] = sdk_mocks.MockMonitor.ResourceRegistration(urn, id_, state)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_ or "", object=obj_proto)


class RecordingMocks(pulumi.runtime.Mocks):
    """Records registrations; fakes commands; real crypto/randomness for tls and random."""

    def __init__(self, preview: bool = False):
        self.preview = preview
        self.registrations: list[Registration] = []
        self._lock = threading.Lock()

    def register(self, reg: Registration) -> tuple[str, dict[str, Any]]:
        with self._lock:
            self.registrations.append(reg)
        if not reg.custom:
            return "", {}
        if self.preview or has_unknown(reg.inputs):
            # The engine previews a new resource as its inputs; every computed output is unknown.
            return "", drop_unknowns(reg.inputs)
        generate = providers.GENERATORS.get(reg.typ)
        if generate is not None:
            outputs = generate(dict(reg.inputs))
            reg.outputs = outputs
            return providers.resource_id(reg.typ, outputs), outputs
        outputs = {**reg.inputs, "stdout": "", "stderr": ""} if reg.typ.startswith("command:") else dict(reg.inputs)
        reg.outputs = outputs
        return f"{reg.name}-id", outputs

    # pulumi.runtime.Mocks interface (unused: EngineMonitor calls `register`)
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        raise NotImplementedError

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.typ == typ]

    def named(self, name: str) -> Registration:
        found = [r for r in self.registrations if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]
