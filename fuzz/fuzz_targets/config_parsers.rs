//! Every text the operator configures: agent identifiers, destination-policy
//! rules, proxy strategies, the tokens file, and the dial target syntax.
//! Parsers never panic, and what they accept prints back to text that parses
//! to the same value.
#![no_main]

use connector_core::Identifiers;
use connector_core::agent::{DestinationPolicy, Rule};
use connector_core::auth::{TokenFileError, parse_tokens};
use connector_core::server::{ProxyStrategy, Selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ids) = text.parse::<Identifiers>() {
        let shown = ids.to_string();
        let again: Identifiers = shown.parse().expect("displayed identifiers parse");
        assert_eq!(again, ids, "{shown}");
        let _ = ids.serves(text);
    }
    if let Ok(rule) = text.parse::<Rule>() {
        let shown = rule.to_string();
        let again: Rule = shown.parse().expect("displayed rule parses");
        assert_eq!(again, rule, "{shown}");
        let policy = DestinationPolicy::new(vec![rule]);
        for addr in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "fe80::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "100.100.100.200",
            "168.63.129.16",
            "127.0.0.1",
            "::1",
            "::ffff:169.254.169.254",
            // Guarded IPv4 addresses inside IPv6 ones: IPv4-compatible,
            // NAT64 (well-known and local-use prefixes), 6to4.
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            // Only a rule inside the guarded range unlocks it; a name rule never
            // does: for a guarded address the name makes no difference (the rule's
            // own text is a name it matches, when it is a name rule).
            let addr = addr.parse().unwrap();
            for port in [80, 443, 10250] {
                assert_eq!(
                    policy.check(Some(text), addr, port).is_ok(),
                    policy.check(None, addr, port).is_ok(),
                    "the name {text:?} changed the verdict on {addr}:{port}"
                );
            }
        }
    }
    let _ = text.parse::<ProxyStrategy>();
    if let Err(TokenFileError::Syntax { line, reason, .. }) = parse_tokens(text, "F") {
        // A syntax error does not depend on the token of its line: replacing
        // the token (when it appears nowhere else on the line) gives the same
        // error, so the error cannot be quoting it.
        let lines: Vec<&str> = text.lines().collect();
        let bad = lines[line - 1];
        let content = bad.split('#').next().unwrap_or("");
        let mut cols = content.split_whitespace();
        if let Some(token) = cols.next()
            && !cols.any(|c| c.contains(token))
            && !bad.contains('\r')
        {
            let at = content.find(token).expect("first column");
            let replaced = format!("{}{}{}", &bad[..at], "0".repeat(token.len()), &bad[at + token.len()..]);
            let mut other = lines.clone();
            other[line - 1] = &replaced;
            if let Err(TokenFileError::Syntax {
                line: l2, reason: r2, ..
            }) = parse_tokens(&other.join("\n"), "F")
                && l2 == line
            {
                assert_eq!(reason, r2, "the error depends on the token");
            }
        }
    }
    let _ = Selector::for_target(text);
});
