//! Protect's configuration: the key manager and the protected columns.

use super::crypto::LocalKeys;
use super::{Columns, Protect, Shared};
use crate::chain::{BuildContext, Resolved, TransformBuilder, TransformConfig};
use crate::message::Protocol;
use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectConfig {
    /// `Local: {...}` or `AWSKms: {...}`: a map of one entry, as the user guide writes it.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub key_manager: KeyManagerConfig,
    /// keyspace → table → the columns to encrypt.
    pub keyspace_table_columns: HashMap<String, HashMap<String, Vec<String>>>,
    #[serde(skip)]
    resolved: Resolved<Settings>,
}

#[derive(Debug, Deserialize)]
pub enum KeyManagerConfig {
    /// A key encryption key given here.
    Local {
        /// 32 bytes, base64.
        kek: String,
        kek_id: String,
    },
    /// Data encryption keys made and unwrapped by AWS KMS.
    #[serde(rename = "AWSKms")]
    AwsKms { endpoint: String, region: String, cmk_id: String, number_of_bytes: usize },
}

struct Settings {
    kek: [u8; 32],
    kek_id: String,
    columns: Columns,
}

impl TransformConfig for ProtectConfig {
    const NAME: &'static str = "Protect";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];

    fn validate(&mut self) -> Result<()> {
        let (kek, kek_id) = match &self.key_manager {
            KeyManagerConfig::Local { kek, kek_id } => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(kek.trim())
                    .map_err(|e| anyhow!("key_manager.Local.kek: not base64: {e}"))?;
                let kek = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    anyhow!("key_manager.Local.kek: must be 32 bytes (44 characters of base64), not {}", bytes.len())
                })?;
                (kek, kek_id.clone())
            }
            // Refused rather than ignored: writes would otherwise reach Cassandra unencrypted.
            KeyManagerConfig::AwsKms { .. } => bail!("key_manager.AWSKms: not available in this build yet"),
        };
        let mut columns = Columns::new();
        for (keyspace, tables) in &self.keyspace_table_columns {
            for (table, names) in tables {
                if names.is_empty() {
                    bail!("keyspace_table_columns.{keyspace}.{table}: name at least one column");
                }
                let set: HashSet<String> = names.iter().cloned().collect();
                columns.entry(keyspace.clone()).or_default().insert(table.clone(), set);
            }
        }
        if columns.is_empty() {
            bail!("keyspace_table_columns: name at least one keyspace, table and column");
        }
        self.resolved.set(Settings { kek, kek_id, columns });
        Ok(())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let s = self.resolved.get()?;
        let keys = LocalKeys::new(&s.kek, &s.kek_id).map_err(|e| anyhow!("cannot make a data encryption key: {e}"))?;
        let shared = Rc::new(Shared::new(s.columns.clone(), keys));
        Ok(Box::new(move || Protect::new(shared.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<ProtectConfig> {
        let mut config: ProtectConfig = serde_yaml_ng::from_str(yaml)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn the_guides_local_example_loads_and_bad_keks_name_the_field() {
        let guide = "key_manager:\n  Local:\n    kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=\n    kek_id: \"\"\nkeyspace_table_columns:\n  test_protect_keyspace:\n    test_table:\n      - col1\n";
        load(guide).unwrap();
        let short = guide.replace("Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=", "AAAA");
        let err = format!("{:#}", load(&short).unwrap_err());
        assert!(err.starts_with("key_manager.Local.kek: must be 32 bytes"), "{err}");
        let garbage = guide.replace("Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=", "not*base64");
        let err = format!("{:#}", load(&garbage).unwrap_err());
        assert!(err.starts_with("key_manager.Local.kek: not base64"), "{err}");
    }

    #[test]
    fn the_guides_aws_example_parses_and_is_refused_for_now() {
        let aws = "key_manager:\n  AWSKms:\n    endpoint: \"http://localhost:5000\"\n    region: \"us-east-1\"\n    cmk_id: \"alias/aws/secretsmanager\"\n    number_of_bytes: 32\nkeyspace_table_columns:\n  test_protect_keyspace:\n    test_table:\n      - col1\n";
        let err = format!("{:#}", load(aws).unwrap_err());
        assert!(err.starts_with("key_manager.AWSKms: not available"), "{err}");
    }
}
