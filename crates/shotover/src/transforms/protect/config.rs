//! Protect's configuration: the key manager and the protected columns.

use super::crypto::Keys;
use super::keyring::KeyRing;
use super::kms::{Kms, KmsSettings};
use super::valkey::{Patterns, ValkeyProtect};
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
    /// keyspace → table → the columns to encrypt (Cassandra chains).
    #[serde(default)]
    pub keyspace_table_columns: HashMap<String, HashMap<String, Vec<String>>>,
    /// Key patterns whose values are encrypted (Valkey chains).
    #[serde(default)]
    pub valkey_key_patterns: Vec<String>,
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

/// Where the keys come from, resolved.
enum Source {
    Local { kek: [u8; 32], kek_id: String },
    Kms(KmsSettings),
}

struct Settings {
    source: Source,
    columns: Columns,
}

impl TransformConfig for ProtectConfig {
    const NAME: &'static str = "Protect";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra, Protocol::Valkey];

    /// Cassandra with `keyspace_table_columns`, Valkey with `valkey_key_patterns`.
    fn protocols(&self) -> &'static [Protocol] {
        if self.valkey_key_patterns.is_empty() {
            &[Protocol::Cassandra]
        } else {
            &[Protocol::Valkey]
        }
    }

    fn validate(&mut self) -> Result<()> {
        let source = match &self.key_manager {
            KeyManagerConfig::Local { kek, kek_id } => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(kek.trim())
                    .map_err(|e| anyhow!("key_manager.Local.kek: not base64: {e}"))?;
                let kek = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    anyhow!("key_manager.Local.kek: must be 32 bytes (44 characters of base64), not {}", bytes.len())
                })?;
                Source::Local { kek, kek_id: kek_id.clone() }
            }
            KeyManagerConfig::AwsKms { endpoint, region, cmk_id, number_of_bytes } => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    bail!("key_manager.AWSKms.endpoint: must be an http:// or https:// URL, not {endpoint:?}");
                }
                if region.trim().is_empty() {
                    bail!("key_manager.AWSKms.region: must not be empty");
                }
                if cmk_id.trim().is_empty() {
                    bail!("key_manager.AWSKms.cmk_id: must not be empty");
                }
                // The DEK is a ChaCha20-Poly1305 key.
                if *number_of_bytes != 32 {
                    bail!("key_manager.AWSKms.number_of_bytes: must be 32 (a ChaCha20-Poly1305 key), not {number_of_bytes}");
                }
                Source::Kms(KmsSettings {
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    cmk_id: cmk_id.clone(),
                    number_of_bytes: 32,
                })
            }
        };
        let mut columns = Columns::new();
        for (keyspace, tables) in &self.keyspace_table_columns {
            if keyspace.is_empty() {
                bail!("keyspace_table_columns: a keyspace name must not be empty");
            }
            for (table, names) in tables {
                if table.is_empty() {
                    bail!("keyspace_table_columns.{keyspace}: a table name must not be empty");
                }
                if names.iter().any(String::is_empty) {
                    bail!("keyspace_table_columns.{keyspace}.{table}: a column name must not be empty");
                }
                if names.is_empty() {
                    bail!("keyspace_table_columns.{keyspace}.{table}: name at least one column");
                }
                let set: HashSet<String> = names.iter().cloned().collect();
                columns.entry(keyspace.clone()).or_default().insert(table.clone(), set);
            }
        }
        match (columns.is_empty(), self.valkey_key_patterns.is_empty()) {
            (true, true) => bail!(
                "keyspace_table_columns: name at least one keyspace, table and column (or, in a Valkey chain, give valkey_key_patterns)"
            ),
            (false, false) => bail!(
                "valkey_key_patterns: give either keyspace_table_columns (a Cassandra chain) or valkey_key_patterns (a Valkey chain), not both"
            ),
            _ => {}
        }
        if let Some(bad) = self.valkey_key_patterns.iter().find(|p| p.is_empty()) {
            bail!("valkey_key_patterns: a pattern must not be empty ({bad:?})");
        }
        // Valkey's own globs have classes and escapes; these patterns do not, and would
        // silently protect nothing where a class was meant.
        if let Some(bad) = self.valkey_key_patterns.iter().find(|p| p.contains(['[', ']', '\\'])) {
            bail!("valkey_key_patterns: {bad:?}: only `*` and `?` are special; `[`, `]` and `\\` are not accepted");
        }
        self.resolved.set(Settings { source, columns });
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let s = self.resolved.get()?;
        let (keys, kms) = match &s.source {
            Source::Local { kek, kek_id } => {
                (Keys::local(kek, kek_id).map_err(|e| anyhow!("cannot make a data encryption key: {e}"))?, None)
            }
            // One client per core, on the control core.
            Source::Kms(settings) => (Keys::remote(&settings.cmk_id), Some(Kms::start(&ctx.control, settings.clone()))),
        };
        let ring = Rc::new(KeyRing::new(keys, kms));
        if !self.valkey_key_patterns.is_empty() {
            let patterns = Rc::new(Patterns::new(&self.valkey_key_patterns));
            return Ok(Box::new(move || ValkeyProtect::new(ring.clone(), patterns.clone())));
        }
        let shared = Rc::new(Shared::new(s.columns.clone(), ring));
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
    fn empty_keyspace_table_and_column_names_are_refused() {
        let guide = "key_manager:\n  Local:\n    kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=\n    kek_id: \"\"\nkeyspace_table_columns:\n  ks:\n    t:\n      - c\n";
        load(guide).unwrap();
        for (from, to, expected) in [
            ("  ks:", "  \"\":", "keyspace_table_columns: a keyspace name must not be empty"),
            ("    t:", "    \"\":", "keyspace_table_columns.ks: a table name must not be empty"),
            ("- c", "- \"\"", "keyspace_table_columns.ks.t: a column name must not be empty"),
        ] {
            let err = format!("{:#}", load(&guide.replace(from, to)).unwrap_err());
            assert_eq!(err, expected);
        }
    }

    #[test]
    fn the_valkey_form_takes_key_patterns() {
        let valkey = "key_manager:\n  Local:\n    kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=\n    kek_id: \"\"\nvalkey_key_patterns: [\"secret:*\"]\n";
        let config = load(valkey).unwrap();
        assert_eq!(TransformConfig::protocols(&config), &[Protocol::Valkey]);
        let neither = valkey.replace("valkey_key_patterns: [\"secret:*\"]\n", "");
        assert!(format!("{:#}", load(&neither).unwrap_err()).starts_with("keyspace_table_columns: name at least one"));
        let both = format!("{valkey}keyspace_table_columns:\n  ks:\n    t: [c]\n");
        assert!(format!("{:#}", load(&both).unwrap_err()).starts_with("valkey_key_patterns: give either"));
        let class = valkey.replace("secret:*", "user:[0-9]*");
        assert!(format!("{:#}", load(&class).unwrap_err()).contains("only `*` and `?` are special"));
    }

    #[test]
    fn the_guides_aws_example_loads_and_bad_fields_are_named() {
        let aws = "key_manager:\n  AWSKms:\n    endpoint: \"http://localhost:5000\"\n    region: \"us-east-1\"\n    cmk_id: \"alias/aws/secretsmanager\"\n    number_of_bytes: 32\nkeyspace_table_columns:\n  test_protect_keyspace:\n    test_table:\n      - col1\n";
        load(aws).unwrap();
        for (from, to, expected) in [
            ("number_of_bytes: 32", "number_of_bytes: 16", "key_manager.AWSKms.number_of_bytes: must be 32"),
            ("\"http://localhost:5000\"", "\"localhost:5000\"", "key_manager.AWSKms.endpoint: must be an http"),
            ("\"alias/aws/secretsmanager\"", "\"\"", "key_manager.AWSKms.cmk_id: must not be empty"),
        ] {
            let err = format!("{:#}", load(&aws.replace(from, to)).unwrap_err());
            assert!(err.starts_with(expected), "{err}");
        }
    }
}
