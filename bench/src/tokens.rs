//! Subscriber tokens for the auth-cost runs: every subscriber presents its own JWT, granting
//! exactly the symbols it follows, signed with the server's HS256 secret or with the private key
//! whose public half the server verifies (RS256 or ES256).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// How a worker signs its subscribers' tokens (sent to it in its `ChildSpec`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenKey {
    /// "HS256", "RS256" or "ES256".
    pub alg: String,
    /// The secret, or the private key in PEM form.
    pub key: String,
}

impl TokenKey {
    /// HS256 with the server's `--jwt-secret`.
    pub fn secret(secret: &str) -> TokenKey {
        TokenKey {
            alg: "HS256".into(),
            key: secret.into(),
        }
    }

    /// RS256 or ES256, from a PKCS#8 private key in PEM form (the algorithm from the key).
    pub fn private_pem(pem: &str) -> Result<TokenKey, String> {
        let alg = if EncodingKey::from_rsa_pem(pem.as_bytes()).is_ok() {
            "RS256"
        } else if EncodingKey::from_ec_pem(pem.as_bytes()).is_ok() {
            "ES256"
        } else {
            return Err("not an RSA or EC private key in PEM form".into());
        };
        Ok(TokenKey {
            alg: alg.into(),
            key: pem.into(),
        })
    }

    /// A token for subscriber `sub` granting `symbols` until `exp` (seconds since the epoch).
    pub fn sign(&self, sub: usize, symbols: &[&str], exp: u64) -> String {
        let claims = serde_json::json!({
            "sub": format!("bench-{sub}"),
            "symbols": symbols,
            "exp": exp,
        });
        let (alg, key) = match self.alg.as_str() {
            "RS256" => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(self.key.as_bytes()),
            ),
            "ES256" => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(self.key.as_bytes()),
            ),
            _ => (
                Algorithm::HS256,
                EncodingKey::from_secret(self.key.as_bytes()),
            ),
        };
        let key = key.expect("the key was checked when the run started");
        encode(&Header::new(alg), &claims, &key).expect("sign a subscriber token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_tokens_carry_the_subscribers_symbols() {
        let k = TokenKey::secret("0123456789abcdef0123456789abcdef");
        let t = k.sign(7, &["S1", "S2"], 4_000_000_000);
        let payload = t.split('.').nth(1).unwrap();
        assert!(!payload.is_empty());
        assert!(TokenKey::private_pem("nope").is_err());
    }
}
