//! Throwaway certificates for tests and demos, so a C or Go test needs no
//! PKI tooling.

use std::ffi::c_char;

use connector_core::pki::ThrowawayCa;

use crate::connector_result;
use crate::error::{Error, arg_str, check_out, guard, to_c_string, write_out};

/// Creates a fresh CA and a certificate it issued for `names`
/// (comma-separated DNS names or IP addresses, e.g. `"localhost,127.0.0.1"`),
/// as PEM strings in `*ca_pem`, `*cert_pem` and `*key_pem` (free each with
/// `connector_string_free`). The key never leaves the caller's process.
/// For tests only: nothing revokes or rotates these.
///
/// # Safety
/// `names` NUL-terminated; out-parameters writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_test_certificates(
    names: *const c_char,
    ca_pem: *mut *mut c_char,
    cert_pem: *mut *mut c_char,
    key_pem: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        check_out(ca_pem, "ca_pem")?;
        check_out(cert_pem, "cert_pem")?;
        check_out(key_pem, "key_pem")?;
        let names: Vec<&str> = arg_str(names, "names")?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err(Error::invalid("names is empty"));
        }
        let failed = |e: rcgen::Error| Error::new(connector_result::CONNECTOR_ERR_SETUP, e.to_string());
        let ca = ThrowawayCa::new("connector throwaway CA").map_err(failed)?;
        let issued = ca.issue(names[0], &names).map_err(failed)?;
        write_out(ca_pem, to_c_string(&ca.cert_pem()), "ca_pem")?;
        write_out(cert_pem, to_c_string(&issued.cert_pem), "cert_pem")?;
        write_out(key_pem, to_c_string(&issued.key_pem), "key_pem")
    })
}
