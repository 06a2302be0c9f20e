//! The OpenAPI document of the API (`crates/api/openapi.json`), and a small
//! checker of JSON values against its schemas, so that tests hold the
//! server to the document: same routes, and answers that fit their schemas.

use serde_json::Value;

/// The OpenAPI 3 document.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// The document, parsed.
pub fn document() -> Result<Value, String> {
    serde_json::from_str(DOCUMENT).map_err(|e| format!("openapi.json: {e}"))
}

/// Every (method, endpoint) the document lists, e.g. `("GET", "vm.info")`.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys() {
                    let name = path.trim_start_matches('/').to_string();
                    ops.push((method.to_uppercase(), name));
                }
            }
        }
    }
    ops.sort();
    ops
}

/// Checks `value` against component schema `name`; the error names the
/// JSON path that does not fit.
pub fn check(doc: &Value, name: &str, value: &Value) -> Result<(), String> {
    let schema = &doc["components"]["schemas"][name];
    if schema.is_null() {
        return Err(format!("no schema {name}"));
    }
    check_at(doc, schema, value, "$")
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn check_at(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = options
            .iter()
            .filter(|s| check_at(doc, s, value, at).is_ok())
            .count();
        return if fits == 1 {
            Ok(())
        } else {
            Err(format!("{at}: fits {fits} of the oneOf schemas"))
        };
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let kind = schema.get("type").and_then(Value::as_str);
    let fits = match kind {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_boolean(),
        Some("number") => value.is_number(),
        _ => true,
    };
    if !fits {
        return Err(format!(
            "{at}: expected {}, found {value}",
            kind.unwrap_or("?")
        ));
    }
    if let Some(n) = value.as_i64() {
        let below = schema
            .get("minimum")
            .and_then(Value::as_i64)
            .is_some_and(|m| n < m);
        let above = schema
            .get("maximum")
            .and_then(Value::as_i64)
            .is_some_and(|m| n > m);
        if below || above {
            return Err(format!("{at}: {n} is out of range"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check_at(doc, item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        check_object(doc, schema, object, at)?;
    }
    Ok(())
}

fn check_object(
    doc: &Value,
    schema: &Value,
    object: &serde_json::Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    for field in schema["required"].as_array().into_iter().flatten() {
        if let Some(field) = field.as_str() {
            if !object.contains_key(field) {
                return Err(format!("{at}: missing required field {field}"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, v) in object {
        let path = format!("{at}.{key}");
        match (
            properties.and_then(|p| p.get(key)),
            schema.get("additionalProperties"),
        ) {
            (Some(s), _) => check_at(doc, s, v, &path)?,
            (None, Some(Value::Bool(false))) => {
                return Err(format!("{path}: not in the schema"));
            }
            (None, Some(s)) if s.is_object() => check_at(doc, s, v, &path)?,
            (None, _) => {}
        }
    }
    let count = object.len() as u64;
    if schema
        .get("minProperties")
        .and_then(Value::as_u64)
        .is_some_and(|m| count < m)
        || schema
            .get("maxProperties")
            .and_then(Value::as_u64)
            .is_some_and(|m| count > m)
    {
        return Err(format!("{at}: wrong number of fields ({count})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;
    use serde_json::json;

    #[test]
    fn the_document_lists_exactly_the_routes() {
        let doc = document().unwrap();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.name.to_string()))
            .collect();
        routes.sort();
        assert_eq!(operations(&doc), routes);
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let name = r.trim_start_matches("#/components/schemas/");
                        assert!(!doc["components"]["schemas"][name].is_null(), "{r}");
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        let doc = document().unwrap();
        walk(&doc, &doc);
    }

    #[test]
    fn configs_the_vmm_writes_fit_the_schema() {
        let doc = document().unwrap();
        let config = vmm::config::from_document(json!({
            "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "x"},
            "cpus": {"boot_vcpus": 2, "max_vcpus": 4, "topology": {"sockets": 2, "cores_per_socket": 2, "threads_per_core": 1}, "model": "x86-64-v2", "features": ["-x2apic"], "kvm_pv": false},
            "memory": {"size": "1G"},
            "serial": {"mode": "socket", "path": "/s"},
            "rng": {},
            "disks": [{"path": "/d", "readonly": true, "serial": "abc", "addr": 5, "logical_block_size": 4096}],
            "channels": [{"name": "a", "backend": {"socket": "/a"}}, {"name": "b", "backend": {"file": "/b"}, "console": true}]
        }))
        .unwrap();
        let value = serde_json::to_value(&config).unwrap();
        check(&doc, "VmConfig", &value).unwrap();
        let mut wrong = value.clone();
        wrong["cpus"]["boot_vcpus"] = json!("two");
        assert!(check(&doc, "VmConfig", &wrong)
            .unwrap_err()
            .contains("$.cpus.boot_vcpus"));
        let mut extra = value;
        extra["disks"][0]["turbo"] = json!(true);
        assert!(check(&doc, "VmConfig", &extra)
            .unwrap_err()
            .contains("turbo"));
    }
}
