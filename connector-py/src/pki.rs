//! Throw-away certificates for tests and local experiments.

use pyo3::prelude::*;

use crate::errors::Failure;

/// A certificate authority generated in memory, with certificates issued on
/// demand. For tests and demos only; production uses its own PKI.
#[pyclass(module = "connector._connector", name = "ThrowawayCa", frozen)]
pub struct ThrowawayCa {
    ca: connector_core::pki::ThrowawayCa,
}

#[pymethods]
impl ThrowawayCa {
    #[new]
    #[pyo3(signature = (name="connector test CA"))]
    fn new(name: &str) -> PyResult<Self> {
        let ca = connector_core::pki::ThrowawayCa::new(name)
            .map_err(|e| Failure::Config(format!("cannot generate a CA: {e}")))?;
        Ok(Self { ca })
    }

    /// The CA certificate (PEM): what agents trust (`ca=`) and what a server
    /// checks client certificates against (`client_ca=`).
    #[getter]
    fn cert_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// Issues a certificate for `common_name` with `names` (DNS names or IP
    /// addresses) as subject alternative names; returns `(cert_pem, key_pem)`.
    #[pyo3(signature = (common_name, names=Vec::new()))]
    fn issue(&self, common_name: &str, names: Vec<String>) -> PyResult<(String, String)> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let issued = self
            .ca
            .issue(common_name, &names)
            .map_err(|e| Failure::Config(format!("cannot issue a certificate for {common_name:?}: {e}")))?;
        Ok((issued.cert_pem, issued.key_pem))
    }

    fn __repr__(&self) -> String {
        "<connector.ThrowawayCa>".into()
    }
}
