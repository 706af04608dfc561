//! One core's keys and, for `AWSKms`, its way to KMS: what both forms of Protect (CQL and
//! Valkey) encrypt and decrypt with.
//!
//! With KMS, nothing waits for KMS unless it must:
//! - a batch waits for GenerateDataKey only when a protected write in it found no DEK at all
//!   (the core's first, or after an outage), and one call serves every connection of the
//!   core;
//! - a DEK that has aged out keeps being used while its successor is fetched in the
//!   background;
//! - reads wait for the Decrypt of DEKs they need that the core does not hold.

use super::crypto::Keys;
use super::kms::{Kms, KmsError};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a connection waits for another one's GenerateDataKey on the same core.
const GENERATE_WAIT: Duration = Duration::from_secs(8);

pub(crate) struct KeyRing {
    pub(super) keys: RefCell<Keys>,
    /// The `AWSKms` client; `None` for Local keys.
    kms: Option<Kms>,
    /// After KMS could not be reached, it is not asked again before this (requests that
    /// need it fail at once meanwhile), and one WARN is logged per outage.
    retry_at: Cell<Option<Instant>>,
    down: Cell<bool>,
    /// A GenerateDataKey is under way.
    generating: Cell<bool>,
}

impl KeyRing {
    pub(super) fn new(keys: Keys, kms: Option<Kms>) -> Self {
        KeyRing {
            keys: RefCell::new(keys),
            kms,
            retry_at: Cell::new(None),
            down: Cell::new(false),
            generating: Cell::new(false),
        }
    }

    /// Whether keys come from KMS (and must be fetched before use).
    pub(super) fn is_remote(&self) -> bool {
        self.kms.is_some()
    }

    /// The KMS client, unless KMS could not be reached less than a second ago.
    fn kms(&self) -> Option<&Kms> {
        let waiting = self.retry_at.get().is_some_and(|at| Instant::now() < at);
        self.kms.as_ref().filter(|_| !waiting)
    }

    fn kms_result<T>(&self, result: Result<T, KmsError>) -> Option<T> {
        match result {
            Ok(value) => {
                self.retry_at.set(None);
                if self.down.replace(false) {
                    tracing::info!("Protect: the key management service answers again");
                }
                Some(value)
            }
            Err(KmsError::Unavailable(e)) => {
                if !self.down.replace(true) {
                    tracing::warn!("Protect: {e}; values that need it get errors until it answers");
                }
                self.retry_at.set(Some(Instant::now() + Duration::from_secs(1)));
                None
            }
            Err(KmsError::Refused(e)) => {
                tracing::warn!("Protect: {e}");
                None
            }
        }
    }

    /// With KMS and no DEK at all: waits for one (made by this call or by another
    /// connection's). Returns whether there is one now.
    pub(super) async fn ensure_dek(&self) -> bool {
        let has = || self.keys.borrow().has_dek();
        if has() || self.kms.is_none() {
            return has();
        }
        if self.generating.get() {
            let deadline = Instant::now() + GENERATE_WAIT;
            while self.generating.get() && Instant::now() < deadline {
                crate::rt::sleep(Duration::from_millis(5)).await;
            }
            return has();
        }
        self.generate().await;
        has()
    }

    /// With KMS and a DEK that has aged out: fetches its successor in the background.
    pub(super) fn renew_if_due(self: &Rc<Self>) {
        if self.kms.is_some() && !self.generating.get() && self.keys.borrow().needs_dek() && self.kms().is_some() {
            let ring = self.clone();
            crate::rt::spawn_local(async move { ring.generate().await }).detach();
        }
    }

    async fn generate(&self) {
        let Some(kms) = self.kms() else { return };
        self.generating.set(true);
        let result = kms.generate().await;
        self.generating.set(false);
        if let Some((plain, enc_dek)) = self.kms_result(result) {
            if let Err(e) = self.keys.borrow_mut().install(&plain, enc_dek) {
                tracing::warn!("Protect: KMS gave an unusable data encryption key: {e}");
            }
        }
    }

    /// With KMS: unwraps the wrapped DEKs `enc_deks`. What KMS refuses is remembered as
    /// refused (its values then fail to decrypt at once); what cannot be had because KMS is
    /// unreachable is left missing, and fails with that error.
    pub(super) async fn unwrap(&self, enc_deks: Vec<Vec<u8>>) {
        for enc_dek in enc_deks {
            let Some(kms) = self.kms() else { return };
            match kms.decrypt(enc_dek.clone()).await {
                Err(KmsError::Refused(e)) => {
                    tracing::warn!("Protect: {e}");
                    self.keys.borrow_mut().refused(enc_dek);
                }
                result => {
                    if let Some(plain) = self.kms_result(result) {
                        if let Err(e) = self.keys.borrow_mut().learn(enc_dek, &plain) {
                            tracing::warn!("Protect: KMS gave an unusable data encryption key: {e}");
                        }
                    }
                }
            }
        }
    }
}
