//! TLS to an external broker: the PEM files named by a configuration,
//! loaded once into a rustls client configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files of a TLS connection to a broker: the CA certificates that
/// the broker's certificate must chain to, and an optional client
/// certificate with its private key (for brokers that require one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Why a TLS client configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("a client certificate needs its private key, and a key its certificate")]
    Unpaired,
    #[error("{}: {source}", path.display())]
    Rejected {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// A TLS client configuration (rustls with the `ring` provider), loaded once
/// from [`TlsFiles`] and shared by every connection to the broker.
#[derive(Clone)]
pub struct ClientTls(pub(super) Arc<rustls::ClientConfig>);

impl ClientTls {
    /// Reads and checks the files. The broker's certificate is then verified
    /// against the CA, for the host name or IP address the client connects to.
    pub fn load(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates(&files.ca_file)? {
            roots.add(cert).map_err(|source| TlsError::Rejected {
                path: files.ca_file.clone(),
                source,
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rejected {
                path: files.ca_file.clone(),
                source,
            })?
            .with_root_certificates(roots);
        let config = match (&files.client_cert_file, &files.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                let certs = read_certificates(cert_file)?;
                let key = read_private_key(key_file)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|source| TlsError::Rejected {
                        path: key_file.clone(),
                        source,
                    })?
            }
            _ => return Err(TlsError::Unpaired),
        };
        Ok(ClientTls(Arc::new(config)))
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in the file".into(),
            other => format!("not a PEM private key file ({other})"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_checked() {
        let guard = crate::temp::TempDir::new("tls").expect("a temp folder");
        let dir = guard.path();
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        let files = |ca: &Path, cert: Option<&Path>, key: Option<&Path>| TlsFiles {
            ca_file: ca.to_path_buf(),
            client_cert_file: cert.map(Path::to_path_buf),
            client_key_file: key.map(Path::to_path_buf),
        };
        let missing = dir.join("missing.pem");
        let err = ClientTls::load(&files(&missing, None, None)).unwrap_err();
        assert!(
            matches!(err, TlsError::Read { ref path, .. } if *path == missing),
            "{err}"
        );
        let err = ClientTls::load(&files(&text, None, None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no PEM certificate in the file", text.display())
        );
        let err = ClientTls::load(&files(&text, Some(&text), None)).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }
}
