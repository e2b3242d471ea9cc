//! A loopback SMTP server that keeps every mail it is given, for tests (the unit tests here
//! and the multi-process tests of keyraft-tests): enough SMTP for lettre, STARTTLS when
//! started with a certificate, and AUTH PLAIN accepted with any password (the user name is
//! kept).

use base64::Engine as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

pub use super::extract_code;

/// Longest command or data line read, in bytes (RFC 5321 allows 1000 for text lines).
const LINE_BYTES_MAX: u64 = 4096;
/// Largest mail kept, in bytes; larger ones are refused with 552.
const MAIL_BYTES_MAX: usize = 1024 * 1024;

/// One mail, as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (MAIL FROM), without the angle brackets.
    pub from: String,
    /// The envelope recipients (RCPT TO), without the angle brackets.
    pub to: Vec<String>,
    /// The user name of AUTH PLAIN on this connection, if the client authenticated.
    pub auth_user: Option<String>,
    /// Whether the mail came after STARTTLS.
    pub tls: bool,
    /// The message (headers and body) with dot-stuffing undone; lines end in CRLF.
    pub data: String,
}

/// An SMTP server on 127.0.0.1 (port chosen by the OS), until dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    /// Aborted on drop, which drops (and so aborts) every connection task it holds.
    accept: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    /// Starts a sink without TLS on the current tokio runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts a sink that offers STARTTLS with this certificate chain and private key (PEM,
    /// leaf first; the key in PKCS#8, SEC1 or PKCS#1).
    pub async fn start_with_starttls(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<Self> {
        let invalid =
            |what: &str, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"));
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("the certificate chain", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("the private key", &e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("the TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid("the certificate and key", &e))?;
        Self::start_with(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&mails);
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(serve(stream, tls.clone(), Arc::clone(&kept)));
                        }
                        // Out of descriptors or similar: keep serving the open connections.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, mails, accept })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every mail received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.mails.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The newest mail with `to` among its recipients (compared case-insensitively), polling
    /// until `deadline` from now has passed.
    pub async fn wait_for_message(&self, to: &str, deadline: Duration) -> Option<ReceivedMail> {
        let until = Instant::now() + deadline;
        loop {
            let found = self.messages().into_iter().rev().find(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)));
            if found.is_some() || Instant::now() >= until {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The path inside `<...>` after a `MAIL FROM:` or `RCPT TO:` prefix (parameters after it
/// ignored).
fn path_argument(line: &str, prefix_len: usize) -> Option<String> {
    let rest = line.get(prefix_len..)?.trim_start();
    let rest = rest.strip_prefix('<')?;
    rest.find('>').map(|end| rest[..end].to_owned())
}

/// The user name in an AUTH PLAIN response: base64 of `authzid NUL authcid NUL password`.
fn plain_user(encoded: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let mut parts = decoded.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    parts.next()?;
    String::from_utf8(user.to_vec()).ok()
}

/// Reads one line (without CRLF) of at most [`LINE_BYTES_MAX`]; `None` at end of stream or
/// on an over-long line.
async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader).take(LINE_BYTES_MAX).read_until(b'\n', &mut buf).await?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Ok(None);
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// What a command line asks of the connection.
enum Step {
    /// Send this reply and read the next command.
    Reply(&'static [u8]),
    /// AUTH PLAIN without an initial response: ask for it.
    AuthResponse,
    /// DATA accepted: read the message.
    Data,
    /// STARTTLS accepted: upgrade, then start over.
    StartTls,
    /// QUIT.
    Quit,
}

/// One connection's SMTP state.
struct Session {
    /// Whether to offer STARTTLS (a TLS sink, not yet upgraded).
    offer_starttls: bool,
    encrypted: bool,
    from: Option<String>,
    to: Vec<String>,
    auth_user: Option<String>,
}

impl Session {
    fn command(&mut self, line: &str) -> Step {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            Step::Reply(if self.offer_starttls {
                b"250-keyraft-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 SIZE 1048576\r\n"
            } else {
                b"250-keyraft-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 SIZE 1048576\r\n"
            })
        } else if upper.starts_with("HELO") {
            Step::Reply(b"250 keyraft-sink\r\n")
        } else if upper == "STARTTLS" && self.offer_starttls {
            Step::StartTls
        } else if upper.starts_with("AUTH PLAIN") {
            match line.get("AUTH PLAIN".len()..).map(str::trim).filter(|r| !r.is_empty()) {
                Some(response) => self.authenticate(response),
                None => Step::AuthResponse,
            }
        } else if upper.starts_with("MAIL FROM:") {
            match path_argument(line, "MAIL FROM:".len()) {
                Some(path) => {
                    self.from = Some(path);
                    self.to.clear();
                    Step::Reply(b"250 2.1.0 OK\r\n")
                }
                None => Step::Reply(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            }
        } else if upper.starts_with("RCPT TO:") {
            match (&self.from, path_argument(line, "RCPT TO:".len())) {
                (None, _) => Step::Reply(b"503 5.5.1 MAIL first\r\n"),
                (Some(_), Some(path)) => {
                    self.to.push(path);
                    Step::Reply(b"250 2.1.5 OK\r\n")
                }
                (Some(_), None) => Step::Reply(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
            }
        } else if upper == "DATA" {
            if self.from.is_some() && !self.to.is_empty() {
                Step::Data
            } else {
                Step::Reply(b"503 5.5.1 MAIL and RCPT first\r\n")
            }
        } else if upper == "RSET" {
            self.reset();
            Step::Reply(b"250 2.0.0 OK\r\n")
        } else if upper.starts_with("NOOP") {
            Step::Reply(b"250 2.0.0 OK\r\n")
        } else if upper == "QUIT" {
            Step::Quit
        } else {
            Step::Reply(b"502 5.5.2 Command not implemented\r\n")
        }
    }

    fn authenticate(&mut self, response: &str) -> Step {
        match plain_user(response) {
            Some(user) => {
                self.auth_user = Some(user);
                Step::Reply(b"235 2.7.0 Authentication successful\r\n")
            }
            None => Step::Reply(b"501 5.5.2 Cannot decode AUTH PLAIN response\r\n"),
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    /// The mail of the current transaction with `data`, ending the transaction.
    fn take_mail(&mut self, data: String) -> ReceivedMail {
        let mail = ReceivedMail {
            from: self.from.take().unwrap_or_default(),
            to: std::mem::take(&mut self.to),
            auth_user: self.auth_user.clone(),
            tls: self.encrypted,
            data,
        };
        self.reset();
        mail
    }
}

/// How a conversation on one stream ended.
enum End {
    /// QUIT, or the client went away.
    Closed,
    /// The client asked for STARTTLS and was told to go ahead.
    StartTls,
}

async fn serve(stream: TcpStream, tls: Option<TlsAcceptor>, mails: Arc<Mutex<Vec<ReceivedMail>>>) {
    // A client that goes away is the end of its session, not the sink's concern.
    let _ = session(stream, tls, mails).await;
}

async fn session(stream: TcpStream, tls: Option<TlsAcceptor>, mails: Arc<Mutex<Vec<ReceivedMail>>>) -> io::Result<()> {
    let mut io = BufReader::new(stream);
    io.write_all(b"220 keyraft-sink ESMTP\r\n").await?;
    let mut session =
        Session { offer_starttls: tls.is_some(), encrypted: false, from: None, to: Vec::new(), auth_user: None };
    let (End::StartTls, Some(acceptor)) = (converse(&mut io, &mut session, &mails).await?, tls) else {
        return Ok(());
    };
    // Whatever the client sent after STARTTLS in the clear is dropped with the buffer
    // (RFC 3207 section 4.2: nothing before the handshake counts).
    let encrypted = acceptor.accept(io.into_inner()).await?;
    let mut io = BufReader::new(encrypted);
    let mut session = Session { offer_starttls: false, encrypted: true, from: None, to: Vec::new(), auth_user: None };
    converse(&mut io, &mut session, &mails).await.map(|_| ())
}

/// Answers commands until QUIT, STARTTLS or the end of the stream.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    session: &mut Session,
    mails: &Mutex<Vec<ReceivedMail>>,
) -> io::Result<End> {
    while let Some(line) = read_line(io).await? {
        let reply: &[u8] = match session.command(&line) {
            Step::Reply(reply) => reply,
            Step::AuthResponse => {
                io.write_all(b"334 \r\n").await?;
                io.flush().await?;
                let response = read_line(io).await?.unwrap_or_default();
                match session.authenticate(&response) {
                    Step::Reply(reply) => reply,
                    _ => b"501 5.5.2 Cannot decode AUTH PLAIN response\r\n",
                }
            }
            Step::Data => {
                io.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                io.flush().await?;
                match read_data(io).await? {
                    Data::Closed => return Ok(End::Closed),
                    Data::TooBig => {
                        session.reset();
                        b"552 5.3.4 Message too big\r\n"
                    }
                    Data::Complete(data) => {
                        let mail = session.take_mail(data);
                        mails.lock().unwrap_or_else(PoisonError::into_inner).push(mail);
                        b"250 2.0.0 OK queued\r\n"
                    }
                }
            }
            Step::StartTls => {
                io.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                io.flush().await?;
                return Ok(End::StartTls);
            }
            Step::Quit => {
                io.write_all(b"221 2.0.0 Bye\r\n").await?;
                io.flush().await?;
                return Ok(End::Closed);
            }
        };
        io.write_all(reply).await?;
        // TLS streams buffer: each reply must reach the client before the next command.
        io.flush().await?;
    }
    Ok(End::Closed)
}

/// What the DATA phase gave.
enum Data {
    /// The message.
    Complete(String),
    /// More than [`MAIL_BYTES_MAX`]: read to its end and dropped, so the session goes on.
    TooBig,
    /// The stream ended before the lone `.`.
    Closed,
}

/// Reads DATA lines up to the lone `.`, undoing dot-stuffing.
async fn read_data<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Data> {
    let mut data = String::new();
    let mut too_big = false;
    while let Some(line) = read_line(reader).await? {
        if line == "." {
            return Ok(if too_big { Data::TooBig } else { Data::Complete(data) });
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        too_big = too_big || data.len() + line.len() + 2 > MAIL_BYTES_MAX;
        if !too_big {
            data.push_str(line);
            data.push_str("\r\n");
        }
    }
    Ok(Data::Closed)
}
