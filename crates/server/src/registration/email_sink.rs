//! A loopback SMTP server that keeps every mail it is given, for tests (the unit tests here
//! and the multi-process tests of keyraft-tests): enough SMTP for lettre, no TLS, and AUTH
//! PLAIN accepted with any password (the user name is kept).

use base64::Engine as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

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
    /// Starts the sink on the current tokio runtime.
    pub async fn start() -> io::Result<Self> {
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
                            connections.spawn(serve(stream, Arc::clone(&kept)));
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

async fn serve(stream: TcpStream, mails: Arc<Mutex<Vec<ReceivedMail>>>) {
    // A client that goes away is the end of its session, not the sink's concern.
    let _ = session(stream, mails).await;
}

async fn session(stream: TcpStream, mails: Arc<Mutex<Vec<ReceivedMail>>>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 keyraft-sink ESMTP\r\n").await?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut auth_user: Option<String> = None;
    while let Some(line) = read_line(&mut reader).await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-keyraft-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 SIZE 1048576\r\n"
        } else if upper.starts_with("HELO") {
            b"250 keyraft-sink\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            let initial = line.get("AUTH PLAIN".len()..).unwrap_or("").trim();
            let response = if initial.is_empty() {
                write.write_all(b"334 \r\n").await?;
                read_line(&mut reader).await?.unwrap_or_default()
            } else {
                initial.to_owned()
            };
            match plain_user(&response) {
                Some(user) => {
                    auth_user = Some(user);
                    b"235 2.7.0 Authentication successful\r\n"
                }
                None => b"501 5.5.2 Cannot decode AUTH PLAIN response\r\n",
            }
        } else if upper.starts_with("MAIL FROM:") {
            match path_argument(&line, "MAIL FROM:".len()) {
                Some(path) => {
                    from = Some(path);
                    to.clear();
                    b"250 2.1.0 OK\r\n"
                }
                None => b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n",
            }
        } else if upper.starts_with("RCPT TO:") {
            match (&from, path_argument(&line, "RCPT TO:".len())) {
                (None, _) => b"503 5.5.1 MAIL first\r\n",
                (Some(_), Some(path)) => {
                    to.push(path);
                    b"250 2.1.5 OK\r\n"
                }
                (Some(_), None) => b"501 5.5.4 Syntax: RCPT TO:<address>\r\n",
            }
        } else if upper == "DATA" {
            match (&from, to.is_empty()) {
                (Some(sender), false) => {
                    write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                    match read_data(&mut reader).await? {
                        Data::Closed => return Ok(()),
                        Data::TooBig => b"552 5.3.4 Message too big\r\n",
                        Data::Complete(data) => {
                            let mail = ReceivedMail {
                                from: sender.clone(),
                                to: std::mem::take(&mut to),
                                auth_user: auth_user.clone(),
                                data,
                            };
                            mails.lock().unwrap_or_else(PoisonError::into_inner).push(mail);
                            from = None;
                            b"250 2.0.0 OK queued\r\n"
                        }
                    }
                }
                _ => b"503 5.5.1 MAIL and RCPT first\r\n",
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            b"250 2.0.0 OK\r\n"
        } else if upper.starts_with("NOOP") {
            b"250 2.0.0 OK\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
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
