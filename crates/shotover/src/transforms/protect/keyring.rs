//! One core's keys and, for `AWSKms`, its way to KMS: what both forms of Protect (CQL and
//! Valkey) encrypt and decrypt with.

use super::crypto::Keys;
use super::kms::Kms;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

pub(crate) struct KeyRing {
    pub(super) keys: RefCell<Keys>,
    /// The `AWSKms` client; `None` for Local keys.
    kms: Option<Kms>,
    /// After a KMS failure, KMS is not asked again before this (requests that need it fail
    /// at once meanwhile), and one WARN is logged per outage.
    retry_at: Cell<Option<Instant>>,
    down: Cell<bool>,
}

impl KeyRing {
    pub(super) fn new(keys: Keys, kms: Option<Kms>) -> Self {
        KeyRing { keys: RefCell::new(keys), kms, retry_at: Cell::new(None), down: Cell::new(false) }
    }

    /// Whether keys come from KMS (and must be fetched before use).
    pub(super) fn is_remote(&self) -> bool {
        self.kms.is_some()
    }

    /// The KMS client, unless KMS failed less than a second ago.
    fn kms(&self) -> Option<&Kms> {
        let waiting = self.retry_at.get().is_some_and(|at| Instant::now() < at);
        self.kms.as_ref().filter(|_| !waiting)
    }

    fn kms_result<T>(&self, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => {
                self.retry_at.set(None);
                if self.down.replace(false) {
                    tracing::info!("Protect: the key management service answers again");
                }
                Some(value)
            }
            Err(e) => {
                if !self.down.replace(true) {
                    tracing::warn!("Protect: {e}; values that need it get errors until it answers");
                }
                self.retry_at.set(Some(Instant::now() + Duration::from_secs(1)));
                None
            }
        }
    }

    /// With KMS: a DEK for writes (when `dek` and the core has none), and the wrapped DEKs
    /// `enc_deks` unwrapped. What fails is left missing: encrypting or decrypting with it
    /// then fails with the KMS error.
    pub(super) async fn fetch(&self, dek: bool, enc_deks: Vec<Vec<u8>>) {
        if dek && self.keys.borrow().needs_dek() {
            if let Some(kms) = self.kms() {
                if let Some((plain, enc_dek)) = self.kms_result(kms.generate().await) {
                    if let Err(e) = self.keys.borrow_mut().install(&plain, enc_dek) {
                        tracing::warn!("Protect: KMS gave an unusable data encryption key: {e}");
                    }
                }
            }
        }
        for enc_dek in enc_deks {
            let Some(kms) = self.kms() else { return };
            if let Some(plain) = self.kms_result(kms.decrypt(enc_dek.clone()).await) {
                if let Err(e) = self.keys.borrow_mut().learn(enc_dek, &plain) {
                    tracing::warn!("Protect: KMS gave an unusable data encryption key: {e}");
                }
            }
        }
    }
}
