//! A small QMP (QEMU Machine Protocol) client for fault injection.
//!
//! QMP is newline-delimited JSON over a Unix socket: a greeting, `qmp_capabilities`, then
//! commands whose replies may be preceded by asynchronous events. The protocol needs only
//! this much; existing QMP crates bring the whole generated QAPI schema, so the few lines
//! are written here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Errors talking to QEMU's monitor.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket did not come up or broke.
    #[error("QMP socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered a command with an error.
    #[error("QEMU refused `{command}`: {message}")]
    Refused {
        /// The command sent.
        command: String,
        /// QEMU's error description.
        message: String,
    },
    /// QEMU said something that is not QMP.
    #[error("QMP socket {path} sent something unexpected: {line}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What it sent.
        line: String,
    },
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events seen so far (e.g. `DEVICE_DELETED`).
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path`, retrying until `deadline` while QEMU creates the socket.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        let io = |source| QmpError::Io {
            path: path.to_owned(),
            source,
        };
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io(e)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                path: path.to_owned(),
                line: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the monitor",
                ),
            });
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol {
            path: self.path.clone(),
            line: format!("{} ({e})", line.trim()),
        })
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let message = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{message}").map_err(|source| QmpError::Io {
            path: self.path.clone(),
            source,
        })?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_owned(),
                    message: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description")
                        .to_owned(),
                });
            }
            return Err(QmpError::Protocol {
                path: self.path.clone(),
                line: reply.to_string(),
            });
        }
    }

    /// Presses Alt+SysRq+`key` on the guest's PS/2 keyboard: with `t`, the guest kernel
    /// prints every task's state and stack to its console.
    pub fn sysrq(&mut self, key: char) -> Result<(), QmpError> {
        let qcode = |data: String| json!({ "type": "qcode", "data": data });
        let keys = [
            qcode("alt".into()),
            qcode("sysrq".into()),
            qcode(key.to_string()),
        ];
        self.execute("send-key", json!({ "keys": keys })).map(drop)
    }

    /// Asks QEMU to unplug device `id` (the guest is notified through pciehp).
    pub fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", json!({ "id": id })).map(drop)
    }
}
