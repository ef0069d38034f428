//! The C ABI as a C caller sees it: entry points declared here with the
//! header's signatures (enums as `uint32_t`) and called with values C
//! allows, however out of range. Run natively by `cargo test` and under
//! Miri in CI, which reports undefined behaviour at the call (an out-of-range
//! value reaching a Rust enum) even when it happens not to crash.

use std::ffi::{CStr, c_char, c_void};

use crate::connector_result;
use crate::error::connector_string_free;

// Declared as in include/connector.h, not imported from Rust: these are the
// types a C caller passes (a C enum is any `int`-sized value; handles are
// opaque pointers).
unsafe extern "C" {
    fn connector_result_name(result: u32) -> *const c_char;
    fn connector_server_dial(
        server: *const c_void,
        kind: u32,
        selector_arg: *const c_char,
        target: *const c_char,
        timeout_us: u64,
        cancel: *const c_void,
        out: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> connector_result;
    fn connector_server_dial_fd(
        server: *const c_void,
        kind: u32,
        selector_arg: *const c_char,
        target: *const c_char,
        timeout_us: u64,
        cancel: *const c_void,
        fd: *mut i32,
        out: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> connector_result;
    fn connector_server_start_frontend(
        server: *const c_void,
        protocol: u32,
        bind: *const c_char,
        cert_path: *const c_char,
        key_path: *const c_char,
        client_ca_path: *const c_char,
        allowed_clients: *const c_char,
        limits: *const crate::frontend::connector_frontend_limits,
        out: *mut *mut c_char,
        error: *mut *mut c_char,
    ) -> connector_result;
}

/// Values a C caller can pass for an enum that are none of its constants:
/// just past the last, far out, and -1.
fn out_of_range(past_last: u32) -> [u32; 4] {
    [past_last, 100, 1000, -1i32 as u32]
}

/// Takes the message an entry point left in `error`.
fn take(error: *mut c_char) -> String {
    assert!(!error.is_null(), "an error comes with a message");
    // SAFETY: a string from the library, freed just after.
    let text = unsafe { CStr::from_ptr(error) }.to_str().unwrap().to_owned();
    unsafe { connector_string_free(error) };
    text
}

#[test]
fn connector_result_name_takes_any_value() {
    for value in 0..=18 {
        // SAFETY: the function accepts any value and returns a static string.
        let name = unsafe { CStr::from_ptr(connector_result_name(value)) };
        assert!(name.to_str().unwrap().starts_with("CONNECTOR_"), "{value}: {name:?}");
    }
    for value in out_of_range(19) {
        // SAFETY: as above.
        let name = unsafe { CStr::from_ptr(connector_result_name(value)) };
        assert_eq!(name.to_str().unwrap(), "(unknown connector_result)", "{value}");
    }
}

#[test]
fn selector_kinds_out_of_range_are_invalid_arguments() {
    let target = c"127.0.0.1:1".as_ptr();
    for kind in out_of_range(4) {
        let (mut out, mut error, mut fd) = (std::ptr::null_mut(), std::ptr::null_mut(), -1);
        // SAFETY: every pointer is valid or null where null is allowed. The
        // kind is checked before the (null) server handle.
        let got = unsafe {
            connector_server_dial(
                std::ptr::null(),
                kind,
                std::ptr::null(),
                target,
                0,
                std::ptr::null(),
                &mut out,
                &mut error,
            )
        };
        assert_eq!(
            got,
            connector_result::CONNECTOR_ERR_INVALID_ARGUMENT,
            "dial, kind {kind}"
        );
        assert_eq!(
            take(error),
            format!("kind {kind} is not a connector_selector_kind value")
        );
        error = std::ptr::null_mut();
        // SAFETY: as above.
        let got = unsafe {
            connector_server_dial_fd(
                std::ptr::null(),
                kind,
                std::ptr::null(),
                target,
                0,
                std::ptr::null(),
                &mut fd,
                &mut out,
                &mut error,
            )
        };
        assert_eq!(
            got,
            connector_result::CONNECTOR_ERR_INVALID_ARGUMENT,
            "dial_fd, kind {kind}"
        );
        assert_eq!(
            take(error),
            format!("kind {kind} is not a connector_selector_kind value")
        );
        assert!(out.is_null() && fd == -1, "nothing handed out");
    }
}

#[test]
fn frontend_protocols_out_of_range_are_invalid_arguments() {
    use std::ptr::null;
    for protocol in out_of_range(2) {
        let (mut out, mut error) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: every pointer is valid or null where null is allowed.
        let got = unsafe {
            connector_server_start_frontend(
                null(),
                protocol,
                c"tcp://127.0.0.1:0".as_ptr(),
                null(),
                null(),
                null(),
                null(),
                null(),
                &mut out,
                &mut error,
            )
        };
        assert_eq!(
            got,
            connector_result::CONNECTOR_ERR_INVALID_ARGUMENT,
            "protocol {protocol}"
        );
        assert_eq!(
            take(error),
            format!("protocol {protocol} is not a connector_frontend_protocol value")
        );
        assert!(out.is_null());
    }
}

/// The C header itself: no function takes an enum (or a `bool`) as input,
/// by value or behind a `const` pointer, since C may pass any integer there
/// and Rust would read it as the enum.
/// Catches a new enum parameter before any caller does.
#[test]
#[cfg_attr(miri, ignore = "reads a file")]
fn no_function_in_the_header_takes_an_enum_or_a_bool() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/connector.h")).unwrap();
    let code: String = header
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.starts_with("//") && !line.starts_with('#') && !line.starts_with('*') && !line.starts_with("/*")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut enums = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("typedef enum") {
        rest = &rest[at..];
        let end = rest.find(';').unwrap();
        let name = rest[..end].rsplit('}').next().unwrap().trim().to_owned();
        enums.push(name);
        rest = &rest[end..];
    }
    assert!(
        enums.contains(&"connector_selector_kind".to_owned()),
        "enums found: {enums:?}"
    );
    let mut functions = 0;
    for declaration in code.split(';').map(str::trim) {
        let (Some(open), Some(close)) = (declaration.find('('), declaration.rfind(')')) else {
            continue;
        };
        if declaration.starts_with("typedef") || !declaration.contains("connector_") {
            continue;
        }
        functions += 1;
        for param in declaration[open + 1..close].split(',') {
            let param = param.trim();
            // An out-parameter (`connector_result *ended`) is written by the
            // library, never read: only values and `const` pointers are inputs.
            if param.contains('*') && !param.starts_with("const ") {
                continue;
            }
            let words: Vec<&str> = param.split_whitespace().collect();
            for word in &words[..words.len().saturating_sub(1)] {
                let word = word.trim_matches('*');
                assert!(
                    word != "bool" && !enums.iter().any(|e| e == word),
                    "a C caller may pass any value for `{param}` in: {declaration}"
                );
            }
        }
    }
    assert!(functions > 50, "only {functions} functions found: the parser is broken");
}
