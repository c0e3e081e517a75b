//! Who may read and publish which symbols: the publish token, JSON Web Tokens (HS256, RS256,
//! ES256) with their grants, and a cache so that a long-poll, which presents its token at every
//! poll, has it verified once rather than at every poll.
//!
//! # The rules
//! - Publishing always needs a credential: the publish token, or a JWT whose `publish` claim
//!   names every symbol published. Only `Authorization: Bearer` carries it: a cookie would let any
//!   page a browser visits publish with its user's cookie (cross-site request forgery), and a
//!   query parameter ends up in logs. No peer address and no header but `Authorization` counts:
//!   behind a proxy every peer is local, and `X-Forwarded-For` is whatever the client says.
//! - With a JWT key configured, reading (snapshots, polls, streams) needs a token whose `symbols`
//!   claim names every requested symbol, except the `--public-symbols`. Without a key, every
//!   symbol is public.
//! - `exp` is required, and checked here to the microsecond (not by the JWT library, which allows
//!   60 s of leeway and treats the expiry second itself as valid): a held poll or stream ends
//!   when its token does.
//!
//! Everything here is a plain function of its inputs, the clock passed in: unit-tested without
//! sockets.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;
use crate::names::normalize_symbol;

/// Longest token accepted. A JWT with a few hundred granted symbols is a few KiB; anything longer
/// is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most symbols one claim may name.
const MAX_CLAIM_SYMBOLS: usize = 4096;
/// Verified tokens kept, over all shards. A held poll's token stays cached while it polls.
const CACHE_ENTRIES: usize = 64 * 1024;
const CACHE_SHARDS: usize = 16;

/// The key JWTs are verified with (`--jwt-secret` or `--jwt-public-key`).
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HMAC-SHA256 with a shared secret.
    Hs256(Vec<u8>),
    /// RSA PKCS#1 v1.5 with SHA-256; the PEM of the public key.
    Rs256(Vec<u8>),
    /// ECDSA on P-256 with SHA-256; the PEM of the public key.
    Es256(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    // Never print a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwtKey::Hs256(_) => "Hs256(<secret>)",
            JwtKey::Rs256(_) => "Rs256(<public key>)",
            JwtKey::Es256(_) => "Es256(<public key>)",
        })
    }
}

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key of at least the hash's size.
pub const MIN_SECRET_LEN: usize = 32;

impl JwtKey {
    /// An HS256 secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn secret(secret: &str) -> Result<JwtKey, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "must be at least {MIN_SECRET_LEN} bytes (RFC 7518 §3.2), got {}",
                secret.len()
            ));
        }
        Ok(JwtKey::Hs256(secret.as_bytes().to_vec()))
    }

    /// A public key in PEM form: RSA of at least 2048 bits (RS256) or EC on P-256 (ES256), told
    /// apart by its contents. Another curve, or a shorter RSA key, is refused here rather than
    /// failing every token later.
    pub fn from_pem(pem: &[u8]) -> Result<JwtKey, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            let bits = key_der(&key).and_then(rsa_modulus_bits).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits: RS256 needs at least {MIN_RSA_BITS}"
                ));
            }
            return Ok(JwtKey::Rs256(pem.to_vec()));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            // The uncompressed point 04 || X || Y: 65 bytes on P-256 (97 on P-384, ...).
            let p256 = key_der(&key).is_some_and(|p| p.len() == 65 && p[0] == 4);
            if !p256 {
                return Err("an EC key not on P-256: ES256 needs a P-256 key".into());
            }
            return Ok(JwtKey::Es256(pem.to_vec()));
        }
        Err("not an RSA or EC public key in PEM form (-----BEGIN PUBLIC KEY-----)".into())
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            JwtKey::Hs256(_) => Algorithm::HS256,
            JwtKey::Rs256(_) => Algorithm::RS256,
            JwtKey::Es256(_) => Algorithm::ES256,
        }
    }

    fn decoding_key(&self) -> Result<DecodingKey, String> {
        let key = match self {
            JwtKey::Hs256(secret) => DecodingKey::from_secret(secret),
            JwtKey::Rs256(pem) => DecodingKey::from_rsa_pem(pem),
            JwtKey::Es256(pem) => DecodingKey::from_ec_pem(pem),
        };
        key.map_err(|e| e.to_string())
    }
}

/// Shortest RSA modulus accepted for RS256 (NIST SP 800-57: 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;

/// The key bytes jsonwebtoken keeps: the DER of an RSA public key (PKCS#1), or an EC point.
fn key_der(key: &DecodingKey) -> Option<&[u8]> {
    match key.kind() {
        jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => Some(der),
        _ => None,
    }
}

/// The size of the modulus of an RSA public key in PKCS#1 DER (`SEQUENCE { INTEGER n, INTEGER
/// e }`), in bits, counted from its bytes (a leading zero byte does not count).
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    // One DER tag-length header at `at`: (where the content starts, its length).
    fn header(der: &[u8], at: usize, tag: u8) -> Option<(usize, usize)> {
        if *der.get(at)? != tag {
            return None;
        }
        let first = *der.get(at + 1)?;
        if first < 0x80 {
            return Some((at + 2, usize::from(first)));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(at + 2..at + 2 + n)?
            .iter()
            .fold(0usize, |l, &b| (l << 8) | usize::from(b));
        Some((at + 2 + n, len))
    }
    let (seq, _) = header(der, 0, 0x30)?;
    let (start, len) = header(der, seq, 0x02)?;
    let modulus = der.get(start..start.checked_add(len)?)?;
    let zeros = modulus.iter().take_while(|&&b| b == 0).count();
    Some((modulus.len() - zeros) * 8)
}

/// A set of symbols: what a token grants, or which symbols are public.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// No symbol.
    #[default]
    Nothing,
    /// Every symbol (`"*"`).
    All,
    /// These (normalized) symbols. Shared, so that handing a grant's scope to a publish is a
    /// count, not a copy of up to `--max-symbols` names.
    Only(Arc<[Box<str>]>),
}

impl Scope {
    /// `*` or a comma-separated list of symbol names (as `--public-symbols` takes them).
    pub fn parse_list(text: &str) -> Result<Scope, String> {
        let names: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if names == ["*"] {
            return Ok(Scope::All);
        }
        Scope::of_names(names.iter().copied()).map_err(|e| e.to_string())
    }

    fn of_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<Scope, ApiError> {
        let mut out: Vec<Box<str>> = Vec::new();
        for name in names {
            let name = normalize_symbol(name)?;
            if !out.iter().any(|n| **n == *name) {
                out.push(name.into());
            }
        }
        Ok(if out.is_empty() {
            Scope::Nothing
        } else {
            Scope::Only(out.into())
        })
    }

    pub fn allows(&self, symbol: &str) -> bool {
        match self {
            Scope::Nothing => false,
            Scope::All => true,
            Scope::Only(names) => names.iter().any(|n| **n == *symbol),
        }
    }

    /// Every one of `symbols` this scope does not allow, or `NotGranted` naming them.
    pub fn check<'a>(&self, symbols: impl Iterator<Item = &'a str>) -> Result<(), ApiError> {
        let refused: Vec<String> = symbols
            .filter(|s| !self.allows(s))
            .map(str::to_string)
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(ApiError::NotGranted(refused))
        }
    }
}

/// What a verified token grants, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `exp`, in microseconds since the Unix epoch.
    pub exp_us: u64,
    /// The `symbols` claim: what the bearer may read.
    pub read: Scope,
    /// The `publish` claim: what the bearer may publish.
    pub publish: Scope,
    /// The `sub` claim, for logs.
    pub sub: Option<String>,
}

/// A `symbols` or `publish` claim as it comes: `"*"` or an array of names.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClaimScope {
    Star(String),
    Names(Vec<String>),
}

impl ClaimScope {
    fn into_scope(self, claim: &str) -> Result<Scope, ApiError> {
        let bad = |why: &str| ApiError::InvalidToken(format!("the {claim} claim {why}"));
        match self {
            ClaimScope::Star(s) if s == "*" => Ok(Scope::All),
            ClaimScope::Star(_) => Err(bad("must be \"*\" or an array of symbols")),
            ClaimScope::Names(names) if names.len() > MAX_CLAIM_SYMBOLS => {
                Err(bad(&format!("names more than {MAX_CLAIM_SYMBOLS} symbols")))
            }
            ClaimScope::Names(names) => Scope::of_names(names.iter().map(String::as_str))
                .map_err(|_| bad("names a malformed symbol")),
        }
    }
}

/// The claims this server reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    exp: f64,
    #[serde(default)]
    symbols: Option<ClaimScope>,
    #[serde(default)]
    publish: Option<ClaimScope>,
    #[serde(default)]
    sub: Option<String>,
}

/// Verifies JWTs signed with one key and algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// What a token must say of its issuer and audience (`--jwt-issuer`, `--jwt-audience`): with a
/// key that an identity provider shares with other services, these keep tokens meant for them
/// out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl Verifier {
    pub fn new(key: &JwtKey, rules: &JwtRules) -> Result<Verifier, String> {
        // Only the configured key's algorithm: a token naming another one (`none`, or HS256
        // signed with an RSA public key as its secret) is refused before any signature check.
        let mut validation = Validation::new(key.algorithm());
        // `exp` must be there; its time is checked by `grant` (module doc). `nbf`, when a token
        // has one, is checked without leeway.
        let mut required = vec!["exp"];
        validation.validate_exp = false;
        validation.validate_nbf = true;
        validation.leeway = 0;
        match &rules.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &rules.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier {
            key: key.decoding_key()?,
            validation,
        })
    }

    /// Check the signature and shape of `token` and read its grant. The expiry is not checked
    /// here (see [`Grant::check_time`]).
    pub fn verify(&self, token: &str) -> Result<Grant, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::InvalidToken(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        // A JWS in compact form is three base64url segments; anything else is not looked at
        // further (the library would say the same, less clearly).
        let segments = token.split('.').count();
        if segments != 3
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ApiError::InvalidToken(
                "not a JWT (three base64url segments)".into(),
            ));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                log::debug!("refused a token: {e}");
                ApiError::InvalidToken(why_invalid(e.kind()).into())
            })?;
        let claims = data.claims;
        if !(claims.exp.is_finite() && claims.exp >= 1.0) {
            return Err(ApiError::InvalidToken(
                "exp must be a positive number of seconds".into(),
            ));
        }
        let scope = |claim: Option<ClaimScope>, name| {
            claim.map_or(Ok(Scope::Nothing), |c| c.into_scope(name))
        };
        Ok(Grant {
            // Saturating: an exp beyond year 586,000 is just "never".
            exp_us: (claims.exp * 1e6).min(u64::MAX as f64) as u64,
            read: scope(claims.symbols, "symbols")?,
            publish: scope(claims.publish, "publish")?,
            sub: claims.sub.map(|s| s.chars().take(128).collect()),
        })
    }
}

/// What a client is told of a token the library refused: a fixed text per kind of failure, not
/// the library's own (which names its internals); the detail goes to the debug log.
fn why_invalid(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => "bad signature",
        K::InvalidAlgorithm | K::MissingAlgorithm => "signed with another algorithm",
        K::ImmatureSignature => "not valid yet (nbf)",
        K::InvalidIssuer => "wrong issuer (iss)",
        K::InvalidAudience => "wrong audience (aud)",
        K::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        K::InvalidClaimFormat(_) => "a claim has the wrong type",
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => "bad signature",
        _ => "malformed token",
    }
}

impl Grant {
    /// `ExpiredToken` from `exp` on (RFC 7519 §4.1.4: valid only *before* it).
    pub fn check_time(&self, now_us: u64) -> Result<(), ApiError> {
        if now_us >= self.exp_us {
            Err(ApiError::ExpiredToken)
        } else {
            Ok(())
        }
    }
}

/// Verified tokens by their text. Sharded so that polls on many workers rarely meet on one
/// lock; each shard is bounded, and cleared of expired grants (or wholesale) when full.
///
/// Why a cache: a long-poll presents the same token at every poll, and an RS256 check costs
/// tens of µs, more than the rest of a poll. Only good signatures are kept, so a flood of bad
/// tokens costs a check each but cannot push the good ones out faster than it could anyway.
struct TokenCache {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

/// One shard of the cache: token text -> its grant.
type Shard = may::sync::RwLock<HashMap<Box<str>, Arc<Grant>>>;

impl TokenCache {
    fn new() -> TokenCache {
        TokenCache {
            hasher: RandomState::new(),
            shards: (0..CACHE_SHARDS)
                .map(|_| may::sync::RwLock::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, token: &str) -> &Shard {
        let i = self.hasher.hash_one(token) as usize % self.shards.len();
        &self.shards[i]
    }

    fn get(&self, token: &str) -> Option<Arc<Grant>> {
        let shard = self.shard(token).read().unwrap_or_else(|e| e.into_inner());
        shard.get(token).cloned()
    }

    fn insert(&self, token: &str, grant: Arc<Grant>, now_us: u64) {
        let mut shard = self.shard(token).write().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= CACHE_ENTRIES / CACHE_SHARDS {
            shard.retain(|_, g| g.exp_us > now_us);
            if shard.len() >= CACHE_ENTRIES / CACHE_SHARDS {
                shard.clear();
            }
        }
        shard.insert(token.into(), grant);
    }
}

/// The credentials this server accepts, and its cache of verified tokens.
pub struct Auth {
    /// `--publish-token`, or the one made at start when nothing was configured.
    publish_token: Option<String>,
    verifier: Option<Arc<Verifier>>,
    /// `--public-symbols`: readable without a token.
    public: Scope,
    cache: TokenCache,
}

/// Verify `token` on a coroutine of its own, with a stack of its own, and wait for it.
///
/// Why: decoding and checking a token reaches about 1,300 words deep (HS256), and every page of
/// a coroutine stack that was ever touched stays resident. In place, the first poll with a new
/// token parked on a stack with four pages resident instead of two (16 KiB instead of 8,
/// `tests/held_poll_memory.rs`). On a pooled coroutine it is no better: may hands the dirtied
/// stack to the next connection. A stack size other than the configured one is never pooled:
/// may maps it for this coroutine and unmaps it when it ends, pages and all. A miss happens once
/// per token, so the spawn, the mapping and the join cost little.
fn verify_apart(verifier: &Arc<Verifier>, token: &str) -> Result<Grant, ApiError> {
    /// Added to the configured stack size (in words), to stay out of may's pool.
    const OWN_STACK_EXTRA_WORDS: usize = 1024;
    let apart = Arc::clone(verifier);
    let owned = token.to_owned();
    let builder = may::coroutine::Builder::new()
        .stack_size(may::config().get_stack_size() + OWN_STACK_EXTRA_WORDS);
    match may::go!(builder, move || apart.verify(&owned)) {
        Ok(handle) => match handle.join() {
            Ok(verified) => verified,
            // A bug in the check ends the request that asked, as it would have in place.
            Err(panic) => std::panic::resume_unwind(panic),
        },
        // The coroutine could not be started: check in place rather than refuse the token.
        Err(_) => verifier.verify(token),
    }
}

/// `a == b` in time that depends on the lengths only, not on where they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(
        publish_token: Option<String>,
        jwt: Option<&JwtKey>,
        rules: &JwtRules,
        public: Scope,
    ) -> Result<Auth, String> {
        Ok(Auth {
            publish_token,
            verifier: jwt
                .map(|k| Verifier::new(k, rules).map(Arc::new))
                .transpose()?,
            public,
            cache: TokenCache::new(),
        })
    }

    /// Whether reading needs tokens at all (a JWT key is configured).
    pub fn guards_reads(&self) -> bool {
        self.verifier.is_some()
    }

    /// The grant of a token, verified once and then taken from the cache; refused when expired.
    pub fn grant(&self, token: &str, now_us: u64) -> Result<Arc<Grant>, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Err(ApiError::InvalidToken(
                "this server accepts no JWTs (no --jwt-secret or --jwt-public-key)".into(),
            ));
        };
        // Before the cache, which would hash it: a huge token costs nothing more than a refusal.
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::InvalidToken(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let grant = match self.cache.get(token) {
            Some(grant) => grant,
            None => {
                let grant = Arc::new(verify_apart(verifier, token)?);
                if grant.exp_us > now_us {
                    self.cache.insert(token, Arc::clone(&grant), now_us);
                }
                grant
            }
        };
        grant.check_time(now_us)?;
        Ok(grant)
    }

    /// May the bearer of `token` read `symbols` (normalized)? `Ok(None)`: they are all public,
    /// no token needed; `Ok(Some(exp_us))`: yes, until the token expires.
    pub fn check_read(
        &self,
        token: Option<&str>,
        symbols: &[String],
        now_us: u64,
    ) -> Result<Option<u64>, ApiError> {
        if !self.guards_reads() || symbols.iter().all(|s| self.public.allows(s)) {
            return Ok(None);
        }
        let grant = self.grant(token.ok_or(ApiError::MissingToken)?, now_us)?;
        let guarded = symbols.iter().filter(|s| !self.public.allows(s));
        if let Err(e) = grant.read.check(guarded.map(String::as_str)) {
            if let Some(sub) = &grant.sub {
                log::debug!("{sub:?} may not read: {e}");
            }
            return Err(e);
        }
        Ok(Some(grant.exp_us))
    }

    /// What the bearer of `bearer` (the `Authorization: Bearer` token) may publish: everything
    /// with the publish token, its `publish` claim with a JWT.
    pub fn publisher(&self, bearer: Option<&str>, now_us: u64) -> Result<Scope, ApiError> {
        let token = bearer.ok_or(ApiError::MissingToken)?;
        if let Some(expected) = &self.publish_token {
            if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
                return Ok(Scope::All);
            }
        }
        if self.verifier.is_none() {
            return Err(ApiError::InvalidToken("not the publish token".into()));
        }
        let grant = self.grant(token, now_us)?;
        if let Some(sub) = &grant.sub {
            log::debug!("publishing as {sub:?}");
        }
        Ok(grant.publish.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000_000;

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn auth(public: &str) -> Auth {
        let key = JwtKey::secret(SECRET).unwrap();
        Auth::new(
            Some("pt".into()),
            Some(&key),
            &JwtRules::default(),
            Scope::parse_list(public).unwrap(),
        )
        .unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const EXP: u64 = NOW / 1_000_000 + 60;

    #[test]
    fn a_token_grants_what_its_symbols_claim_names_until_exp() {
        let a = auth("");
        let t = token(json!({"exp": EXP, "symbols": ["ibm", "MSFT"], "sub": "alice"}));
        assert_eq!(
            a.check_read(Some(&t), &names(&["IBM"]), NOW),
            Ok(Some(EXP * 1_000_000))
        );
        assert_eq!(
            a.check_read(Some(&t), &names(&["IBM", "AAPL", "KO"]), NOW),
            Err(ApiError::NotGranted(names(&["AAPL", "KO"])))
        );
        assert_eq!(
            a.check_read(Some(&t), &names(&["IBM"]), EXP * 1_000_000),
            Err(ApiError::ExpiredToken)
        );
        let all = token(json!({"exp": EXP, "symbols": "*"}));
        assert!(a.check_read(Some(&all), &names(&["ZZZ"]), NOW).is_ok());
    }

    #[test]
    fn public_symbols_need_no_token_and_the_rest_still_do() {
        let a = auth("IBM");
        assert_eq!(a.check_read(None, &names(&["IBM"]), NOW), Ok(None));
        assert_eq!(
            a.check_read(None, &names(&["IBM", "MSFT"]), NOW),
            Err(ApiError::MissingToken)
        );
        let t = token(json!({"exp": EXP, "symbols": ["MSFT"]}));
        assert!(a
            .check_read(Some(&t), &names(&["IBM", "MSFT"]), NOW)
            .is_ok());
        assert_eq!(auth("*").check_read(None, &names(&["X"]), NOW), Ok(None));
        // Without a JWT key nothing is guarded.
        let open = Auth::new(None, None, &JwtRules::default(), Scope::Nothing).unwrap();
        assert_eq!(open.check_read(None, &names(&["X"]), NOW), Ok(None));
    }

    #[test]
    fn publishing_takes_the_publish_token_or_a_publish_claim() {
        let a = auth("");
        assert_eq!(a.publisher(Some("pt"), NOW), Ok(Scope::All));
        assert_eq!(a.publisher(None, NOW), Err(ApiError::MissingToken));
        assert!(matches!(
            a.publisher(Some("nope"), NOW),
            Err(ApiError::InvalidToken(_))
        ));
        let reader = token(json!({"exp": EXP, "symbols": "*"}));
        let scope = a.publisher(Some(&reader), NOW).unwrap();
        assert_eq!(
            scope.check(["IBM"].into_iter()),
            Err(ApiError::NotGranted(names(&["IBM"])))
        );
        let writer = token(json!({"exp": EXP, "publish": ["IBM"]}));
        let scope = a.publisher(Some(&writer), NOW).unwrap();
        assert!(scope.check(["IBM"].into_iter()).is_ok());
        // Without a JWT key only the publish token counts.
        let plain = Auth::new(
            Some("pt".into()),
            None,
            &JwtRules::default(),
            Scope::Nothing,
        )
        .unwrap();
        assert!(matches!(
            plain.publisher(Some(&writer), NOW),
            Err(ApiError::InvalidToken(_))
        ));
    }

    #[test]
    fn malformed_tokens_are_invalid_not_panics() {
        let a = auth("");
        let good = token(json!({"exp": EXP, "symbols": "*"}));
        let (h, rest) = good.split_once('.').unwrap();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let cases = [
            String::new(),
            "a".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!!.???.***".into(),
            format!("{none_header}.{}.", rest.split('.').next().unwrap()),
            format!("{}.{rest}", "A".repeat(10_000)),
            format!("{h}.{rest}x"),
            token(json!({"symbols": "*"})),                // no exp
            token(json!({"exp": "soon", "symbols": "*"})), // exp not a number
            token(json!({"exp": EXP, "symbols": "IBM"})),  // a string other than *
            token(json!({"exp": EXP, "symbols": ["A B"]})),
            token(json!({"exp": -5, "symbols": "*"})),
        ];
        for t in cases {
            let r = a.check_read(Some(&t), &names(&["IBM"]), NOW);
            assert!(matches!(r, Err(ApiError::InvalidToken(_))), "{t:?}: {r:?}");
        }
    }

    #[test]
    fn a_token_signed_with_another_key_or_algorithm_is_invalid() {
        let a = auth("");
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": EXP, "symbols": "*"}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!!").unwrap(),
        )
        .unwrap();
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"exp": EXP, "symbols": "*"}),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        for t in [other, hs384] {
            assert!(matches!(
                a.check_read(Some(&t), &names(&["IBM"]), NOW),
                Err(ApiError::InvalidToken(_))
            ));
        }
    }

    #[test]
    fn a_cached_grant_still_expires() {
        let a = auth("");
        let t = token(json!({"exp": EXP, "symbols": "*"}));
        assert!(a.check_read(Some(&t), &names(&["IBM"]), NOW).is_ok());
        assert!(a.cache.get(&t).is_some());
        assert_eq!(
            a.check_read(Some(&t), &names(&["IBM"]), EXP * 1_000_000 + 1),
            Err(ApiError::ExpiredToken)
        );
    }

    #[test]
    fn secrets_must_be_long_enough_and_never_print() {
        assert!(JwtKey::secret("short").is_err());
        let k = JwtKey::secret(SECRET).unwrap();
        assert!(!format!("{k:?}").contains(SECRET));
        assert!(
            JwtKey::from_pem(b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn issuer_audience_and_not_before_are_checked_when_asked_for() {
        let key = JwtKey::secret(SECRET).unwrap();
        let rules = JwtRules {
            issuer: Some("https://idp.example".into()),
            audience: Some("quotes".into()),
        };
        let a = Auth::new(None, Some(&key), &rules, Scope::Nothing).unwrap();
        let good = token(
            json!({"exp": EXP, "symbols": "*", "iss": "https://idp.example", "aud": "quotes"}),
        );
        assert!(a.check_read(Some(&good), &names(&["X"]), NOW).is_ok());
        for t in [
            token(json!({"exp": EXP, "symbols": "*", "iss": "https://idp.example"})),
            token(json!({"exp": EXP, "symbols": "*", "iss": "https://other", "aud": "quotes"})),
            token(json!({"exp": EXP, "symbols": "*", "iss": "https://idp.example", "aud": "mail"})),
        ] {
            assert!(matches!(
                a.check_read(Some(&t), &names(&["X"]), NOW),
                Err(ApiError::InvalidToken(_))
            ));
        }
        // nbf in the future (on the library's clock, now): not valid yet.
        let later =
            token(json!({"exp": u64::MAX / 2_000_000, "nbf": 4_000_000_000u64, "symbols": "*"}));
        assert_eq!(
            auth("").check_read(Some(&later), &names(&["X"]), NOW),
            Err(ApiError::InvalidToken("not valid yet (nbf)".into()))
        );
    }

    #[test]
    fn rsa_keys_are_measured_from_their_der() {
        // SEQUENCE { INTEGER 0x00 || 256 bytes, INTEGER 65537 }
        let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00];
        der.extend(std::iter::repeat_n(0xab, 256));
        der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(rsa_modulus_bits(&der), Some(2048));
        assert_eq!(rsa_modulus_bits(&der[..20]), None);
        assert_eq!(rsa_modulus_bits(&[0x30, 0x81]), None);
        assert_eq!(rsa_modulus_bits(&[]), None);
    }

    #[test]
    fn scopes_parse_star_and_lists() {
        assert_eq!(Scope::parse_list("*"), Ok(Scope::All));
        assert_eq!(Scope::parse_list(""), Ok(Scope::Nothing));
        let s = Scope::parse_list("ibm, msft,IBM").unwrap();
        assert!(s.allows("IBM") && s.allows("MSFT") && !s.allows("KO"));
        assert!(Scope::parse_list("A B").is_err());
    }
}
