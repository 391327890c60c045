//! TLS on a node's ports (issue 14), with rustls and its ring provider (installed once, in
//! `main`).
//!
//! The client port takes `--tls-cert` and `--tls-key`; the peer port `--peer-tls-cert`,
//! `--peer-tls-key` and `--peer-ca`, and then refuses every connection whose certificate was
//! not issued by that CA (mutual TLS: peers present the same certificate when they call).
//! Each listener accepts TCP itself and hands tonic connections whose handshake finished
//! ([`incoming`]): at most [`HANDSHAKES_MAX`] handshakes at once, each within
//! [`HANDSHAKE_TIMEOUT`]. Every connection takes the configuration in force when it is
//! accepted, and the files are read again when any of them changes, or on SIGHUP
//! (`reload.rs`): certificates are replaced without a restart. Files that do not load are
//! reported and the configuration before stays in force.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::reload::Reloading;

/// How long a connection may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes one listener runs at once; more connections wait to be accepted.
pub const HANDSHAKES_MAX: usize = 1_024;

/// Installs the process's one crypto provider (ring). Every binary calls it first.
pub fn install_crypto_provider() {
    // An error means one is installed already: the same one, by an earlier call.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM files one listener's TLS comes from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, a caller must present a certificate issued by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading the private key in {}", path.display()))
}

/// The roots of trust in a CA file.
pub fn read_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}

fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(read_roots(ca)?))
                .build()
                .with_context(|| format!("the client CA in {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{} and {} are not a certificate and its key",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One listener's TLS configuration, as its files last loaded, reloaded when they change.
pub type Tls = Reloading<ServerConfig>;

/// Loads a listener's TLS files; a node does not start on files that do not load.
pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
    let what = match files.client_ca {
        Some(_) => "peer TLS certificates",
        None => "client TLS certificates",
    };
    Reloading::open(what, files.paths(), move || server_config(&files))
}

/// Mutual TLS between nodes: the peer listener's configuration, and what calls to peers
/// present and trust.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<Tls>,
    /// What calls to peers trust and present, reloaded from the same files as `server`.
    pub client: Arc<Reloading<tonic::transport::ClientTlsConfig>>,
}

impl PeerTls {
    pub fn load(cert: PathBuf, key: PathBuf, ca: PathBuf) -> anyhow::Result<PeerTls> {
        let files = TlsFiles {
            cert,
            key,
            client_ca: Some(ca),
        };
        let client_files = files.clone();
        let client = Reloading::open(
            "peer client certificate",
            files.paths(),
            move || -> anyhow::Result<_> {
                // The same checks as the listener's (a key that is not the certificate's is
                // refused here, not at the next connection), then what tonic takes.
                server_config(&client_files)?;
                let read =
                    |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
                let ca = client_files
                    .client_ca
                    .as_deref()
                    .expect("peer TLS has a CA");
                Ok(tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
                    .identity(tonic::transport::Identity::from_pem(
                        read(&client_files.cert)?,
                        read(&client_files.key)?,
                    )))
            },
        )?;
        let server = load(files)?;
        Ok(PeerTls { server, client })
    }

    /// What the sequencer's peer channels take their TLS configuration from.
    pub fn client_source(&self) -> Arc<dyn ordo_sequencer::network::PeerClientTls> {
        self.client.clone()
    }
}

impl ordo_sequencer::network::PeerClientTls for Reloading<tonic::transport::ClientTlsConfig> {
    fn generation(&self) -> u64 {
        Reloading::generation(self)
    }

    fn config(&self) -> tonic::transport::ClientTlsConfig {
        (*self.current()).clone()
    }
}

/// The connections `listener` accepts and `admission` admits (`conns.rs`: a port's cap and
/// each source's share hold during handshakes too), each once its TLS handshake finished;
/// ends when the server stops taking them.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    admission: Arc<crate::conns::Admission>,
) -> ReceiverStream<Result<TlsStream<crate::conns::Admitted<TcpStream>>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKES_MAX);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let Some(tcp) = crate::conns::accept_admitted(&listener, &admission, tx.closed()).await
            else {
                return;
            };
            let from = tcp.source();
            let (acceptor, tx) = (TlsAcceptor::from(tls.current()), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    });
    ReceiverStream::new(rx)
}

/// `ordo certs generate`: a CA, a certificate for each of `nodes` nodes (server and client
/// use: the client port, the peer port and calls to peers) and one for clients, valid for
/// `localhost`, `127.0.0.1`, `::1` and `hosts`. Writes PEM files into `out` (keys mode 0600).
pub fn generate(out: &Path, nodes: u32, hosts: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    anyhow::ensure!((1..=100).contains(&nodes), "--nodes must be 1 to 100");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str, secret: bool| -> anyhow::Result<()> {
        let path = out.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
        use std::io::Write;
        options
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ordo CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write("ca.pem", &ca_cert.pem(), false)?;
    write("ca-key.pem", &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(hosts.iter().cloned());
    let leaf = |common_name: &str, server: bool| -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::new(if server { names.clone() } else { Vec::new() })?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    for n in 1..=nodes {
        let (cert, key) = leaf(&format!("ordo node {n}"), true)?;
        write(&format!("node-{n}.pem"), &cert, false)?;
        write(&format!("node-{n}-key.pem"), &key, true)?;
    }
    let (cert, key) = leaf("ordo client", false)?;
    write("client.pem", &cert, false)?;
    write("client-key.pem", &key, true)?;
    Ok(written)
}
