//! TLS for the tablet (rustls with the ring provider, TLS 1.2 and 1.3 only): the certificate and key
//! from `[http.tls]`, or the door's own: a small CA generated once in the state directory (what a
//! tablet installs, `facegate tls cert`) and a server certificate it issues for every name the Pi goes
//! by, issued again with the same key when those names change; the SPKI pin that `facegate tls pin`
//! prints; and a pinning client verifier for the self-probe and the tests.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
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
    /// The chain the daemon serves: the leaf first (and, when generated, the door's CA after it).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generated (and reused) by facegate, rather than given by the admin.
    pub generated: bool,
}

/// The door's own certificate authority, generated beside the leaf: what a tablet installs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuthorityFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// The CA's name. Fixed, so that a leaf issued after any change names the same issuer.
const AUTHORITY_NAME: &str = "facegate door CA";

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

    fn authority(&self) -> AuthorityFiles {
        let dir = self.key.parent().unwrap_or(Path::new("."));
        AuthorityFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca-key.pem"),
        }
    }

    /// For a generated certificate: makes the door's CA and the server's key once, and issues the
    /// server certificate again whenever the names it must carry (`names`, see `certificate_names`)
    /// differ from the ones it has. The server's key is kept, so `facegate tls pin` stays valid; the
    /// CA is kept, so a tablet that trusts it trusts every certificate issued later.
    pub fn ensure(&self, names: &[String]) -> Result<(), TlsError> {
        if !self.generated {
            return Ok(());
        }
        let dir = self.key.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| write_error("directory", dir, e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let authority = self.authority();
        let ca_key = load_or_make_key(&authority.key)?;
        let ca_cert = authority_params()
            .self_signed(&ca_key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let new_authority = !authority.cert.exists();
        if new_authority {
            write_new(&authority.cert, ca_cert.pem().as_bytes(), 0o644)
                .map_err(|e| write_error("CA certificate", &authority.cert, e))?;
        }
        let had_key = self.key.exists();
        let key = load_or_make_key(&self.key)?;
        let wanted: BTreeSet<String> = names.iter().cloned().collect();
        let current = self.issued_names_and_issuer();
        if had_key
            && !new_authority
            && current.as_ref().is_some_and(|(names, issuer)| {
                *names == wanted && issuer.as_str() == AUTHORITY_NAME
            })
        {
            return Ok(());
        }
        let leaf = leaf_params(names)?
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let chain = format!(
            "{}{}",
            leaf.pem(),
            std::fs::read_to_string(&authority.cert).map_err(|e| TlsError::Read {
                what: "the CA certificate",
                path: authority.cert.clone(),
                cause: e.to_string(),
            })?
        );
        crate::atomic_file::write(&self.cert, chain.as_bytes(), 0o644)
            .map_err(|e| write_error("certificate", &self.cert, e))?;
        log::info!(
            "issued the TLS certificate for {} in {} (the tablets trust {}; key pin {})",
            names.join(", "),
            dir.display(),
            authority.cert.display(),
            spki_pin(leaf.der()).unwrap_or_default()
        );
        Ok(())
    }

    /// The names in the current leaf certificate and its issuer's common name, if it parses.
    fn issued_names_and_issuer(&self) -> Option<(BTreeSet<String>, String)> {
        let chain = self.certificate_chain().ok()?;
        let names = certificate_sans(&chain[0]).ok()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(chain[0].as_ref()).ok()?;
        let issuer = parsed
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((names.into_iter().collect(), issuer))
    }

    /// The PEM certificate a tablet should trust: the door's CA for a generated certificate, else the
    /// configured chain's last certificate (its root, or the certificate itself).
    pub fn trust_pem(&self) -> Result<String, TlsError> {
        if self.generated {
            let path = self.authority().cert;
            return std::fs::read_to_string(&path).map_err(|e| TlsError::Read {
                what: "the CA certificate",
                path,
                cause: e.to_string(),
            });
        }
        let chain = self.certificate_chain()?;
        let last = chain.last().expect("a chain is never empty");
        Ok(pem_of(last))
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

fn write_error(what: &'static str, path: &Path, cause: std::io::Error) -> TlsError {
    TlsError::Write {
        what,
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

/// The key at `path` (PEM), made (ECDSA P-256, mode 0600) when there is none.
fn load_or_make_key(path: &Path) -> Result<KeyPair, TlsError> {
    if path.exists() {
        let pem = std::fs::read_to_string(path).map_err(|e| TlsError::Read {
            what: "the key",
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
        return KeyPair::from_pem(&pem).map_err(|e| TlsError::Read {
            what: "the key",
            path: path.to_path_buf(),
            cause: e.to_string(),
        });
    }
    let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    write_new(path, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| write_error("key", path, e))?;
    Ok(key)
}

/// A random serial number, so that no two certificates the door issues share one.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// The door's CA: may sign certificates for servers and nothing below them. Its validity spans the
/// years a Pi without a clock battery may believe it is in.
fn authority_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, AUTHORITY_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "facegate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&[1]));
    params
}

/// The server's certificate for `names` (host names and addresses).
fn leaf_params(names: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("facegate", String::as_str),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    Ok(params)
}

fn pem_of(certificate: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The subject alternative names of a DER certificate, host names and addresses as text.
pub fn certificate_sans(certificate: &[u8]) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let Some(sans) = parsed
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
    else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for name in &sans.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                let address = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes")),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes")),
                    _ => continue,
                };
                names.push(address.to_string());
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The names the generated certificate carries for `config`.
pub fn certificate_names_of(config: &Config) -> Vec<String> {
    certificate_names(config.http.listen.ip(), &config.http.tls.names)
}

/// The names a tablet may use for the Pi: its host name (and `.local`), `localhost`, the loopback
/// addresses, the listening address, or every interface's address when it listens on all of them,
/// and the admin's `http.tls.names`.
pub fn certificate_names(listen: IpAddr, configured: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(host) = crate::host::host_name() {
        names.push(host.clone());
        names.push(format!("{host}.local"));
    }
    names.push("localhost".into());
    let mut addresses = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if listen.is_unspecified() {
        addresses.extend(crate::host::interface_addresses());
        addresses.extend(crate::host::routed_address());
    } else {
        addresses.push(listen);
    }
    let texts = addresses
        .iter()
        .map(IpAddr::to_string)
        .chain(configured.iter().cloned());
    for text in texts {
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

    fn names(extra: &[&str]) -> Vec<String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        certificate_names(IpAddr::V4(Ipv4Addr::UNSPECIFIED), &extra)
    }

    /// Would a client that trusts only the door's CA accept the server's chain under `name`?
    fn trusted_as(files: &TlsFiles, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(files.trust_pem().unwrap().as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let chain = files.certificate_chain().unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(drop)
    }

    #[test]
    fn a_generated_pair_is_private_reused_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        assert!(files.generated);
        files.ensure(&names(&[])).unwrap();
        for key in [&files.key, &files.authority().key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let pin = files.pin().unwrap();
        assert!(pin.starts_with("sha256/") && pin.len() == 7 + 44, "{pin}");
        let issued = std::fs::read(&files.cert).unwrap();
        files.ensure(&names(&[])).unwrap();
        assert_eq!(
            std::fs::read(&files.cert).unwrap(),
            issued,
            "the same names reuse the certificate"
        );
        files.server_config().unwrap();
    }

    #[test]
    fn the_certificate_names_localhost_loopback_and_the_configured_names_for_the_doors_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        files.ensure(&names(&[])).unwrap();
        let chain = files.certificate_chain().unwrap();
        let sans = certificate_sans(&chain[0]).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(sans.iter().any(|s| s == name), "{name} in {sans:?}");
        }
        for name in ["localhost", "127.0.0.1"] {
            trusted_as(&files, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(trusted_as(&files, "door.example").is_err());
        // A name added to http.tls.names: issued again, same key (same pin), same CA.
        let pin = files.pin().unwrap();
        let ca = files.trust_pem().unwrap();
        files.ensure(&names(&["door.example"])).unwrap();
        let sans = certificate_sans(&files.certificate_chain().unwrap()[0]).unwrap();
        assert!(sans.iter().any(|s| s == "door.example"), "{sans:?}");
        assert_eq!(files.pin().unwrap(), pin);
        assert_eq!(files.trust_pem().unwrap(), ca);
        trusted_as(&files, "door.example").unwrap();
    }

    #[test]
    fn a_self_signed_pair_from_an_older_facegate_is_reissued_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        std::fs::create_dir_all(files.key.parent().unwrap()).unwrap();
        let old = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&files.key, old.key_pair.serialize_pem()).unwrap();
        std::fs::write(&files.cert, old.cert.pem()).unwrap();
        let pin = files.pin().unwrap();
        files.ensure(&names(&[])).unwrap();
        assert_eq!(files.pin().unwrap(), pin, "the app's pin keeps working");
        trusted_as(&files, "localhost").unwrap();
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
