//! amqps:// for amqprs: the system's roots and, when configured, a private
//! CA's certificates, as lapin trusts them. The crypto provider is named
//! here (ring) rather than taken from the process default, so a build
//! without lapin needs no global set-up.

use std::sync::Arc;

use amqprs::tls::TlsAdaptor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use crate::client::ClientError;

/// A TLS adaptor for `host`, trusting the system's roots and the PEM
/// certificates in `ca`.
pub(super) fn adaptor(host: &str, ca: Option<&str>) -> Result<TlsAdaptor, ClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::new(format!("the CA file (SLUICEGATE_AMQP_TLS_CA): {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::new(
                "the CA file (SLUICEGATE_AMQP_TLS_CA) holds no PEM certificate",
            ));
        }
        let (_, refused) = roots.add_parsable_certificates(certs);
        if refused > 0 {
            return Err(ClientError::new(format!(
                "the CA file (SLUICEGATE_AMQP_TLS_CA): {refused} certificate(s) could not be used as roots"
            )));
        }
    }
    let provider = Arc::new(crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::new)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsAdaptor::new(
        TlsConnector::from(Arc::new(config)),
        host.to_owned(),
    ))
}
