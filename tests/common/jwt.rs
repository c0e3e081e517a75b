//! Signed JWTs for the tests: HS256 with [`SECRET`], RS256 and ES256 with the keys in
//! `tests/keys/` (test keys, protecting nothing).
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The `--jwt-secret` of the tests (32 bytes).
pub const SECRET: &str = "test-secret-test-secret-test-sec";

pub fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// `--jwt-public-key` for the RS256 tokens of [`rs256`].
pub fn rsa_public_key() -> String {
    keys_dir().join("rsa_public.pem").display().to_string()
}

/// `--jwt-public-key` for the ES256 tokens of [`es256`].
pub fn ec_public_key() -> String {
    keys_dir().join("ec_public.pem").display().to_string()
}

/// Seconds since the Unix epoch, the unit of `exp`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
}

pub fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(keys_dir().join("rsa_private.pem")).unwrap();
    sign(
        Algorithm::RS256,
        claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
}

pub fn es256(claims: &Value) -> String {
    let pem = std::fs::read(keys_dir().join("ec_private.pem")).unwrap();
    sign(
        Algorithm::ES256,
        claims,
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
}

fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    encode(&Header::new(alg), claims, key).expect("sign a test token")
}
