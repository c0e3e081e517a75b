//! Property tests of the parsers that face the network: the request head, the query string, the
//! chunked decoder, the publish body and the JWT verifier. Arbitrary bytes never panic and always yield a valid
//! parse or a client error; valid inputs round-trip. Each property runs a bounded number of cases.

use comet_quotes::auth::{JwtKey, JwtRules, Verifier};
use comet_quotes::error::ApiError;
use comet_quotes::http::protocol::{
    decode_chunked, parse_head, BodyLength, ChunkedDecoder, HeadScanner, MAX_HEAD, MAX_HEADERS,
};
use comet_quotes::request::{parse_publish, Query};
use proptest::prelude::*;

/// 300 cases each, or `PROPTEST_CASES` for a longer run.
fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// What the chunked decoder made of `wire`: a body within `max` that took no more than the wire,
/// more needed, or a 400/413; never anything else.
fn decoded_properly(wire: &[u8], max: usize) -> Result<(), TestCaseError> {
    match decode_chunked(wire, max) {
        Ok(Some((body, used))) => {
            prop_assert!(used <= wire.len());
            prop_assert!(body.len() <= max);
        }
        Ok(None) => {}
        Err(e) => prop_assert!(matches!(e.status(), 400 | 413), "{e:?}"),
    }
    Ok(())
}

/// `body` in chunks of the sizes in `cuts` (the rest in one last chunk), with an extension on
/// every size line when `ext`, size in upper-case hex when `upper`; no last chunk yet.
fn chunks(body: &[u8], cuts: &[usize], ext: &str, upper: bool) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = body;
    for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        if rest.is_empty() {
            break;
        }
        let n = (*cut).min(rest.len());
        let size = if upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        wire.extend_from_slice(size.as_bytes());
        wire.extend_from_slice(ext.as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&rest[..n]);
        wire.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    wire
}

/// Every refusal is a client error, or 501 for a transfer coding the server cannot undo.
fn refused_properly(e: &ApiError) -> bool {
    (400..500).contains(&e.status()) || e.status() == 501
}

/// Bytes that look like HTTP some of the time: printable runs, CRLFs, colons and noise.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"GET POST HEAD / ? = & : , \r\n HTTP/1.1 Host".to_vec()),
            2 => any::<u8>(),
            1 => Just(b'\r'),
            1 => Just(b'\n'),
        ],
        0..400,
    )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn arbitrary_bytes_never_panic_the_head_parser(bytes in prop_oneof![http_ish(), prop::collection::vec(any::<u8>(), 0..600)]) {
        match parse_head(&bytes, 1024) {
            Ok(Some(head)) => prop_assert!(head.head_len <= bytes.len()),
            Ok(None) => {}
            Err(e) => prop_assert!(refused_properly(&e), "{e:?}"),
        }
    }

    #[test]
    fn valid_heads_round_trip(
        method in prop::sample::select(vec!["GET", "HEAD", "POST", "DELETE"]),
        path in "(/[a-z0-9._-]{0,12}){1,4}",
        query in prop::collection::vec(("[a-z]{1,8}", "[A-Za-z0-9,.%]{0,12}"), 0..4),
        headers in prop::collection::vec(("X-[A-Za-z]{1,12}", "[ -~]{0,40}"), 0..20),
        length in 0usize..2000,
        close in any::<bool>(),
    ) {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = query.join("&");
        let target = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in &headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {length}\r\n"));
        if close {
            raw.push_str("Connection: close\r\n");
        }
        raw.push_str("\r\n");
        let head = parse_head(raw.as_bytes(), 1_000_000).unwrap().unwrap();
        prop_assert_eq!(head.head_len, raw.len());
        prop_assert_eq!(&head.req.method, method);
        prop_assert_eq!(&head.req.path, &path);
        prop_assert_eq!(&head.req.query, &query);
        prop_assert_eq!(head.body, BodyLength::Length(length));
        prop_assert_eq!(head.keep_alive, !close);
        // Cut anywhere before its end, the same head asks for more bytes.
        let cut = raw.len() / 2;
        prop_assert!(matches!(parse_head(&raw.as_bytes()[..cut], 1_000_000), Ok(None) | Err(_)));
    }

    #[test]
    fn arbitrary_query_strings_never_panic(q in "[ -~]{0,200}") {
        let parsed = Query::parse(&q);
        let _ = parsed.get("symbols");
        let _ = parsed.get("cursor");
    }

    #[test]
    fn encoded_query_values_round_trip(
        pairs in prop::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 1..6),
    ) {
        // Percent-encode everything outside unreserved characters, as a browser's
        // URLSearchParams would (space as +).
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                    b' ' => "+".to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
        let q = q.join("&");
        let parsed = Query::parse(&q);
        for (k, v) in &pairs {
            prop_assert_eq!(parsed.get(k), Some(v.as_str()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_chunked_decoder(
        bytes in prop_oneof![
            prop::collection::vec(prop::sample::select(b"0123456789abcdefABCDEF;=x\r\n ".to_vec()), 0..300),
            prop::collection::vec(any::<u8>(), 0..300),
        ],
        max in 0usize..500,
    ) {
        decoded_properly(&bytes, max)?;
    }

    #[test]
    fn chunked_bodies_round_trip(
        body in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(1usize..700, 0..12),
        ext in any::<bool>(),
        trailers in prop::collection::vec(("X-[A-Za-z]{1,8}", "[a-z0-9]{0,10}"), 0..3),
        upper in any::<bool>(),
    ) {
        let mut wire = chunks(&body, &cuts, if ext { ";name=value" } else { "" }, upper);
        wire.extend_from_slice(b"0\r\n");
        for (n, v) in &trailers {
            wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        let (decoded, used) = decode_chunked(&wire, body.len()).unwrap().unwrap();
        prop_assert_eq!(&decoded, &body);
        prop_assert_eq!(used, wire.len());
        // One byte less is never a complete body.
        prop_assert_eq!(decode_chunked(&wire[..wire.len() - 1], body.len()), Ok(None));
        // One byte over the cap is refused.
        if !body.is_empty() {
            let too_small = decode_chunked(&wire, body.len() - 1).err().map(|e| e.status());
            prop_assert_eq!(too_small, Some(413));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_publish_parser(
        bytes in prop_oneof![
            prop::collection::vec(prop::sample::select(br#"{}[]":,symbolprice0123456789.-eE "#.to_vec()), 0..200),
            prop::collection::vec(any::<u8>(), 0..200),
        ],
    ) {
        if let Err(e) = parse_publish(&bytes) {
            prop_assert!((400..500).contains(&e.status()), "{e:?}");
        }
    }

    #[test]
    fn valid_publish_bodies_round_trip(
        updates in prop::collection::vec(("[A-Za-z][A-Za-z0-9.-]{0,7}", 0u64..100_000_000), 1..20),
        as_array in any::<bool>(),
    ) {
        let items: Vec<serde_json::Value> = updates
            .iter()
            .map(|(s, cents)| serde_json::json!({ "symbol": s, "price": *cents as f64 / 100.0 }))
            .collect();
        let body = if as_array || items.len() > 1 {
            serde_json::Value::Array(items).to_string()
        } else {
            items[0].to_string()
        };
        let parsed = parse_publish(body.as_bytes()).unwrap();
        prop_assert_eq!(parsed.len(), updates.len());
        for ((sym, price), (want_sym, cents)) in parsed.iter().zip(&updates) {
            prop_assert_eq!(sym, &want_sym.to_ascii_uppercase());
            prop_assert_eq!(*price, *cents as f64 / 100.0);
        }
    }
}

/// base64url without padding, as JWT segments are written.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

const TEST_SECRET: &str = "property-test-secret-of-32-bytes";

fn hs256_verifier() -> Verifier {
    Verifier::new(&JwtKey::secret(TEST_SECRET).unwrap(), &JwtRules::default()).unwrap()
}

/// A JWT header: the algorithms an attacker would try, or noise, sometimes huge.
fn jwt_header() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "none", "None", "HS256", "HS512", "RS256", "ES256", "PS256", "EdDSA", ""
        ])
        .prop_map(|alg| b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes())),
        Just(b64url(br#"{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"}}"#)),
        Just(b64url(br#"{"alg":"HS256","kid":"../../etc/passwd"}"#)),
        Just(b64url(br#"{"typ":"JWT"}"#)),
        Just(b64url(b"[]")),
        (1usize..20_000).prop_map(|n| b64url(
            format!(r#"{{"alg":"HS256","x":"{}"}}"#, "A".repeat(n)).as_bytes()
        )),
        "[A-Za-z0-9_-]{0,60}",
        prop::collection::vec(any::<u8>(), 0..60)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Claims as an attacker would shape them: exp at the edges of every number type, scopes of
/// every shape.
fn jwt_claims() -> impl Strategy<Value = String> {
    let exp = prop_oneof![
        Just("1e400".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1.8e19".to_string()),
        Just("\"soon\"".to_string()),
        Just("null".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
    ];
    let scope = prop_oneof![
        Just("\"*\"".to_string()),
        Just("\"IBM\"".to_string()),
        Just("[]".to_string()),
        Just("42".to_string()),
        prop::collection::vec("[A-Za-z0-9 .<>-]{0,14}", 0..6)
            .prop_map(|v| serde_json::json!(v).to_string()),
        (0usize..6000).prop_map(|n| serde_json::json!(vec!["A"; n]).to_string()),
    ];
    (exp, scope.clone(), scope, any::<bool>()).prop_map(|(exp, symbols, publish, sub)| {
        let sub = if sub { r#","sub":"someone""# } else { "" };
        format!(r#"{{"exp":{exp},"symbols":{symbols},"publish":{publish}{sub}}}"#)
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn malformed_tokens_are_invalid_and_never_panic(
        header in jwt_header(),
        claims in jwt_claims(),
        signature in prop_oneof![Just(String::new()), "[A-Za-z0-9_-]{1,90}", "[ -~]{0,20}"],
        segments in 0usize..6,
    ) {
        let parts = [header, b64url(claims.as_bytes()), signature];
        let token = match segments {
            3 => parts.join("."),
            n => parts.iter().cycle().take(n).cloned().collect::<Vec<_>>().join("."),
        };
        // Not signed with the server's key: never accepted, always a 401 (never a panic).
        let r = hs256_verifier().verify(&token);
        prop_assert!(matches!(r, Err(ApiError::InvalidToken(_))), "{:.80}: {:?}", token, r);
    }

    #[test]
    fn correctly_signed_tokens_with_hostile_claims_never_panic(claims in jwt_claims()) {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let value: serde_json::Value = match serde_json::from_str(&claims) {
            Ok(v) => v,
            Err(_) => return Ok(()), // 1e400 is not JSON a signer could write
        };
        let token = encode(
            &Header::default(),
            &value,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        match hs256_verifier().verify(&token) {
            Ok(grant) => prop_assert!(grant.exp_us > 0),
            Err(e) => prop_assert!(matches!(e, ApiError::InvalidToken(_)), "{e:?}"),
        }
    }
}

#[test]
fn b64url_matches_the_rfc_4648_vectors() {
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(b"foob"), "Zm9vYg");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

/// A chunk-size line at the edges: 1 to 20 hex digits, values near the top of u64 and usize,
/// zero-padded, with or without an extension.
fn edge_size_line() -> impl Strategy<Value = String> {
    let digits = prop_oneof![
        (1usize..=20).prop_map(|n| "f".repeat(n)),
        (1usize..=20).prop_map(|n| format!("{}1", "0".repeat(n - 1))),
        Just(format!("{:x}", usize::MAX)),
        Just(format!("{:x}", usize::MAX - 1)),
        Just(format!("{:x}", u64::MAX / 2 + 1)),
        Just(format!("{:x}", u32::MAX)),
        (0u64..=u64::MAX).prop_map(|n| format!("{n:x}")),
        (0u64..=u64::MAX).prop_map(|n| format!("{n:X}")),
    ];
    (digits, any::<bool>()).prop_map(|(d, ext)| if ext { format!("{d};x=y") } else { d })
}

/// `wire` fed to one decoder in two parts, split at `cut`: the same outcome as in one piece.
fn decode_split(wire: &[u8], cut: usize, max: usize) -> Result<Option<(Vec<u8>, usize)>, ApiError> {
    let mut d = ChunkedDecoder::new(max);
    let (first, done) = d.feed(&wire[..cut])?;
    if done {
        return Ok(Some((d.into_body(), first)));
    }
    let (second, done) = d.feed(&wire[cut..])?;
    Ok(done.then(|| (d.into_body(), first + second)))
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn chunk_sizes_at_the_edges_are_refused_and_never_overflow(
        prefix in prop::collection::vec(1usize..40, 0..4),
        size in edge_size_line(),
        tail in prop::collection::vec(any::<u8>(), 0..40),
        max in prop_oneof![Just(0usize), 1usize..100_000, Just(usize::MAX / 2), Just(usize::MAX)],
    ) {
        // Some well-formed chunks first, so the body is not empty when the huge size comes.
        let mut wire = Vec::new();
        for n in &prefix {
            wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            wire.extend(std::iter::repeat_n(b'a', *n));
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(size.as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&tail);
        decoded_properly(&wire, max)?;
    }

    #[test]
    fn a_chunked_body_split_at_every_byte_decodes_the_same(
        body in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(1usize..60, 0..6),
        ext in any::<bool>(),
        trailer in any::<bool>(),
        max_slack in 0usize..3,
    ) {
        let mut wire = chunks(&body, &cuts, if ext { ";e=1" } else { "" }, false);
        wire.extend_from_slice(b"0\r\n");
        if trailer {
            wire.extend_from_slice(b"X-T: 1\r\n");
        }
        wire.extend_from_slice(b"\r\nNEXT");
        // Sometimes the cap is one byte short of the body.
        let max = (body.len() + max_slack).saturating_sub(1);
        let whole = decode_chunked(&wire, max);
        if max >= body.len() {
            let (decoded, used) = whole.clone().unwrap().unwrap();
            prop_assert_eq!(&decoded, &body);
            prop_assert_eq!(&wire[used..], b"NEXT");
        } else {
            prop_assert_eq!(whole.clone().err().map(|e| e.status()), Some(413));
        }
        for cut in 0..=wire.len() {
            prop_assert_eq!(decode_split(&wire, cut, max), whole.clone(), "cut at {}", cut);
        }
    }

    #[test]
    fn heads_near_the_limits_parse_or_are_431_however_they_arrive(
        n_headers in (MAX_HEADERS - 4)..(MAX_HEADERS + 4),
        value_len in prop_oneof![0usize..40, (MAX_HEAD / MAX_HEADERS - 40)..(MAX_HEAD / MAX_HEADERS + 40)],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let mut raw = b"GET /api/quotes?symbols=IBM HTTP/1.1\r\n".to_vec();
        for i in 1..n_headers {
            raw.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(value_len)).as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let whole = parse_head(&raw, 1000).map(|h| h.map(|h| h.head_len));
        let fits = raw.len() <= MAX_HEAD && n_headers - 1 <= MAX_HEADERS;
        if fits {
            prop_assert_eq!(whole.clone(), Ok(Some(raw.len())));
        } else {
            prop_assert_eq!(whole.clone().err().map(|e| e.status()), Some(431));
        }
        // Fed in pieces, one scanner: the same outcome.
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(raw.len())).collect();
        points.sort_unstable();
        let mut scan = HeadScanner::default();
        let mut outcome = Ok(None);
        for end in points.into_iter().chain(std::iter::once(raw.len())) {
            outcome = scan.parse(&raw[..end], 1000).map(|h| h.map(|h| h.head_len));
            if !matches!(outcome, Ok(None)) {
                break;
            }
        }
        prop_assert_eq!(outcome, whole);
    }
}
