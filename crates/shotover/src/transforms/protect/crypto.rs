//! What Protect stores in a protected column, and how it is made and read back.
//!
//! A value is encrypted with ChaCha20-Poly1305 under a data encryption key (DEK) and a
//! 96-bit nonce that never repeats under that DEK (a counter and a random salt). The DEK itself is stored beside it, encrypted by the key
//! encryption key (KEK), with the KEK's id, so that any holder of the KEK can read the
//! value. The four fields are written in bincode 1's default layout (fixed-width,
//! little-endian) for a struct of them, which is what the blob column holds:
//!
//! | field | bytes |
//! |---|---|
//! | `cipher` length | u64, little-endian |
//! | `cipher` | the ciphertext and its 16-byte Poly1305 tag |
//! | `nonce` | 12 |
//! | `enc_dek` length | u64, little-endian |
//! | `enc_dek` | the DEK as the key manager wraps it (Local: a 12-byte nonce, then the DEK encrypted under the KEK with its tag) |
//! | `kek_id` length | u64, little-endian |
//! | `kek_id` | UTF-8 |
//!
//! The layout is written here rather than with the `bincode` crate, whose development has
//! ended; the unit tests pin it.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A protected value, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    pub cipher: Vec<u8>,
    pub nonce: [u8; 12],
    pub enc_dek: Vec<u8>,
    pub kek_id: String,
}

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtectError {
    #[error("not a protected value (truncated or of another layout)")]
    Layout,
    #[error("the value was encrypted under the key encryption key {0:?}, not this one")]
    OtherKek(String),
    #[error("the data encryption key cannot be unwrapped: wrong key encryption key, or tampered")]
    Dek,
    #[error("the value does not decrypt: tampered, or another data encryption key")]
    Value,
    #[error("the key management service could not be reached for a data encryption key")]
    Unavailable,
}

impl Protected {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.cipher.len() + 12 + 8 + self.enc_dek.len() + 8 + self.kek_id.len());
        put(&mut out, &self.cipher);
        out.extend_from_slice(&self.nonce);
        put(&mut out, &self.enc_dek);
        put(&mut out, self.kek_id.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtectError> {
        let (cipher, nonce, enc_dek, kek_id) = fields(bytes)?;
        let kek_id = String::from_utf8(kek_id.to_vec()).map_err(|_| ProtectError::Layout)?;
        Ok(Protected { cipher: cipher.to_vec(), nonce, enc_dek: enc_dek.to_vec(), kek_id })
    }
}

/// The fields of a stored value, borrowed: cipher, nonce, enc_dek, kek_id.
type Fields<'a> = (&'a [u8], [u8; 12], &'a [u8], &'a [u8]);

fn fields(bytes: &[u8]) -> Result<Fields<'_>, ProtectError> {
    let mut r = bytes;
    let cipher = take(&mut r)?;
    let nonce = r.get(..12).and_then(|n| <[u8; 12]>::try_from(n).ok()).ok_or(ProtectError::Layout)?;
    r = r.get(12..).ok_or(ProtectError::Layout)?;
    let enc_dek = take(&mut r)?;
    let kek_id = take(&mut r)?;
    if !r.is_empty() {
        return Err(ProtectError::Layout);
    }
    Ok((cipher, nonce, enc_dek, kek_id))
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A length-prefixed field off the front of `r`.
fn take<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], ProtectError> {
    let len = r.get(..8).and_then(|l| <[u8; 8]>::try_from(l).ok()).ok_or(ProtectError::Layout)?;
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| ProtectError::Layout)?;
    let field = r.get(8..8usize.checked_add(len).ok_or(ProtectError::Layout)?).ok_or(ProtectError::Layout)?;
    *r = r.get(8 + len..).unwrap_or_default();
    Ok(field)
}

/// At most this many unwrapped DEKs are remembered per core; past it, expired ones go
/// first, then any one.
const MAX_DEKS: usize = 4096;

/// Values encrypted under one DEK before a new one is made, well inside what one key
/// should protect.
const DEK_USES: u64 = 1 << 30;

/// How long a DEK from KMS is used to encrypt, and an unwrapped DEK is remembered, before
/// KMS is asked again: plaintext keys stay in memory for a bounded time.
pub const DEK_LIFETIME: Duration = Duration::from_secs(3600);

/// A new DEK, and its bytes wrapped by `kek` (a nonce, then the ciphertext and tag).
fn new_dek(kek: &ChaCha20Poly1305) -> Result<(Key, Vec<u8>), ProtectError> {
    let dek = ChaCha20Poly1305::generate_key(&mut OsRng);
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let wrapped = kek.encrypt(&nonce, dek.as_slice()).map_err(|_| ProtectError::Dek)?;
    let mut enc_dek = nonce.to_vec();
    enc_dek.extend_from_slice(&wrapped);
    Ok((dek, enc_dek))
}

/// The DEK values are encrypted under now.
struct Current {
    dek: ChaCha20Poly1305,
    enc_dek: Vec<u8>,
    /// The nonce's last 4 bytes, drawn with the DEK.
    salt: [u8; 4],
    used: u64,
    made: Instant,
}

/// A key manager's keys, on one core.
///
/// - `Local`: the KEK is given in the configuration; one DEK is made at start (the DEK id
///   function is a constant, as the user guide says) and wrapped by the KEK, and stored
///   DEKs are unwrapped here.
/// - `AWSKms`: DEKs are made and unwrapped by KMS, asynchronously, by the caller
///   ([`Keys::needs_dek`], [`Keys::missing`], then [`Keys::install`] and [`Keys::learn`]);
///   until then, encrypting or decrypting fails with [`ProtectError::Unavailable`].
pub struct Keys {
    /// The Local KEK; `None` for KMS.
    kek: Option<ChaCha20Poly1305>,
    kek_id: String,
    current: Option<Current>,
    /// DEKs unwrapped so far, by their wrapped bytes.
    deks: HashMap<Vec<u8>, (ChaCha20Poly1305, Instant)>,
    /// Wrapped DEKs KMS refused to unwrap (at most [`MAX_DEKS`], then forgotten at once).
    refused: HashSet<Vec<u8>>,
}

impl Keys {
    pub fn local(kek: &[u8; 32], kek_id: &str) -> Result<Self, ProtectError> {
        let kek = ChaCha20Poly1305::new(Key::from_slice(kek));
        let (dek, enc_dek) = new_dek(&kek)?;
        let mut keys = Keys {
            kek: Some(kek),
            kek_id: kek_id.to_owned(),
            current: None,
            deks: HashMap::new(),
            refused: HashSet::new(),
        };
        keys.install(&dek, enc_dek)?;
        Ok(keys)
    }

    /// Keys whose DEKs come from KMS key `kek_id`.
    pub fn remote(kek_id: &str) -> Self {
        Keys { kek: None, kek_id: kek_id.to_owned(), current: None, deks: HashMap::new(), refused: HashSet::new() }
    }

    /// Whether there is a DEK to encrypt with (an aged one counts).
    pub fn has_dek(&self) -> bool {
        self.current.is_some()
    }

    /// Whether a new DEK should be installed: there is none, or it has aged out (always
    /// false for Local keys, which make their own).
    pub fn needs_dek(&self) -> bool {
        self.kek.is_none()
            && self.current.as_ref().is_none_or(|c| c.used >= DEK_USES || c.made.elapsed() >= DEK_LIFETIME)
    }

    /// Makes `dek` (wrapped as `enc_dek`) the DEK new values are encrypted under.
    pub fn install(&mut self, dek: &[u8], enc_dek: Vec<u8>) -> Result<(), ProtectError> {
        let key = <[u8; 32]>::try_from(dek).map_err(|_| ProtectError::Dek)?;
        let mut salt = [0u8; 4];
        OsRng.try_fill_bytes(&mut salt).map_err(|_| ProtectError::Dek)?;
        let dek = ChaCha20Poly1305::new(Key::from_slice(&key));
        self.current = Some(Current { dek, enc_dek, salt, used: 0, made: Instant::now() });
        Ok(())
    }

    /// The wrapped DEK of a stored value that must be unwrapped remotely first, if any.
    pub fn missing(&self, stored: &[u8]) -> Option<Vec<u8>> {
        let (_, _, enc_dek, kek_id) = fields(stored).ok()?;
        let known = self.current.as_ref().is_some_and(|c| c.enc_dek == enc_dek)
            || self.deks.get(enc_dek).is_some_and(|(_, at)| at.elapsed() < DEK_LIFETIME);
        let wanted = self.kek.is_none() && kek_id == self.kek_id.as_bytes() && !known;
        (wanted && !self.refused.contains(enc_dek)).then(|| enc_dek.to_vec())
    }

    /// Remembers that KMS refused to unwrap `enc_dek`: its values fail at once.
    pub fn refused(&mut self, enc_dek: Vec<u8>) {
        if self.refused.len() >= MAX_DEKS {
            self.refused.clear();
        }
        self.refused.insert(enc_dek);
    }

    /// Remembers a DEK unwrapped remotely.
    pub fn learn(&mut self, enc_dek: Vec<u8>, dek: &[u8]) -> Result<(), ProtectError> {
        let key = <[u8; 32]>::try_from(dek).map_err(|_| ProtectError::Dek)?;
        self.remember(enc_dek, ChaCha20Poly1305::new(Key::from_slice(&key)));
        Ok(())
    }

    fn remember(&mut self, enc_dek: Vec<u8>, dek: ChaCha20Poly1305) {
        if self.deks.len() >= MAX_DEKS {
            self.deks.retain(|_, (_, at)| at.elapsed() < DEK_LIFETIME);
        }
        if self.deks.len() >= MAX_DEKS {
            if let Some(any) = self.deks.keys().next().cloned() {
                self.deks.remove(&any);
            }
        }
        self.deks.insert(enc_dek, (dek, Instant::now()));
    }

    /// Encrypts `plaintext` into the stored layout.
    pub fn protect(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ProtectError> {
        if let (Some(kek), true) = (&self.kek, self.current.as_ref().is_some_and(|c| c.used >= DEK_USES)) {
            let (dek, enc_dek) = new_dek(kek)?;
            self.install(&dek, enc_dek)?;
        }
        let current = self.current.as_mut().ok_or(ProtectError::Unavailable)?;
        current.used += 1;
        // A counter and the DEK's salt: never repeated under one DEK.
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&current.used.to_le_bytes());
        nonce[8..].copy_from_slice(&current.salt);
        let cipher_len = plaintext.len() + 16;
        let mut out = Vec::with_capacity(8 + cipher_len + 12 + 8 + current.enc_dek.len() + 8 + self.kek_id.len());
        out.extend_from_slice(&(cipher_len as u64).to_le_bytes());
        out.extend_from_slice(plaintext);
        let tag = current
            .dek
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", out.get_mut(8..).unwrap_or_default())
            .map_err(|_| ProtectError::Value)?;
        out.extend_from_slice(&tag);
        out.extend_from_slice(&nonce);
        put(&mut out, &current.enc_dek);
        put(&mut out, self.kek_id.as_bytes());
        Ok(out)
    }

    /// Decrypts a stored value.
    pub fn unprotect(&mut self, stored: &[u8]) -> Result<Vec<u8>, ProtectError> {
        let (cipher, nonce, enc_dek, kek_id) = fields(stored)?;
        if kek_id != self.kek_id.as_bytes() {
            return Err(ProtectError::OtherKek(String::from_utf8_lossy(kek_id).into_owned()));
        }
        let current = self.current.as_ref().filter(|c| c.enc_dek == enc_dek).map(|c| c.dek.clone());
        let dek = match current {
            Some(dek) => dek,
            None => match self.deks.get(enc_dek).filter(|(_, at)| at.elapsed() < DEK_LIFETIME) {
                Some((dek, _)) => dek.clone(),
                None if self.refused.contains(enc_dek) => return Err(ProtectError::Dek),
                None => {
                    let kek = self.kek.as_ref().ok_or(ProtectError::Unavailable)?;
                    let dek = unwrap_dek(kek, enc_dek)?;
                    self.remember(enc_dek.to_vec(), dek.clone());
                    dek
                }
            },
        };
        let split = cipher.len().checked_sub(16).ok_or(ProtectError::Value)?;
        let (body, tag) = cipher.split_at(split);
        let mut plain = body.to_vec();
        dek.decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut plain, Tag::from_slice(tag))
            .map_err(|_| ProtectError::Value)?;
        Ok(plain)
    }
}

fn unwrap_dek(kek: &ChaCha20Poly1305, enc_dek: &[u8]) -> Result<ChaCha20Poly1305, ProtectError> {
    let (nonce, wrapped) = (enc_dek.get(..12).ok_or(ProtectError::Dek)?, enc_dek.get(12..).unwrap_or_default());
    let dek = kek.decrypt(Nonce::from_slice(nonce), wrapped).map_err(|_| ProtectError::Dek)?;
    let key = <[u8; 32]>::try_from(dek.as_slice()).map_err(|_| ProtectError::Dek)?;
    Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_bincode_1s() {
        let p = Protected { cipher: vec![1, 2], nonce: [9; 12], enc_dek: vec![3], kek_id: "k".into() };
        let mut want = vec![2, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        want.extend_from_slice(&[9; 12]);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 3]);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'k']);
        assert_eq!(p.encode(), want);
        assert_eq!(Protected::decode(&want), Ok(p));
        for cut in 0..want.len() {
            assert_eq!(Protected::decode(&want[..cut]), Err(ProtectError::Layout), "cut at {cut}");
        }
        let mut huge = want.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Protected::decode(&huge), Err(ProtectError::Layout));
    }

    #[test]
    fn values_round_trip_and_tampering_is_caught() {
        let mut keys = Keys::local(&[7; 32], "kek-1").unwrap();
        let stored = keys.protect(b"I am gonna get encrypted!!").unwrap();
        assert_eq!(keys.unprotect(&stored).unwrap(), b"I am gonna get encrypted!!");
        // Each value gets its own nonce.
        assert_ne!(keys.protect(b"x").unwrap(), keys.protect(b"x").unwrap());
        let mut tampered = Protected::decode(&stored).unwrap();
        tampered.cipher[0] ^= 1;
        assert_eq!(keys.unprotect(&tampered.encode()), Err(ProtectError::Value));
        let mut other_dek = Protected::decode(&stored).unwrap();
        other_dek.enc_dek[20] ^= 1;
        assert_eq!(keys.unprotect(&other_dek.encode()), Err(ProtectError::Dek));
        // Another process with the same KEK reads it; one with another KEK cannot.
        assert_eq!(Keys::local(&[7; 32], "kek-1").unwrap().unprotect(&stored).unwrap(), b"I am gonna get encrypted!!");
        assert_eq!(Keys::local(&[8; 32], "kek-1").unwrap().unprotect(&stored), Err(ProtectError::Dek));
        assert!(matches!(Keys::local(&[7; 32], "other").unwrap().unprotect(&stored), Err(ProtectError::OtherKek(_))));
    }

    #[test]
    fn remote_keys_wait_for_their_deks() {
        let mut keys = Keys::remote("alias/k");
        assert!(keys.needs_dek());
        assert_eq!(keys.protect(b"x"), Err(ProtectError::Unavailable));
        keys.install(&[5; 32], b"wrapped by kms".to_vec()).unwrap();
        assert!(!keys.needs_dek());
        let stored = keys.protect(b"secret").unwrap();
        assert_eq!(keys.missing(&stored), None, "the current DEK is known");
        assert_eq!(keys.unprotect(&stored).unwrap(), b"secret");
        // Another core (or an earlier run) reads it: KMS must unwrap the DEK first.
        let mut other = Keys::remote("alias/k");
        assert_eq!(other.missing(&stored), Some(b"wrapped by kms".to_vec()));
        assert_eq!(other.unprotect(&stored), Err(ProtectError::Unavailable));
        other.learn(b"wrapped by kms".to_vec(), &[5; 32]).unwrap();
        assert_eq!(other.missing(&stored), None);
        assert_eq!(other.unprotect(&stored).unwrap(), b"secret");
        assert!(other.install(&[1; 16], Vec::new()).is_err(), "a DEK is 32 bytes");
        // Another KEK id is not asked of this KMS key.
        assert_eq!(Keys::remote("alias/other").missing(&stored), None);
        assert_eq!(Keys::local(&[7; 32], "kek-1").unwrap().missing(&stored), None);
        // What KMS refused is not asked again, and fails as a bad key.
        let mut third = Keys::remote("alias/k");
        third.refused(b"wrapped by kms".to_vec());
        assert_eq!(third.missing(&stored), None);
        assert_eq!(third.unprotect(&stored), Err(ProtectError::Dek));
    }
}
