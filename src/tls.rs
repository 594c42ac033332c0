//! TLS listeners (rustls over a TCP listener) for the streaming server and the Docker
//! API's TCP hosts: a certificate and key, and optionally a client CA whose
//! certificates clients must present (mutual TLS). Handshakes run in tasks of their
//! own, so a slow or silent client never holds up the next one; the server takes
//! finished connections from a queue.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: reading {path}: {message}")]
    Pem {
        key: String,
        path: String,
        message: String,
    },
    #[error("{section}: the certificate, key and CA do not make a TLS configuration: {message}")]
    Config { section: String, message: String },
}

/// The PEM files of one TLS listener and the configuration section naming them.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// `cri.streaming`, `docker`: error messages name `<section>.tls_cert_file` etc.
    pub section: &'a str,
    pub cert: &'a Path,
    pub key: &'a Path,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<&'a Path>,
}

/// The rustls acceptor for these files.
pub fn acceptor(files: TlsFiles<'_>) -> Result<TlsAcceptor, TlsError> {
    let TlsFiles {
        section,
        cert: cert_file,
        key: key_file,
        client_ca,
    } = files;
    let pem_error = |key: &str, path: &Path| {
        let (key, path) = (format!("{section}.{key}"), path.display().to_string());
        move |err: rustls_pki_types::pem::Error| TlsError::Pem {
            key,
            path,
            message: err.to_string(),
        }
    };
    let config_error = |message: String| TlsError::Config {
        section: section.to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(pem_error("tls_cert_file", cert_file))?
        .collect::<Result<_, _>>()
        .map_err(pem_error("tls_cert_file", cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: format!("{section}.tls_cert_file"),
            path: cert_file.display().to_string(),
            message: "no CERTIFICATE in it".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(pem_error("tls_key_file", key_file))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| config_error(err.to_string()))?;
    let builder = match client_ca {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in
                CertificateDer::pem_file_iter(ca_file).map_err(pem_error("tls_ca_file", ca_file))?
            {
                let ca = ca.map_err(pem_error("tls_ca_file", ca_file))?;
                roots
                    .add(ca)
                    .map_err(|err| config_error(format!("the client CA: {err}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|err| config_error(format!("the client CA: {err}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|err| config_error(err.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener whose connections have finished their TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accept_loop = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!("streaming: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::info!(%peer, "streaming: TLS handshake failed: {err}")
                        }
                        Err(_) => tracing::info!(%peer, "streaming: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accept_loop,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
