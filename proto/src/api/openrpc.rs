//! The API as an [OpenRPC](https://spec.open-rpc.org) document, generated from the typed
//! params and results of every method (and the params of every event), so that it cannot
//! drift from what the daemon does. Served at `GET /api/openrpc.json`; a copy is
//! `docs/openrpc.json`.

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::{devices, events, files, messages, node, peers, rooms, Method, API_VERSION};

/// Where the shared schemas go in the document.
const DEFINITIONS: &str = "/components/schemas";

/// Calls `f` with every method (name, summary, params schema, result schema).
fn each_method(g: &mut SchemaGenerator, mut f: impl FnMut(&'static str, &'static str, Schema, Schema)) {
    fn one<M: Method>(g: &mut SchemaGenerator, f: &mut impl FnMut(&'static str, &'static str, Schema, Schema)) {
        let params = g.subschema_for::<M::Params>();
        let result = g.subschema_for::<M::Result>();
        f(M::NAME, M::SUMMARY, params, result);
    }
    one::<node::Info>(g, &mut f);
    one::<node::Doctor>(g, &mut f);
    one::<node::RotateToken>(g, &mut f);
    one::<node::CreateBackup>(g, &mut f);
    one::<rooms::List>(g, &mut f);
    one::<rooms::Join>(g, &mut f);
    one::<rooms::CheckPassphrase>(g, &mut f);
    one::<rooms::Create>(g, &mut f);
    one::<rooms::Leave>(g, &mut f);
    one::<rooms::Remove>(g, &mut f);
    one::<rooms::Admin>(g, &mut f);
    one::<rooms::Invite>(g, &mut f);
    one::<rooms::Seed>(g, &mut f);
    one::<peers::Members>(g, &mut f);
    one::<messages::Send>(g, &mut f);
    one::<messages::SendBatch>(g, &mut f);
    one::<messages::History>(g, &mut f);
    one::<messages::React>(g, &mut f);
    one::<messages::Edit>(g, &mut f);
    one::<messages::Delete>(g, &mut f);
    one::<messages::Search>(g, &mut f);
    one::<peers::List>(g, &mut f);
    one::<peers::SetProfile>(g, &mut f);
    one::<peers::Rename>(g, &mut f);
    one::<peers::Verify>(g, &mut f);
    one::<peers::Safety>(g, &mut f);
    one::<peers::Block>(g, &mut f);
    one::<peers::Unblock>(g, &mut f);
    one::<peers::Blocked>(g, &mut f);
    one::<devices::Link>(g, &mut f);
    one::<devices::Accept>(g, &mut f);
    one::<devices::List>(g, &mut f);
    one::<devices::Unlink>(g, &mut f);
    one::<files::SendFile>(g, &mut f);
    one::<files::GetFile>(g, &mut f);
    one::<files::Url>(g, &mut f);
    one::<files::Subscribe>(g, &mut f);
}

/// The names of every method, in the document's order (worked out once).
pub fn method_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = Vec::new();
        each_method(&mut generator(), |name, _, _, _| names.push(name));
        names
    })
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().with(|s| s.definitions_path = DEFINITIONS.into()).into_generator()
}

/// The definition a `$ref` points at.
fn resolve<'a>(definitions: &'a Map<String, Value>, schema: &'a Value) -> &'a Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(&format!("#{DEFINITIONS}/")))
        .and_then(|name| definitions.get(name))
        .unwrap_or(schema)
}

/// A method's params object as OpenRPC content descriptors (by name), one per member.
fn params_of(definitions: &Map<String, Value>, schema: &Value) -> Vec<Value> {
    let object = resolve(definitions, schema);
    let required: Vec<&str> =
        object.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(properties) = object.get("properties").and_then(Value::as_object) else { return Vec::new() };
    properties
        .iter()
        .map(|(name, schema)| {
            let mut descriptor = json!({"name": name, "required": required.contains(&name.as_str()), "schema": schema});
            if let Some(text) = schema.get("description") {
                descriptor["description"] = text.clone();
            }
            descriptor
        })
        .collect()
}

/// The OpenRPC document of this API version.
pub fn document() -> Value {
    let mut g = generator();
    let mut methods = Vec::new();
    each_method(&mut g, |name, summary, params, result| methods.push((name, summary, params, result)));
    let mut notifications = Vec::new();
    events::each_schema(&mut g, |name, params| notifications.push((name, params)));
    let error = g.subschema_for::<super::ErrorObject>();
    let definitions = g.take_definitions(true);
    let methods: Vec<Value> = methods
        .into_iter()
        .map(|(name, summary, params, result)| {
            json!({
                "name": name,
                "summary": summary,
                "paramStructure": "by-name",
                "params": params_of(&definitions, params.as_value()),
                "result": {"name": "result", "schema": result},
            })
        })
        .collect();
    let notifications: Vec<Value> =
        notifications.into_iter().map(|(name, params)| json!({"name": name, "params": params})).collect();
    let codes: Vec<Value> =
        super::codes::ALL.iter().map(|(code, name)| json!({"code": code, "message": name})).collect();
    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "peerlog local API",
            "version": format!("{API_VERSION}.0.0"),
            "description": "JSON-RPC 2.0 over a WebSocket at GET /api/ws (see docs/API.md). Events are JSON-RPC notifications from the daemon: x-notifications lists them with the schema of their params.",
        },
        "servers": [{"name": "the local daemon", "url": "ws://127.0.0.1:7777/api/ws"}],
        "methods": methods,
        "components": {"schemas": definitions, "errors": {"ErrorObject": error}},
        "x-notifications": notifications,
        "x-error-codes": codes,
    })
}

/// The schema a method's params must match, with every definition it uses (for checking
/// examples): `params` or `result`.
pub fn method_schema(method: &str, part: &str) -> Option<Value> {
    let doc = document();
    let m = doc["methods"].as_array()?.iter().find(|m| m["name"] == method)?;
    let schema = match part {
        "result" => m["result"]["schema"].clone(),
        _ => {
            let mut properties = Map::new();
            let mut required = Vec::new();
            for p in m["params"].as_array()? {
                let name = p["name"].as_str()?.to_string();
                if p["required"] == true {
                    required.push(Value::String(name.clone()));
                }
                properties.insert(name, p["schema"].clone());
            }
            json!({"type": "object", "properties": properties, "required": required})
        }
    };
    Some(with_definitions(schema, &doc))
}

/// The schema of an event's params, with its definitions.
pub fn event_schema(event: &str) -> Option<Value> {
    let doc = document();
    let n = doc["x-notifications"].as_array()?.iter().find(|n| n["name"] == event)?;
    Some(with_definitions(n["params"].clone(), &doc))
}

/// `schema` made self-contained: the document's definitions under the same path.
fn with_definitions(mut schema: Value, doc: &Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
        object.insert("components".into(), json!({"schemas": doc["components"]["schemas"]}));
    } else {
        schema = json!({"allOf": [schema], "components": {"schemas": doc["components"]["schemas"]}});
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_and_event_is_in_the_document() {
        let doc = document();
        let methods = doc["methods"].as_array().unwrap();
        assert_eq!(methods.len(), method_names().len());
        let join = methods.iter().find(|m| m["name"] == "rooms.join").unwrap();
        let params: Vec<&str> =
            join["params"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(params.contains(&"passphrase") && params.contains(&"invite"), "{params:?}");
        let names: Vec<&str> =
            doc["x-notifications"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(names, events::NAMES);
        // Every $ref points at a definition.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let target = &r[..r.find('"').unwrap()];
            let name = target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("ref {target}"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "dangling ref {target}");
        }
    }
}

#[cfg(test)]
mod docs {
    use super::*;

    fn repo_file(path: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// `docs/openrpc.json` is what the daemon serves.
    #[test]
    fn the_copy_in_docs_is_current() {
        let copy: Value = serde_json::from_str(&repo_file("docs/openrpc.json")).expect("docs/openrpc.json is JSON");
        assert!(copy == document(), "docs/openrpc.json is stale: run `peerlog openrpc > docs/openrpc.json`");
    }

    /// Every `<!-- example NAME params|result|event -->` block of `docs/API.md` matches
    /// the schema of what it names.
    #[test]
    fn docs_examples_match_the_schema() {
        let text = repo_file("docs/API.md");
        let mut checked = 0;
        for block in text.split("<!-- example ").skip(1) {
            let (label, rest) = block.split_once(" -->").expect("an example label");
            let json = rest.split_once("```json").and_then(|(_, r)| r.split_once("```")).expect("a json block").0;
            let (name, part) = label.rsplit_once(' ').expect("NAME PART");
            let schema = match part {
                "event" => event_schema(name),
                "params" | "result" => method_schema(name, part),
                other => panic!("example {label}: unknown part {other}"),
            }
            .unwrap_or_else(|| panic!("example {label}: no such method or event"));
            let instance: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("example {label}: {e}"));
            let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema of {label}: {e}"));
            let errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "example {label} does not match its schema: {errors:?}");
            checked += 1;
        }
        assert!(checked >= 9, "only {checked} examples found");
    }

    /// The check itself catches a wrong example.
    #[test]
    fn a_wrong_example_fails_the_check() {
        let schema = method_schema("messages.send", "params").unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&json!({"room": "r", "text": "t"})));
        assert!(!validator.is_valid(&json!({"room": "r"})), "text is required");
        assert!(!validator.is_valid(&json!({"room": 5, "text": "t"})), "room is a string");
    }
}
