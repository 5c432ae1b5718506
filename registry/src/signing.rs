//! Signed versions: an Ed25519 signature over the exact bytes of a version's `manifest.json`
//! (which holds the model file's SHA-256, so the signature covers the model too), kept beside
//! it in `manifest.sig`. Keys are PEM files as OpenSSL writes them (`openssl genpkey -algorithm
//! ed25519` for the private key, `openssl pkey -pubout` for the public one), so an auditor can
//! check a version without Flywheel: `openssl pkeyutl -verify -pubin -inkey key.pub.pem -rawin
//! -in manifest.json -sigfile <the signature's 64 bytes>`.
//!
//! The signature is made when the version is published (the registry writes `manifest.sig`
//! before the commit marker), so a committed version is never seen without it. A gateway
//! trusts a set of public keys at once (rotation: add the new key, sign with it, retire the
//! old one later).

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::manifest::sha256_hex;

/// The signature's file in a version folder.
pub const SIGNATURE_FILE: &str = "manifest.sig";
const ALGORITHM: &str = "ed25519";

/// What `manifest.sig` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Always `ed25519`.
    pub algorithm: String,
    /// [`key_id`] of the public key that verifies it.
    pub key_id: String,
    /// The 64-byte signature of `manifest.json`'s bytes, lower-case hex.
    pub signature: String,
}

/// A short, stable name of a public key: the first 16 hex digits of the SHA-256 of its 32
/// raw bytes. Shown in signature files, errors, `/v2/models/{m}/versions/{v}` and the audit log.
pub fn key_id(key: &VerifyingKey) -> String {
    sha256_hex(key.as_bytes())[..16].to_owned()
}

/// A private key that signs manifests.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("signing key {}: {e}", path.display()))?;
        let key = SigningKey::from_pkcs8_pem(&text)
            .map_err(|e| format!("signing key {}: not an Ed25519 private key in PKCS#8 PEM ({e})", path.display()))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// The public key's [`key_id`].
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The bytes of `manifest.sig` for a manifest file's bytes.
    pub fn sign(&self, manifest_bytes: &[u8]) -> Vec<u8> {
        let signature = self.key.sign(manifest_bytes);
        let file = SignatureFile {
            algorithm: ALGORITHM.to_owned(),
            key_id: self.key_id.clone(),
            signature: hex(&signature.to_bytes()),
        };
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }
}

/// Writes a new key pair: `<prefix>.pem` (private, owner-only, refused if it exists) and
/// `<prefix>.pub.pem`. Returns the key id and both paths.
pub fn generate_key_pair(prefix: &Path) -> Result<(String, PathBuf, PathBuf), String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for a key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("encoding the private key: {e}"))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("encoding the public key: {e}"))?;
    let private_path = PathBuf::from(format!("{}.pem", prefix.display()));
    let public_path = PathBuf::from(format!("{}.pub.pem", prefix.display()));
    write_new(&private_path, private.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    Ok((key_id(&key.verifying_key()), private_path, public_path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The public keys a reader trusts, each with the file it came from.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey, PathBuf)>,
}

impl PartialEq for TrustedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.ids().eq(other.ids())
    }
}

impl TrustedKeys {
    /// Reads SPKI PEM public keys (`-----BEGIN PUBLIC KEY-----`); the error names the file.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            let text = fs::read_to_string(path).map_err(|e| format!("trusted key {}: {e}", path.display()))?;
            let key = VerifyingKey::from_public_key_pem(&text)
                .map_err(|e| format!("trusted key {}: not an Ed25519 public key in SPKI PEM ({e})", path.display()))?;
            keys.push((key_id(&key), key, path.clone()));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys' ids.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _, _)| id.as_str())
    }

    pub fn trusts(&self, key_id: &str) -> bool {
        self.ids().any(|id| id == key_id)
    }

    /// Checks `signature_file` (the bytes of `manifest.sig`) over `manifest_bytes`; returns the
    /// key id that verified it, or why it does not verify.
    pub fn verify(&self, manifest_bytes: &[u8], signature_file: &[u8]) -> Result<String, String> {
        let file: SignatureFile =
            serde_json::from_slice(signature_file).map_err(|e| format!("{SIGNATURE_FILE} is not readable: {e}"))?;
        if file.algorithm != ALGORITHM {
            return Err(format!("{SIGNATURE_FILE}: algorithm is {:?}, only {ALGORITHM:?} is known", file.algorithm));
        }
        let bytes: [u8; 64] = unhex(&file.signature).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            format!("{SIGNATURE_FILE}: signature must be 128 hex digits, given {} characters", file.signature.len())
        })?;
        let Some((_, key, path)) = self.keys.iter().find(|(id, _, _)| *id == file.key_id) else {
            return Err(format!(
                "signed by key {}, which is not trusted (trusted: {})",
                file.key_id,
                self.ids().collect::<Vec<_>>().join(", ")
            ));
        };
        key.verify_strict(manifest_bytes, &Signature::from_bytes(&bytes)).map_err(|_| {
            format!(
                "the signature by key {} ({}) does not match manifest.json: the manifest or the signature was altered",
                file.key_id,
                path.display()
            )
        })?;
        Ok(file.key_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`; the signature of
    /// `m` by `openssl pkeyutl -sign -rawin` (Ed25519 is deterministic: ours must be the same).
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIChbfX2O1nsNz3JPFSbZjKT/dvDFxVZGf5vlUq2APYPH\n-----END PRIVATE KEY-----\n";
    const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAVrsRCZ2+TvSwj00n+4iwdQfH2G5KrCoJha7pxxMGsKM=\n-----END PUBLIC KEY-----\n";
    const OPENSSL_SIGNATURE_OF_M: &str = "423511e592d376d51010f308ea85a66d5056e01f2cf46fc22c0902e901a214fed392f4e61caa95085ba88d0a7b81fc3e2506c5aede1052c0f9ea91fa6703a706";

    fn pair(dir: &Path, name: &str) -> (Signer, TrustedKeys) {
        let (_, private, public) = generate_key_pair(&dir.join(name)).unwrap();
        (Signer::from_pem_file(&private).unwrap(), TrustedKeys::from_files(&[public]).unwrap())
    }

    #[test]
    fn a_signature_verifies_and_any_change_to_the_manifest_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = pair(dir.path(), "release");
        let manifest = br#"{"model": "fraud", "version": 3, "sha256": "ab"}"#;
        let sig = signer.sign(manifest);
        assert_eq!(trusted.verify(manifest, &sig).unwrap(), signer.key_id());
        let altered = br#"{"model": "fraud", "version": 4, "sha256": "ab"}"#;
        let err = trusted.verify(altered, &sig).unwrap_err();
        assert!(err.contains("does not match manifest.json"), "{err}");
        let mut file: SignatureFile = serde_json::from_slice(&sig).unwrap();
        file.signature = "00".repeat(64);
        let err = trusted.verify(manifest, &serde_json::to_vec(&file).unwrap()).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        file.signature = "zz".into();
        let err = trusted.verify(manifest, &serde_json::to_vec(&file).unwrap()).unwrap_err();
        assert!(err.contains("128 hex digits"), "{err}");
        assert!(trusted.verify(manifest, b"not json").unwrap_err().contains("not readable"));
    }

    #[test]
    fn an_untrusted_key_is_named_and_rotation_trusts_both() {
        let dir = tempfile::tempdir().unwrap();
        let (old, old_trust) = pair(dir.path(), "old");
        let (new, _) = pair(dir.path(), "new");
        let manifest = b"{}";
        let err = old_trust.verify(manifest, &new.sign(manifest)).unwrap_err();
        assert!(err.contains(new.key_id()) && err.contains("not trusted") && err.contains(old.key_id()), "{err}");
        let both = TrustedKeys::from_files(&[dir.path().join("old.pub.pem"), dir.path().join("new.pub.pem")]).unwrap();
        assert_eq!(both.verify(manifest, &old.sign(manifest)).unwrap(), old.key_id());
        assert_eq!(both.verify(manifest, &new.sign(manifest)).unwrap(), new.key_id());
    }

    #[test]
    fn openssl_keys_are_read_and_bad_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
        fs::write(&private, OPENSSL_PRIVATE).unwrap();
        fs::write(&public, OPENSSL_PUBLIC).unwrap();
        let signer = Signer::from_pem_file(&private).unwrap();
        let trusted = TrustedKeys::from_files(std::slice::from_ref(&public)).unwrap();
        let ours: SignatureFile = serde_json::from_slice(&signer.sign(b"m")).unwrap();
        assert_eq!(ours.signature, OPENSSL_SIGNATURE_OF_M);
        assert_eq!(trusted.verify(b"m", &signer.sign(b"m")).unwrap(), signer.key_id());
        // A private key is not a trusted key, nor the reverse.
        let err = TrustedKeys::from_files(std::slice::from_ref(&private)).unwrap_err();
        assert!(err.contains("k.pem") && err.contains("SPKI PEM"), "{err}");
        let err = Signer::from_pem_file(&public).unwrap_err();
        assert!(err.contains("k.pub.pem") && err.contains("PKCS#8"), "{err}");
        let err = TrustedKeys::from_files(&[dir.path().join("missing.pem")]).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn key_generation_refuses_to_overwrite_and_keeps_the_private_key_private() {
        let dir = tempfile::tempdir().unwrap();
        generate_key_pair(&dir.path().join("k")).unwrap();
        assert!(generate_key_pair(&dir.path().join("k")).unwrap_err().contains("k.pem"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("k.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
    }
}
