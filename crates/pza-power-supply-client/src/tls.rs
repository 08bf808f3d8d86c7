//! A rustls client configuration (the `ring` provider) from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};
use crate::options::TlsFiles;

/// Reads and checks the files. The broker's certificate is then verified
/// against the CA, for the host name or address the client connects to.
pub(crate) fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    if files.ca_file.as_os_str().is_empty() {
        return Err(Error::Tls(
            "a client certificate needs the CA file too".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&files.ca_file)? {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("{}: {e}", files.ca_file.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&files.client_cert_file, &files.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => builder
            .with_client_auth_cert(certificates(cert_file)?, private_key(key_file)?)
            .map_err(|e| Error::Tls(format!("{}: {e}", key_file.display())))?,
        _ => {
            return Err(Error::Tls(
                "a client certificate needs its private key, and a key its certificate".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Tls(format!(
                "{}: not a PEM certificate file ({e})",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| Error::Tls(format!("{}: not a PEM private key ({e})", path.display())))
}
