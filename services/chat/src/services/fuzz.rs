//! Fuzzing of request validation (proptest: cargo-fuzz needs a nightly compiler): every check
//! a request's text, names, credentials, token and address go through, fed arbitrary input,
//! never panics, and what it accepts is safe — nothing invisible, direction-changing or
//! terminal-controlling reaches storage or another user's screen — while ordinary text
//! passes. The case count bounds the time (a few seconds in CI); `PROPTEST_CASES` raises it.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tonic::Request;

use super::{
    auth::{check_display_name, check_password, check_profile_text, check_username},
    check_name, client_address, is_deceptive,
};
use crate::{
    store::messages::{MAX_TEXT_CHARS, check_text},
    token::{Claims, Signer},
};

/// Strings rich in what the checks are for: controls, escapes, bidi and invisible characters,
/// emoji joiners, combining marks, and plain text.
fn hostile() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        any::<char>().prop_map(String::from),
        Just("\u{1b}[31m".to_string()),
        Just("\u{202e}".to_string()),
        Just("\u{200b}".to_string()),
        Just("\u{200d}".to_string()),
        Just("\u{feff}".to_string()),
        Just("\u{9b}".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("\u{0301}".to_string()),
        "[a-zA-Z0-9 ]{1,8}",
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn accepted_message_text_controls_no_terminal(text in hostile()) {
        if check_text(&text).is_ok() {
            prop_assert!(!text.trim().is_empty());
            prop_assert!(text.chars().count() <= MAX_TEXT_CHARS);
            prop_assert!(text.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'));
        }
    }

    #[test]
    fn accepted_names_hide_nothing(name in hostile()) {
        if check_name("group", &name).is_ok() {
            prop_assert!(!name.trim().is_empty() && name.chars().count() <= 100);
            prop_assert!(name.chars().all(|c| !c.is_control() && !is_deceptive(c)));
        }
        if check_display_name(&name).is_ok() {
            prop_assert!(name.chars().count() <= 64);
            prop_assert!(name.chars().all(|c| (!c.is_control() || c == '\n') && !is_deceptive(c)));
        }
        if check_profile_text("bio", &name, 512).is_ok() {
            prop_assert!(name.chars().all(|c| !c.is_control() || c == '\n'));
        }
    }

    #[test]
    fn plain_text_passes(text in "[a-zA-Z0-9][a-zA-Z0-9 .,!?]{0,60}") {
        prop_assert!(check_text(&text).is_ok());
        prop_assert!(check_name("channel", &text).is_ok());
        prop_assert!(check_display_name(&text).is_ok());
    }

    #[test]
    fn accepted_usernames_are_plain_ascii(name in hostile(), password in hostile()) {
        if check_username(&name).is_ok() {
            prop_assert!((3..=32).contains(&name.len()));
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b'-')));
        }
        if check_password(&password).is_ok() {
            prop_assert!((8..=128).contains(&password.chars().count()));
        }
    }

    #[test]
    fn no_token_is_forged_from_bytes(token in "[A-Za-z0-9_.\\-]{0,200}", raw in any::<Vec<u8>>()) {
        let signer = Signer::from_pem(TEST_KEY).unwrap();
        let verifier = signer.verifier();
        prop_assert!(verifier.verify(&token, 0).is_err());
        let lossy = String::from_utf8_lossy(&raw);
        prop_assert!(verifier.verify(&lossy, 0).is_err());
        // A genuine token with one byte changed is refused too.
        let genuine = signer.sign(&Claims {
            sub: 1,
            usr: "ada".into(),
            iat: 0,
            exp: i64::MAX,
            kid: String::new(),
            sid: String::new(),
        });
        if let Some(&b) = raw.first() {
            let at = usize::from(b) % genuine.len();
            let mut bytes = genuine.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert!(tampered == genuine || verifier.verify(&tampered, 0).is_err());
        }
    }

    #[test]
    fn any_forwarded_header_yields_an_address_or_none(header in "[ -~]{0,120}") {
        let mut req = Request::new(());
        if let Ok(value) = header.parse() {
            req.metadata_mut().insert("x-forwarded-for", value);
        }
        // Whatever a client or proxy wrote, the address is the last entry's, or there is none.
        if let Some(ip) = client_address(&req) {
            let last = header.rsplit(',').next().unwrap_or_default().trim();
            let parsed = last.parse::<std::net::IpAddr>().map(|a| a.to_canonical()).ok();
            prop_assert_eq!(parsed, Some(ip));
        }
    }
}

/// A throwaway Ed25519 key (PKCS#8), for signing in these properties only.
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH
-----END PRIVATE KEY-----
";
