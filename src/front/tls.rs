//! TLS for the tablet (rustls with the ring provider, TLS 1.2 and 1.3 only): the certificate and key
//! from `[http.tls]`, or a self-signed pair generated once in the state directory; the SPKI pin that
//! `facegate tls pin` prints; and a pinning client verifier for the self-probe and the tests.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {cause}. Check http.tls.cert and http.tls.key, or leave both empty to have facegate generate a self-signed pair")]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("cannot write the generated {what} {path}: {cause}. The state directory must be writable by the daemon")]
    Write {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("the certificate could not be generated: {0}")]
    Generate(String),
    #[error("http.tls: the certificate and key do not make a usable TLS setup: {0}")]
    Setup(String),
}

/// Where the certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generated (and reused) by facegate, rather than given by the admin.
    pub generated: bool,
}

impl TlsFiles {
    /// The configured pair, or the generated pair's place in the state directory.
    pub fn of(config: &Config) -> TlsFiles {
        let tls = &config.http.tls;
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                generated: false,
            },
            _ => {
                let dir = config.state_dir.join("tls");
                TlsFiles {
                    cert: dir.join("cert.pem"),
                    key: dir.join("key.pem"),
                    generated: true,
                }
            }
        }
    }

    /// Makes the self-signed pair if it is ours to make and does not exist yet.
    pub fn ensure(&self, listen: IpAddr) -> Result<(), TlsError> {
        if !self.generated || (self.cert.exists() && self.key.exists()) {
            return Ok(());
        }
        let names = certificate_names(listen);
        let certified = rcgen::generate_simple_self_signed(names.clone())
            .map_err(|err| TlsError::Generate(err.to_string()))?;
        let dir = self.key.parent().unwrap_or(Path::new("."));
        let write_error = |what, path: &Path, cause: std::io::Error| TlsError::Write {
            what,
            path: path.to_path_buf(),
            cause: cause.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| write_error("directory", dir, e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        write_new(
            &self.key,
            certified.key_pair.serialize_pem().as_bytes(),
            0o600,
        )
        .map_err(|e| write_error("key", &self.key, e))?;
        write_new(&self.cert, certified.cert.pem().as_bytes(), 0o644)
            .map_err(|e| write_error("certificate", &self.cert, e))?;
        log::info!(
            "generated a self-signed TLS certificate for {} in {}; pin it on the tablet: {}",
            names.join(", "),
            dir.display(),
            spki_pin(certified.cert.der()).unwrap_or_default()
        );
        Ok(())
    }

    fn certificate_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let read_error = |cause: String| TlsError::Read {
            what: "the certificate",
            path: self.cert.clone(),
            cause,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| read_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_error(e.to_string()))?;
        if chain.is_empty() {
            return Err(read_error("no PEM certificate in it".into()));
        }
        Ok(chain)
    }

    /// `sha256/<base64>` of the leaf certificate's SubjectPublicKeyInfo.
    pub fn pin(&self) -> Result<String, TlsError> {
        let chain = self.certificate_chain()?;
        spki_pin(&chain[0]).map_err(TlsError::Setup)
    }

    /// The rustls server configuration: TLS 1.2 and 1.3 with the ring provider, HTTP/1.1 only.
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = self.certificate_chain()?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Read {
            what: "the key",
            path: self.key.clone(),
            cause: e.to_string(),
        })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The names a tablet may use for the Pi: its host name (and `.local`), `localhost`, the loopback
/// addresses, the listening address when it is specific, and the address of the default route.
fn certificate_names(listen: IpAddr) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_string());
            names.push(format!("{host}.local"));
        }
    }
    names.push("localhost".into());
    let mut addresses = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !listen.is_unspecified() {
        addresses.push(listen);
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel which source address it would use.
    let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    if let Ok(address) = routed {
        addresses.push(address.ip());
    }
    for address in addresses {
        let text = address.to_string();
        if !names.contains(&text) {
            names.push(text);
        }
    }
    names
}

/// `sha256/<base64>` of a DER certificate's SubjectPublicKeyInfo, as OkHttp's CertificatePinner
/// writes it (curl's `--pinnedpubkey` takes the same hash after `sha256//`).
pub(crate) fn spki_pin(certificate: &CertificateDer<'_>) -> Result<String, String> {
    let parsed = rustls::server::ParsedCertificate::try_from(certificate)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let spki = parsed.subject_public_key_info();
    let digest = Sha256::digest(spki.as_ref());
    Ok(format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// A client configuration that trusts exactly the server whose key has `pin` (any name).
pub fn pinned_client_config(pin: &str) -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = PinnedKey {
        pin: pin.to_string(),
        provider: Arc::clone(&provider),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Accepts the server's certificate when its key matches the pin; the handshake signatures are still
/// checked, so only the holder of the pinned key passes.
#[derive(Debug)]
struct PinnedKey {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = spki_pin(end_entity).map_err(rustls::Error::General)?;
        if pin == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's key is {pin}, not the pinned {}",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> TlsFiles {
        let mut config = Config {
            state_dir: dir.to_path_buf(),
            ..Config::default()
        };
        config.http.tls.enabled = true;
        TlsFiles::of(&config)
    }

    #[test]
    fn a_generated_pair_is_private_reused_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        assert!(files.generated);
        files.ensure(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pin = files.pin().unwrap();
        assert!(pin.starts_with("sha256/") && pin.len() == 7 + 44, "{pin}");
        files.ensure(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).unwrap();
        assert_eq!(
            files.pin().unwrap(),
            pin,
            "the pair is reused, not regenerated"
        );
        files.server_config().unwrap();
    }

    #[test]
    fn a_missing_configured_certificate_names_the_key() {
        let mut config = Config::default();
        config.http.tls.cert = Some("/nonexistent/cert.pem".into());
        config.http.tls.key = Some("/nonexistent/key.pem".into());
        let err = TlsFiles::of(&config)
            .server_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.tls.cert"), "{err}");
    }
}
