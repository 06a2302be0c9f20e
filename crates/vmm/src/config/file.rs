//! Config documents: `--config vm.toml` or `vm.json`, API request bodies,
//! and `fvctl info --json` output fed back (its `config` member is used).

use std::path::Path;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use super::{ConfigError, VmConfig};

/// The largest config file read (a config is a few KiB).
const MAX_FILE: u64 = 1 << 20;

/// Reads the config file `path`: TOML when it ends in `.toml`, else JSON.
pub fn load_file(path: &Path) -> Result<VmConfig, ConfigError> {
    const FLAG: &str = "--config";
    let err = |m: String| ConfigError::new(FLAG, format!("{}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(err(format!(
            "not a regular file of at most {} KiB",
            MAX_FILE >> 10
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| err(one_line(&e.to_string())))?
    } else {
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
    };
    from_document(value).map_err(|e| err(e.to_string()))
}

/// Builds and validates a config from a parsed document: either a VM config
/// or a `vm.info` answer (an object with `config` and `state`).
pub fn from_document(mut value: serde_json::Value) -> Result<VmConfig, ConfigError> {
    if let Some(object) = value.as_object_mut() {
        if object.contains_key("state") {
            if let Some(config) = object.remove("config") {
                value = config;
            }
        }
    }
    if !value.is_object() {
        return Err(ConfigError::new(
            "config",
            "a VM config is an object (with payload, cpus, memory, ...)",
        ));
    }
    let config: VmConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::new("config", format!("{path}: {inner}"))
    })?;
    config.validate().map_err(|e| {
        let name = json_name(e.flag);
        let message = if e.message.starts_with('[') {
            format!("{name}{}", e.message)
        } else {
            format!("{name}: {}", e.message)
        };
        ConfigError::new("config", message)
    })
}

/// The config document's name for what a flag sets.
fn json_name(flag: &str) -> &str {
    match flag {
        "--kernel" => "payload.kernel",
        "--cmdline" => "payload.cmdline",
        "--cpus" => "cpus",
        "--memory" => "memory",
        "--serial" => "serial",
        "--disk" => "disks",
        "--channel" => "channels",
        "--rng" => "rng",
        "--balloon" => "balloon",
        other => other,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Deserializes a size given as bytes (`536870912`) or with a suffix (`"512M"`).
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(t) => super::parse_size("size", &t).map_err(|e| D::Error::custom(e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_document_gets_defaults_and_ids() {
        let c = from_document(json!({
            "payload": {"kernel": "/k"},
            "disks": [{"path": "/a"}, {"path": "/b", "id": "data"}],
            "rng": {}
        }))
        .unwrap();
        assert_eq!(c.cpus.boot, 1);
        assert_eq!(c.memory.size, 512 << 20);
        assert_eq!(c.disks[0].id.as_deref(), Some("disk0"));
        assert_eq!(c.disks[1].id.as_deref(), Some("data"));
        assert_eq!(c.rng.unwrap().id.as_deref(), Some("rng0"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = from_document(
            json!({"payload": {"kernel": "/k"}, "disks": [{"path": "/a", "queue_size": "big"}]}),
        )
        .unwrap_err();
        assert!(e.message.contains("disks[0].queue_size"), "{e}");
        let e = from_document(
            json!({"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 1, "turbo": true}}),
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `turbo`"), "{e}");
        let e = from_document(json!({"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 0}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config: cpus: boot=0: a VM needs at least one vCPU"
        );
        let e = from_document(json!({"payload": {"kernel": "/k"}, "disks": [{"path": "/a"}, {"path": "/b", "queue_size": 3}]}))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("config: disks[1]: queue_size=3"),
            "{e}"
        );
        let e = from_document(json!({"payload": {"kernel": "/k"}, "memory": {"size": "12Q"}}))
            .unwrap_err();
        assert!(e.message.contains("memory.size"), "{e}");
        let e = from_document(json!([1, 2])).unwrap_err();
        assert!(e.message.contains("is an object"), "{e}");
        let e = from_document(json!({"payload": {"kernel": "/k"}, "disks": [{"path": "/a", "id": "x"}, {"path": "/b", "id": "x"}]}))
            .unwrap_err();
        assert!(e.message.contains("id=x"), "{e}");
    }

    #[test]
    fn info_output_round_trips() {
        let c = from_document(json!({"payload": {"kernel": "/k", "cmdline": "a b"}, "memory": {"size": "1G"}, "serial": {"mode": "socket", "path": "/s"}}))
            .unwrap();
        let info =
            json!({"state": "running", "config": serde_json::to_value(&c).unwrap(), "devices": []});
        assert_eq!(from_document(info).unwrap(), c);
        let text = toml::to_string(&c).unwrap();
        let again: serde_json::Value = toml::from_str(&text).unwrap();
        assert_eq!(from_document(again).unwrap(), c);
    }
}
