#!/usr/bin/env python3
"""Deploy infra/template.yaml into a running moto server, so the local stack is the template.

    .venv/bin/python infra/local_deploy.py --endpoint http://127.0.0.1:PORT \
        [--out .local/stack.json] [--stack-name assetsync] [--param Key=Value ...] [--recreate]

Steps:
  1. Translate SAM -> CloudFormation (infra/translate.py; moto's CloudFormation has no SAM
     transform), with CodeUri pointing at a placeholder zip uploaded to moto's S3 (function code
     never runs inside moto: its Lambda needs Docker; tests run the handlers in-process).
  2. CreateStack and wait. If the stack already exists with the same template and parameters it
     is reused, so running this twice is harmless; a changed template needs --recreate.
  3. moto's CloudFormation silently skips resource types it does not implement (it logs "No Moto
     CloudFormation support for ..." and still reports CREATE_COMPLETE). Every template resource
     that is not among the stack's created resources is created here through the service API,
     from the template's own properties with Ref/Fn::GetAtt/Fn::Sub/Fn::Join/... resolved against
     the stack. Handled: AWS::SecretsManager::Secret, AWS::Scheduler::Schedule,
     AWS::Scheduler::ScheduleGroup, AWS::CloudWatch::Alarm, AWS::Lambda::EventInvokeConfig. Any other skipped type is an error (add a handler below).
  4. Property gaps of created resources are closed from the template too (DynamoDB TTL and PITR,
     which moto's CloudFormation ignores).
  5. Print one JSON document (also written to --out): endpoint, stack name, outputs, each
     function's environment as moto's Lambda reports it, secret names and schedules.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent
sys.path.insert(0, str(INFRA_DIR))

import translate  # noqa: E402  (infra/translate.py)

REGION = "us-east-1"
ARTIFACT_BUCKET = "assetsync-local-artifacts"
REQUIRED_OUTPUTS = (
    "TableName",
    "RecordsQueueUrl",
    "FetchQueueUrl",
    "DeadLetterQueueUrl",
    "FetcherFunctionName",
    "ImporterFunctionName",
)
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


def log(msg: str) -> None:
    print(f"local_deploy: {msg}", file=sys.stderr, flush=True)


class DeployError(Exception):
    pass


# --------------------------------------------------------------------------- AWS clients


class Aws:
    def __init__(self, endpoint: str):
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self._session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=REGION,
        )
        self._config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        self._clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(service, endpoint_url=self.endpoint, config=self._config)
        return self._clients[service]


def error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


# --------------------------------------------------------------------------- intrinsics


class Resolver:
    """Resolves CloudFormation intrinsics against a deployed (moto) stack.

    Values come from the stack itself: parameter values from DescribeStacks, physical ids from
    ListStackResources, attributes from the owning service's API. Nothing is hard-coded per
    resource; a type whose attribute is not implemented here fails with a clear message.
    """

    def __init__(self, aws: Aws, template: dict[str, Any], stack: dict[str, Any], physical: dict[str, str]):
        self.aws = aws
        self.template = template
        self.resources: dict[str, Any] = template.get("Resources", {})
        self.physical = dict(physical)  # logical id -> physical id (Ref value)
        self.attrs: dict[tuple[str, str], Any] = {}
        self.params = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}
        for name, spec in template.get("Parameters", {}).items():
            if name not in self.params and "Default" in spec:
                self.params[name] = str(spec["Default"])
        stack_id = stack["StackId"]  # arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/UUID
        parts = stack_id.split(":")
        self.pseudo = {
            "AWS::StackName": stack["StackName"],
            "AWS::StackId": stack_id,
            "AWS::Region": parts[3] if len(parts) > 4 else REGION,
            "AWS::AccountId": parts[4] if len(parts) > 4 else "123456789012",
            "AWS::Partition": parts[1] if len(parts) > 4 else "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.on_missing: Callable[[str], None] | None = None  # creates a skipped resource on demand
        self._conditions: dict[str, bool] = {}

    # -- public
    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            out = [self.resolve(v) for v in value]
            return [v for v in out if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            fn = _INTRINSICS.get(key)
            if fn is not None:
                return fn(self, arg)
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.physical:
            return self.physical[name]
        if name in self.resources and self.on_missing is not None:
            self.on_missing(name)
            if name in self.physical:
                return self.physical[name]
        raise DeployError(f"cannot resolve Ref {name!r}: not a parameter, pseudo parameter or created resource")

    def get_att(self, logical: str, attr: str) -> Any:
        if (logical, attr) in self.attrs:
            return self.attrs[(logical, attr)]
        if logical not in self.physical and logical in self.resources and self.on_missing is not None:
            self.on_missing(logical)
            if (logical, attr) in self.attrs:
                return self.attrs[(logical, attr)]
        if logical not in self.physical:
            raise DeployError(f"cannot resolve Fn::GetAtt {logical}.{attr}: {logical} was not created")
        rtype = self.resources[logical]["Type"]
        getter = _GETATT.get(rtype)
        if getter is None:
            raise DeployError(f"Fn::GetAtt on {rtype} ({logical}.{attr}) is not implemented in local_deploy.py")
        value = getter(self, self.physical[logical], attr)
        if value is None:
            raise DeployError(f"Fn::GetAtt {logical}.{attr}: attribute {attr!r} of {rtype} not available")
        self.attrs[(logical, attr)] = value
        return value

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.template.get("Conditions", {})[name]))
        return self._conditions[name]


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


_NO_VALUE = _NoValue()


def _fn_ref(r: Resolver, arg: Any) -> Any:
    return r.ref(arg)


def _fn_getatt(r: Resolver, arg: Any) -> Any:
    if isinstance(arg, str):
        logical, attr = arg.split(".", 1)
    else:
        logical, attr = arg[0], r.resolve(arg[1])
    return r.get_att(logical, attr)


_SUB_RE = re.compile(r"\$\{(!?)([^}]+)\}")


def _fn_sub(r: Resolver, arg: Any) -> str:
    if isinstance(arg, str):
        text, local = arg, {}
    else:
        text, local = arg[0], {k: r.resolve(v) for k, v in (arg[1] or {}).items()}

    def repl(m: re.Match[str]) -> str:
        if m.group(1) == "!":  # ${!Literal}
            return "${" + m.group(2) + "}"
        name = m.group(2).strip()
        if name in local:
            return str(local[name])
        if "." in name and not name.startswith("AWS::"):
            logical, attr = name.split(".", 1)
            return str(r.get_att(logical, attr))
        return str(r.ref(name))

    return _SUB_RE.sub(repl, text)


def _fn_join(r: Resolver, arg: Any) -> str:
    sep, items = arg
    items = r.resolve(items)
    return str(sep).join(str(i) for i in items)


def _fn_select(r: Resolver, arg: Any) -> Any:
    index, items = r.resolve(arg[0]), r.resolve(arg[1])
    return items[int(index)]


def _fn_split(r: Resolver, arg: Any) -> list[str]:
    sep, text = arg[0], r.resolve(arg[1])
    return str(text).split(sep)


def _fn_if(r: Resolver, arg: Any) -> Any:
    cond, yes, no = arg
    return r.resolve(yes if r.condition(cond) else no)


def _fn_equals(r: Resolver, arg: Any) -> bool:
    a, b = (r.resolve(x) for x in arg)
    return str(a) == str(b)


def _fn_not(r: Resolver, arg: Any) -> bool:
    return not bool(r.resolve(arg[0]))


def _fn_and(r: Resolver, arg: Any) -> bool:
    return all(bool(r.resolve(x)) for x in arg)


def _fn_or(r: Resolver, arg: Any) -> bool:
    return any(bool(r.resolve(x)) for x in arg)


def _fn_condition(r: Resolver, arg: Any) -> bool:
    return r.condition(arg)


def _fn_base64(r: Resolver, arg: Any) -> str:
    return base64.b64encode(str(r.resolve(arg)).encode()).decode()


def _fn_to_json_string(r: Resolver, arg: Any) -> str:
    return json.dumps(r.resolve(arg), separators=(",", ":"))


def _fn_find_in_map(r: Resolver, arg: Any) -> Any:
    name, k1, k2 = (r.resolve(x) for x in arg[:3])
    return r.template["Mappings"][name][k1][k2]


_INTRINSICS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": _fn_ref,
    "Fn::GetAtt": _fn_getatt,
    "Fn::Sub": _fn_sub,
    "Fn::Join": _fn_join,
    "Fn::Select": _fn_select,
    "Fn::Split": _fn_split,
    "Fn::If": _fn_if,
    "Fn::Equals": _fn_equals,
    "Fn::Not": _fn_not,
    "Fn::And": _fn_and,
    "Fn::Or": _fn_or,
    "Condition": _fn_condition,
    "Fn::Base64": _fn_base64,
    "Fn::ToJsonString": _fn_to_json_string,
    "Fn::FindInMap": _fn_find_in_map,
}


# Fn::GetAtt per resource type, read back from the owning service (physical id = Ref value).
def _att_lambda(r: Resolver, pid: str, attr: str) -> Any:
    cfg = r.aws("lambda").get_function_configuration(FunctionName=pid)
    return {"Arn": cfg.get("FunctionArn")}.get(attr)


def _att_role(r: Resolver, pid: str, attr: str) -> Any:
    role = r.aws("iam").get_role(RoleName=pid)["Role"]
    return {"Arn": role.get("Arn"), "RoleId": role.get("RoleId")}.get(attr)


def _att_queue(r: Resolver, pid: str, attr: str) -> Any:
    attrs = r.aws("sqs").get_queue_attributes(QueueUrl=pid, AttributeNames=["QueueArn"])["Attributes"]
    return {"Arn": attrs.get("QueueArn"), "QueueUrl": pid, "QueueName": pid.rstrip("/").rsplit("/", 1)[-1]}.get(attr)


def _att_table(r: Resolver, pid: str, attr: str) -> Any:
    table = r.aws("dynamodb").describe_table(TableName=pid)["Table"]
    return {"Arn": table.get("TableArn"), "StreamArn": table.get("LatestStreamArn")}.get(attr)


def _att_log_group(r: Resolver, pid: str, attr: str) -> Any:
    for group in r.aws("logs").describe_log_groups(logGroupNamePrefix=pid)["logGroups"]:
        if group["logGroupName"] == pid:
            return {"Arn": group.get("arn")}.get(attr)
    return None


def _att_schedule(r: Resolver, pid: str, attr: str) -> Any:
    return {"Arn": r.aws("scheduler").get_schedule(Name=pid).get("Arn")}.get(attr)


_GETATT: dict[str, Callable[[Resolver, str, str], Any]] = {
    "AWS::Lambda::Function": _att_lambda,
    "AWS::IAM::Role": _att_role,
    "AWS::SQS::Queue": _att_queue,
    "AWS::DynamoDB::Table": _att_table,
    "AWS::Logs::LogGroup": _att_log_group,
    "AWS::Scheduler::Schedule": _att_schedule,
}


# --------------------------------------------------------------------------- skipped resources


def create_secret(r: Resolver, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    sm = r.aws("secretsmanager")
    name = props.get("Name") or f"{r.pseudo['AWS::StackName']}-{logical}"
    if "GenerateSecretString" in props and "SecretString" not in props:
        raise DeployError(f"{logical}: GenerateSecretString is not supported locally; give a SecretString")
    try:
        existing = sm.describe_secret(SecretId=name)
        # Like CloudFormation with an unchanged template: never overwrite a value someone put.
        arn = existing["ARN"]
        log(f"secret {name} exists; value left as it is")
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "ResourceNotFoundException":
            raise
        kwargs: dict[str, Any] = {"Name": name}
        for key in ("Description", "SecretString", "KmsKeyId", "Tags"):
            if key in props:
                kwargs[key] = props[key]
        arn = sm.create_secret(**kwargs)["ARN"]
        log(f"secret {name} created from template resource {logical}")
    r.physical[logical] = arn  # Ref of a secret is its ARN
    r.attrs[(logical, "Id")] = arn
    return {"kind": "secret", "name": name, "arn": arn}


_SCHEDULE_KEYS = (
    "Description",
    "ScheduleExpression",
    "ScheduleExpressionTimezone",
    "FlexibleTimeWindow",
    "Target",
    "State",
    "StartDate",
    "EndDate",
    "GroupName",
    "KmsKeyArn",
    "ActionAfterCompletion",
)


def create_schedule(r: Resolver, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    sch = r.aws("scheduler")
    name = props.get("Name") or f"{r.pseudo['AWS::StackName']}-{logical}"[:64]
    kwargs: dict[str, Any] = {"Name": name}
    for key in _SCHEDULE_KEYS:
        if key in props:
            kwargs[key] = props[key]
    kwargs.setdefault("FlexibleTimeWindow", {"Mode": "OFF"})
    group = props.get("GroupName")
    try:
        sch.get_schedule(Name=name, **({"GroupName": group} if group else {}))
        exists = True
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "ResourceNotFoundException":
            raise
        exists = False
    if exists:  # a schedule is configuration: the template wins, as a stack update would
        sch.update_schedule(**kwargs)
        log(f"schedule {name} updated from template resource {logical}")
    else:
        sch.create_schedule(**kwargs)
        log(f"schedule {name} created from template resource {logical}")
    r.physical[logical] = name  # Ref of a schedule is its name
    raw_input = props.get("Target", {}).get("Input")
    try:
        parsed = json.loads(raw_input) if isinstance(raw_input, str) else raw_input
    except json.JSONDecodeError:
        parsed = raw_input
    return {
        "kind": "schedule",
        "name": name,
        "input": parsed,
        "state": props.get("State", "ENABLED"),
        "schedule_expression": props.get("ScheduleExpression"),
        "timezone": props.get("ScheduleExpressionTimezone", "UTC"),
        "target_arn": props.get("Target", {}).get("Arn"),
        "logical_id": logical,
    }


def create_schedule_group(r: Resolver, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    sch = r.aws("scheduler")
    name = props.get("Name") or f"{r.pseudo['AWS::StackName']}-{logical}"[:64]
    try:
        sch.get_schedule_group(Name=name)
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "ResourceNotFoundException":
            raise
        sch.create_schedule_group(Name=name)
    r.physical[logical] = name
    return {"kind": "schedule_group", "name": name}


def create_alarm(r: Resolver, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    """A CloudWatch alarm, as the template declares it (PutMetricAlarm is an upsert)."""
    cw = r.aws("cloudwatch")
    name = props.get("AlarmName") or f"{r.pseudo['AWS::StackName']}-{logical}"
    kwargs: dict[str, Any] = {"AlarmName": name}
    for key in (
        "AlarmDescription", "ActionsEnabled", "AlarmActions", "OKActions", "InsufficientDataActions",
        "MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Dimensions", "Period", "Unit",
        "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator",
        "TreatMissingData", "Metrics",
    ):
        if key in props:
            kwargs[key] = props[key]
    for key in ("Threshold",):
        if key in kwargs:
            kwargs[key] = float(kwargs[key])
    for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if key in kwargs:
            kwargs[key] = int(kwargs[key])
    cw.put_metric_alarm(**kwargs)
    log(f"alarm {name} put from template resource {logical}")
    r.physical[logical] = name  # Ref of an alarm is its name
    return {
        "kind": "alarm",
        "name": name,
        "namespace": props.get("Namespace"),
        "metric": props.get("MetricName"),
        "dimensions": props.get("Dimensions", []),
        "threshold": float(props.get("Threshold", 0)),
        "logical_id": logical,
    }


def create_event_invoke_config(r: Resolver, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    """A function's asynchronous-invocation config (retries, on-failure destination)."""
    lam = r.aws("lambda")
    kwargs: dict[str, Any] = {"FunctionName": props["FunctionName"]}
    if props.get("Qualifier") and props["Qualifier"] != "$LATEST":
        kwargs["Qualifier"] = props["Qualifier"]
    for key in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds"):
        if key in props:
            kwargs[key] = int(props[key])
    if "DestinationConfig" in props:
        kwargs["DestinationConfig"] = props["DestinationConfig"]
    lam.put_function_event_invoke_config(**kwargs)
    log(f"event invoke config of {props['FunctionName']} put from template resource {logical}")
    r.physical[logical] = props["FunctionName"]
    return {
        "kind": "event_invoke_config",
        "function": props["FunctionName"],
        "destination_config": props.get("DestinationConfig"),
        "maximum_retry_attempts": props.get("MaximumRetryAttempts"),
        "logical_id": logical,
    }


SKIPPED_HANDLERS: dict[str, Callable[[Resolver, str, dict[str, Any]], dict[str, Any]]] = {
    "AWS::SecretsManager::Secret": create_secret,
    "AWS::Scheduler::Schedule": create_schedule,
    "AWS::Scheduler::ScheduleGroup": create_schedule_group,
    "AWS::CloudWatch::Alarm": create_alarm,
    "AWS::Lambda::EventInvokeConfig": create_event_invoke_config,
}


def fill_skipped(r: Resolver, skipped: list[str]) -> list[dict[str, Any]]:
    """Create every skipped resource via its service API, dependencies first."""
    created: dict[str, dict[str, Any]] = {}
    in_progress: set[str] = set()

    def ensure(logical: str) -> None:
        if logical in created:
            return
        if logical not in skipped:
            raise DeployError(f"{logical} is referenced but was neither created by the stack nor skipped")
        if logical in in_progress:
            raise DeployError(f"circular reference through {logical}")
        in_progress.add(logical)
        resource = r.resources[logical]
        for dep in _as_list(resource.get("DependsOn")):
            if dep in skipped:
                ensure(dep)
        handler = SKIPPED_HANDLERS[resource["Type"]]
        if "Condition" in resource and not r.condition(resource["Condition"]):
            created[logical] = {"kind": "condition-false", "logical_id": logical}
        else:
            props = r.resolve(resource.get("Properties", {}))
            created[logical] = handler(r, logical, props)
        in_progress.discard(logical)

    r.on_missing = ensure
    for logical in skipped:
        ensure(logical)
    r.on_missing = None
    return [created[lid] for lid in skipped]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------- property gaps


def close_property_gaps(r: Resolver) -> list[str]:
    """moto's CloudFormation creates some resources without some of their properties."""
    done: list[str] = []
    ddb = r.aws("dynamodb")
    for logical, resource in r.resources.items():
        if resource.get("Type") != "AWS::DynamoDB::Table" or logical not in r.physical:
            continue
        table = r.physical[logical]
        props = r.resolve(resource.get("Properties", {}))
        ttl = props.get("TimeToLiveSpecification")
        if ttl and str(ttl.get("Enabled")).lower() == "true":
            status = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
            if status.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                ddb.update_time_to_live(
                    TableName=table,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
                )
                done.append(f"{logical}: TTL on {ttl['AttributeName']}")
        pitr = props.get("PointInTimeRecoverySpecification")
        if pitr and str(pitr.get("PointInTimeRecoveryEnabled")).lower() == "true":
            desc = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
            if desc.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") != "ENABLED":
                ddb.update_continuous_backups(
                    TableName=table,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
                done.append(f"{logical}: point-in-time recovery")
    for item in done:
        log(f"applied what moto's CloudFormation skipped: {item}")
    return done


def pause_event_source_mappings(r: Resolver) -> list[str]:
    """Disable the SQS event source mappings inside moto.

    moto cannot run function code (that needs Docker). With a mapping enabled, every SendMessage
    makes moto receive the message for the function, fail, and release it: each send burns one of
    the message's receives toward the DLQ. Locally the CLI and the tests play the mapping's part
    (they drain the queues into the handlers in-process), so the mappings stay, disabled.
    """
    lam = r.aws("lambda")
    paused: list[str] = []
    for esm in lam.list_event_source_mappings().get("EventSourceMappings", []):
        if esm.get("State") != "Disabled":
            lam.update_event_source_mapping(UUID=esm["UUID"], Enabled=False)
            paused.append(esm.get("EventSourceArn", esm["UUID"]))
    for arn in paused:
        log(f"paused event source mapping of {arn} (moto cannot invoke Lambda code; the local runner drains it)")
    return paused


# --------------------------------------------------------------------------- stack


def placeholder_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        z.writestr(info, "#!/bin/sh\necho 'assetsync placeholder: handlers run in-process locally' >&2\nexit 1\n")
    return buf.getvalue()


def upload_code(aws: Aws, code_uris: dict[str, str]) -> None:
    s3 = aws("s3")
    try:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    body = placeholder_zip()
    for uri in code_uris.values():
        bucket, key = uri[len("s3://") :].split("/", 1)
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def wait_stack(aws: Aws, name: str, timeout: float = 120.0) -> dict[str, Any]:
    cf = aws("cloudformation")
    deadline = time.monotonic() + timeout
    while True:
        stack = cf.describe_stacks(StackName=name)["Stacks"][0]
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
                events = cf.describe_stack_events(StackName=name).get("StackEvents", [])
                reasons = [
                    f"{e.get('LogicalResourceId')}: {e.get('ResourceStatus')} {e.get('ResourceStatusReason', '')}"
                    for e in events
                    if "FAILED" in e.get("ResourceStatus", "")
                ]
                raise DeployError(f"stack {name} ended in {status}: {stack.get('StackStatusReason')}; " + "; ".join(reasons))
            return stack
        if time.monotonic() > deadline:
            raise DeployError(f"stack {name} still {status} after {timeout:.0f}s")
        time.sleep(0.5)


def find_stack(aws: Aws, name: str) -> dict[str, Any] | None:
    try:
        stacks = aws("cloudformation").describe_stacks(StackName=name)["Stacks"]
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) == "ValidationError":
            return None
        raise
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def deploy_stack(
    aws: Aws, name: str, template: dict[str, Any], params: dict[str, str], recreate: bool
) -> dict[str, Any]:
    cf = aws("cloudformation")
    body = json.dumps(template, sort_keys=True)
    cfn_params = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(params.items())]
    effective = {k: str(v["Default"]) for k, v in template.get("Parameters", {}).items() if "Default" in v}
    effective.update(params)
    existing = find_stack(aws, name)
    if existing is not None and not recreate:
        deployed_body = cf.get_template(StackName=name)["TemplateBody"]
        if isinstance(deployed_body, dict):
            deployed_body = json.dumps(deployed_body)
        deployed_params = {p["ParameterKey"]: p.get("ParameterValue") for p in existing.get("Parameters", [])}
        same_params = all(deployed_params.get(k, effective[k]) == v for k, v in effective.items())
        if _same_json(deployed_body, body) and same_params and existing["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
            log(f"stack {name} already deployed with this template; reusing it")
            return existing
        raise DeployError(
            f"stack {name} exists ({existing['StackStatus']}) with a different template or parameters; "
            "rerun with --recreate (moto's CloudFormation cannot update every resource type) or reset moto"
        )
    if existing is not None:
        log(f"deleting stack {name} (--recreate)")
        # A local stack keeps no data worth keeping: drop tables the template retains on delete,
        # or every --recreate would leave one behind in moto.
        for res in stack_resources(aws, name):
            if res.get("ResourceType") == "AWS::DynamoDB::Table" and res.get("PhysicalResourceId"):
                try:
                    aws("dynamodb").delete_table(TableName=res["PhysicalResourceId"])
                except Exception as exc:  # noqa: BLE001
                    if error_code(exc) != "ResourceNotFoundException":
                        raise
        cf.delete_stack(StackName=name)
        deadline = time.monotonic() + 60
        while find_stack(aws, name) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
    log(f"creating stack {name}")
    cf.create_stack(StackName=name, TemplateBody=body, Parameters=cfn_params, Capabilities=CAPABILITIES)
    return wait_stack(aws, name)


def _same_json(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except (TypeError, json.JSONDecodeError):
        return a == b


def stack_resources(aws: Aws, name: str) -> list[dict[str, Any]]:
    cf = aws("cloudformation")
    out: list[dict[str, Any]] = []
    token = None
    while True:
        page = cf.list_stack_resources(StackName=name, **({"NextToken": token} if token else {}))
        out.extend(page["StackResourceSummaries"])
        token = page.get("NextToken")
        if not token:
            return out


def verify_queues(aws: Aws, r: Resolver) -> dict[str, str]:
    """CFN's queue URLs name sqs.<region>.amazonaws.com; check moto really has each queue."""
    sqs = aws("sqs")
    local: dict[str, str] = {}
    for logical, resource in r.resources.items():
        if resource.get("Type") != "AWS::SQS::Queue":
            continue
        url = r.physical[logical]
        queue_name = url.rstrip("/").rsplit("/", 1)[-1]
        try:
            local[logical] = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        except Exception as exc:  # noqa: BLE001
            raise DeployError(f"queue {logical} ({url}) is not in moto: {exc}") from exc
    return local


def function_envs(aws: Aws, r: Resolver) -> tuple[dict[str, dict[str, str]], str]:
    """{short name: env}, read from moto's Lambda; falls back to resolving the template."""
    envs: dict[str, dict[str, str]] = {}
    source = "lambda:GetFunctionConfiguration"
    for logical, resource in r.resources.items():
        if resource.get("Type") != "AWS::Lambda::Function":
            continue
        short = re.sub(r"Function$", "", logical).lower() or logical.lower()
        variables: dict[str, Any] | None = None
        try:
            cfg = aws("lambda").get_function_configuration(FunctionName=r.physical[logical])
            variables = cfg.get("Environment", {}).get("Variables", {})
        except Exception as exc:  # noqa: BLE001
            log(f"moto Lambda has no {logical} ({exc}); resolving its environment from the template")
            source = "template"
            props = r.resolve(resource.get("Properties", {}))
            variables = props.get("Environment", {}).get("Variables", {})
        # Lambda environment values are strings; moto hands back Number parameters as numbers.
        envs[short] = {k: _env_str(v) for k, v in sorted((variables or {}).items())}
    return envs, source


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def deploy(endpoint: str, stack_name: str, params: dict[str, str], recreate: bool) -> dict[str, Any]:
    started = time.monotonic()
    aws = Aws(endpoint)
    template, code_uris = translate.translate(code_uri_prefix=f"s3://{ARTIFACT_BUCKET}/code")
    unknown = sorted(set(params) - set(template.get("Parameters", {})))
    if unknown:
        raise DeployError(f"unknown template parameter(s): {', '.join(unknown)}")
    upload_code(aws, code_uris)
    stack = deploy_stack(aws, stack_name, template, params, recreate)

    created = {
        s["LogicalResourceId"]: s["PhysicalResourceId"]
        for s in stack_resources(aws, stack_name)
        if s.get("LogicalResourceId") and s.get("ResourceType") and s.get("PhysicalResourceId")
    }
    skipped = [lid for lid in template.get("Resources", {}) if lid not in created]
    skipped_types = sorted({template["Resources"][lid]["Type"] for lid in skipped})
    if skipped:
        log(f"moto's CloudFormation skipped {len(skipped)} resource(s) of type(s) {', '.join(skipped_types)}")
    unsupported = sorted({t for t in skipped_types if t not in SKIPPED_HANDLERS})
    if unsupported:
        raise DeployError(
            "moto's CloudFormation skipped resource type(s) local_deploy.py cannot create: "
            + ", ".join(unsupported)
            + " (add a handler to SKIPPED_HANDLERS in infra/local_deploy.py)"
        )

    resolver = Resolver(aws, template, stack, created)
    filled = fill_skipped(resolver, skipped)
    fixups = close_property_gaps(resolver)
    pause_event_source_mappings(resolver)
    local_queue_urls = verify_queues(aws, resolver)
    envs, env_source = function_envs(aws, resolver)

    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    if not outputs:  # a reused stack may come back without outputs on some moto versions
        stack = aws("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise DeployError(f"stack outputs missing: {', '.join(missing)}")

    info = {
        "endpoint": endpoint,
        "region": REGION,
        "stack_name": stack_name,
        "outputs": {k: outputs[k] for k in sorted(outputs)},
        "functions": envs,
        "functions_env_source": env_source,
        "secrets": sorted(x["name"] for x in filled if x["kind"] == "secret"),
        "schedules": sorted(
            (
                {k: v for k, v in x.items() if k != "kind"}
                for x in filled
                if x["kind"] == "schedule"
            ),
            key=lambda s: s["name"],
        ),
        "alarms": sorted(
            ({k: v for k, v in x.items() if k != "kind"} for x in filled if x["kind"] == "alarm"),
            key=lambda a: a["name"],
        ),
        "event_invoke_configs": [
            {k: v for k, v in x.items() if k != "kind"} for x in filled if x["kind"] == "event_invoke_config"
        ],
        "queue_urls_on_endpoint": local_queue_urls,
        "created_outside_cloudformation": sorted(skipped),
        "property_fixups": fixups,
        "deploy_seconds": round(time.monotonic() - started, 2),
    }
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deploy infra/template.yaml into a running moto server.")
    parser.add_argument("--endpoint", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".local" / "stack.json")
    parser.add_argument("--stack-name", default="assetsync")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter override (repeatable), e.g. --param MaxReceiveCount=2",
    )
    parser.add_argument("--recreate", action="store_true", help="delete and recreate an existing stack")
    args = parser.parse_args(argv)

    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--param expects KEY=VALUE, got {item!r}")
        params[key] = value

    try:
        info = deploy(args.endpoint.rstrip("/"), args.stack_name, params, args.recreate)
    except DeployError as exc:
        log(f"error: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001  (botocore connection errors etc.)
        log(f"error: {type(exc).__name__}: {exc}")
        return 1

    text = json.dumps(info, indent=2) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    log(f"wrote {args.out} in {info['deploy_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
