//! The template's IAM and encryption, checked on its translation to plain CloudFormation (what
//! CloudFormation really deploys): issue 8, security 1 and 6.

use std::process::Command;

use assetsync_tests::stack::repo_root;
use serde_json::Value;

/// What AWS's managed policies grant on `Resource: "*"` (the translation names them by ARN only).
const MANAGED_SQS_ON_EVERY_QUEUE: &[&str] = &[
    "AWSLambdaSQSQueueExecutionRole",
    "AmazonSQSFullAccess",
    "AmazonSQSReadOnlyAccess",
];

fn translated() -> Value {
    static CFN: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    CFN.get_or_init(translate).clone()
}

fn translate() -> Value {
    let root = repo_root();
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("infra/translate.py"))
        .arg("-")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("running infra/translate.py with .venv's python (scripts/bootstrap.sh makes it)");
    assert!(
        out.status.success(),
        "translate.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("translate.py prints JSON")
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Every (role, statement) of every IAM role's inline policies.
fn statements(cfn: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (id, r) in cfn["Resources"].as_object().unwrap() {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        for p in as_list(&r["Properties"]["Policies"]) {
            for s in as_list(&p["PolicyDocument"]["Statement"]) {
                out.push((id.clone(), s));
            }
        }
    }
    out
}

#[test]
fn no_role_may_touch_every_queue() {
    let cfn = translated();
    for (id, r) in cfn["Resources"].as_object().unwrap() {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        for arn in as_list(&r["Properties"]["ManagedPolicyArns"]) {
            let arn = arn.to_string();
            for bad in MANAGED_SQS_ON_EVERY_QUEUE {
                assert!(
                    !arn.contains(bad),
                    "{id} carries {bad}, which grants SQS actions on every queue"
                );
            }
        }
    }
    for (role, s) in statements(&cfn) {
        let actions: Vec<String> = as_list(&s["Action"])
            .iter()
            .filter_map(|a| a.as_str().map(str::to_ascii_lowercase))
            .collect();
        let sqs = actions.iter().any(|a| a.starts_with("sqs:") || a == "*");
        let on_all = as_list(&s["Resource"]).iter().any(|r| r == "*");
        assert!(!(sqs && on_all), "{role} grants {actions:?} on \"*\": {s}");
    }
}

#[test]
fn each_function_polls_its_own_queue_only() {
    let cfn = translated();
    let res = &cfn["Resources"];
    let role_of = |function: &str| -> String {
        res[function]["Properties"]["Role"]["Fn::GetAtt"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (function, queue) in [
        ("FetcherFunction", "FetchQueue"),
        ("ImporterFunction", "RecordsQueue"),
    ] {
        let role = role_of(function);
        let receive: Vec<Value> = statements(&cfn)
            .into_iter()
            .filter(|(r, s)| {
                r == &role
                    && as_list(&s["Action"])
                        .iter()
                        .any(|a| a == "sqs:ReceiveMessage")
            })
            .map(|(_, s)| s)
            .collect();
        assert_eq!(receive.len(), 1, "{function}: {receive:?}");
        assert_eq!(
            receive[0]["Resource"],
            serde_json::json!({"Fn::GetAtt": [queue, "Arn"]}),
            "{function} may receive from {} only",
            queue
        );
        // Its mapping exists and reads that queue.
        let mapping = res
            .as_object()
            .unwrap()
            .values()
            .find(|r| {
                r["Type"] == "AWS::Lambda::EventSourceMapping"
                    && r["Properties"]["FunctionName"] == serde_json::json!({"Ref": function})
            })
            .unwrap_or_else(|| panic!("{function} has no event source mapping"));
        assert_eq!(
            mapping["Properties"]["EventSourceArn"],
            serde_json::json!({"Fn::GetAtt": [queue, "Arn"]})
        );
    }
    let importer = res
        .as_object()
        .unwrap()
        .values()
        .find(|r| {
            r["Type"] == "AWS::Lambda::EventSourceMapping"
                && r["Properties"]["FunctionName"] == serde_json::json!({"Ref": "ImporterFunction"})
        })
        .unwrap();
    assert_eq!(
        importer["Properties"]["FunctionResponseTypes"],
        serde_json::json!(["ReportBatchItemFailures"])
    );
}

/// The register, the queues, the log groups and the secrets use the stack's own KMS key.
#[test]
fn data_at_rest_uses_the_customer_managed_key() {
    let cfn = translated();
    let key_ref = serde_json::json!({"Ref": "DataKey"});
    let key_arn = serde_json::json!({"Fn::GetAtt": ["DataKey", "Arn"]});
    assert_eq!(cfn["Resources"]["DataKey"]["Type"], "AWS::KMS::Key");
    assert_eq!(
        cfn["Resources"]["DataKey"]["Properties"]["EnableKeyRotation"],
        true
    );
    let mut seen = 0;
    for (id, r) in cfn["Resources"].as_object().unwrap() {
        let p = &r["Properties"];
        let key = match r["Type"].as_str().unwrap() {
            "AWS::DynamoDB::Table" => &p["SSESpecification"]["KMSMasterKeyId"],
            "AWS::SQS::Queue" => &p["KmsMasterKeyId"],
            "AWS::Logs::LogGroup" => &p["KmsKeyId"],
            "AWS::SecretsManager::Secret" => &p["KmsKeyId"],
            _ => continue,
        };
        assert!(
            *key == key_ref || *key == key_arn,
            "{id} is not encrypted with DataKey: {key}"
        );
        seen += 1;
    }
    assert!(seen >= 12, "{seen}");
    // The functions may use the key, through the services only.
    for role in ["FetcherFunctionRole", "ImporterFunctionRole"] {
        let kms: Vec<Value> = statements(&cfn)
            .into_iter()
            .filter(|(r, s)| r == role && as_list(&s["Action"]).iter().any(|a| a == "kms:Decrypt"))
            .map(|(_, s)| s)
            .collect();
        assert_eq!(kms.len(), 1, "{role}: {kms:?}");
        assert_eq!(kms[0]["Resource"], key_arn, "{role}");
        assert!(
            kms[0]["Condition"]["StringEquals"]["kms:ViaService"].is_array(),
            "{role}"
        );
    }
}
