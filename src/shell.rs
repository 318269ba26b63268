//! The client command language: parsing a line such as `put k some value`,
//! running it through a [`Client`], and rendering the result the way the
//! `kvapp-c client` REPL and one-shot commands print it.
//!
//! Every command prints exactly one line, except `list` (one line per key),
//! `status` (one line per node) and `help`. Errors are one line starting with
//! `ERROR usage:` (malformed, nothing sent), `ERROR failed:` (definitely not
//! applied) or `ERROR unknown:` (may have been applied).

use std::net::SocketAddr;

use crate::kv::Client;
use crate::{Error, NodeId};

/// The text `help` prints.
pub const HELP: &str = "\
commands:
  get KEY                  print the value of KEY, or (nil)
  put KEY VALUE            set KEY to VALUE (the rest of the line)
  delete KEY               remove KEY
  cas KEY EXPECTED NEW     set KEY to NEW if it holds EXPECTED ((nil): absent)
  list [PREFIX]            print the keys starting with PREFIX, sorted
  status                   print every node's role, term, commit and applied index
  help                     print this text
  quit | exit              leave";

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Get(String),
    Put(String, String),
    Delete(String),
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    List(String),
    Status,
    Help,
    Quit,
}

/// How a command ended, which decides a one-shot command's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Success (exit 0), including a `get` of an absent key and a `cas` that
    /// printed `FAILED`.
    Success,
    /// `ERROR failed` or `ERROR unknown` (exit 1).
    Error,
    /// `ERROR usage` (exit 2).
    Usage,
}

impl Ending {
    /// The process exit status for this ending.
    pub fn exit_code(self) -> i32 {
        match self {
            Ending::Success => 0,
            Ending::Error => 1,
            Ending::Usage => 2,
        }
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub lines: Vec<String>,
    pub ending: Ending,
}

impl Reply {
    fn ok(line: impl Into<String>) -> Self {
        Reply {
            lines: vec![line.into()],
            ending: Ending::Success,
        }
    }

    /// A usage error: printed as `ERROR usage: ...`.
    pub fn usage(msg: impl AsRef<str>) -> Self {
        Reply {
            lines: vec![format!("ERROR usage: {}", msg.as_ref())],
            ending: Ending::Usage,
        }
    }

    fn error(e: Error) -> Self {
        match e {
            Error::InvalidInput(msg) => Reply::usage(msg),
            Error::Unknown(msg) => Reply {
                lines: vec![format!("ERROR unknown: {msg}")],
                ending: Ending::Error,
            },
            other => Reply {
                lines: vec![format!("ERROR failed: {other}")],
                ending: Ending::Error,
            },
        }
    }
}

/// Splits off the first whitespace-delimited word of `s`; returns it and the
/// rest with its leading whitespace removed.
fn split_word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], s[end..].trim_start()))
}

/// Parses one line. `Ok(None)` for a blank line; `Err` carries a usage
/// message.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    let Some((word, rest)) = split_word(line) else {
        return Ok(None);
    };
    let words = || rest.split_whitespace().collect::<Vec<_>>();
    let cmd = match word.to_ascii_lowercase().as_str() {
        "get" => match words()[..] {
            [key] => Command::Get(key.into()),
            _ => return Err("get KEY".into()),
        },
        "delete" | "del" => match words()[..] {
            [key] => Command::Delete(key.into()),
            _ => return Err("delete KEY".into()),
        },
        "put" | "set" => match split_word(rest) {
            Some((key, value)) if !value.is_empty() => Command::Put(key.into(), value.into()),
            _ => return Err("put KEY VALUE".into()),
        },
        "cas" => {
            let parsed = split_word(rest).and_then(|(key, rest)| {
                split_word(rest).map(|(expected, new)| (key, expected, new))
            });
            match parsed {
                Some((key, expected, new)) if !new.is_empty() => Command::Cas {
                    key: key.into(),
                    expected: (expected != "(nil)").then(|| expected.to_string()),
                    new: new.into(),
                },
                _ => return Err("cas KEY EXPECTED NEW".into()),
            }
        }
        "list" | "ls" => match words()[..] {
            [] => Command::List(String::new()),
            [prefix] => Command::List(prefix.into()),
            _ => return Err("list [PREFIX]".into()),
        },
        "status" if rest.is_empty() => Command::Status,
        "help" | "?" => Command::Help,
        "quit" | "exit" if rest.is_empty() => Command::Quit,
        "status" | "quit" | "exit" => return Err(format!("{word} takes no arguments")),
        _ => {
            return Err(format!(
                "unknown command '{word}' (type help for the commands)"
            ));
        }
    };
    Ok(Some(cmd))
}

/// Runs commands against a cluster.
pub struct Shell {
    client: Client,
    /// Raft addresses of the members, as the user gave them; node `i` is
    /// `members[i - 1]`.
    members: Vec<SocketAddr>,
}

impl Shell {
    /// A shell over `client`; `members` are the Raft addresses shown by
    /// `status`.
    pub fn new(client: Client, members: Vec<SocketAddr>) -> Self {
        Shell { client, members }
    }

    /// Parses and runs one line. `None` for a blank line or `quit`.
    pub fn run_line(&mut self, line: &str) -> Option<Reply> {
        match parse(line) {
            Ok(None) | Ok(Some(Command::Quit)) => None,
            Ok(Some(cmd)) => Some(self.execute(cmd)),
            Err(usage) => Some(Reply::usage(usage)),
        }
    }

    /// Runs one command.
    pub fn execute(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Get(key) => match self.client.get(key.as_bytes()) {
                Ok(Some(v)) => Reply::ok(String::from_utf8_lossy(&v)),
                Ok(None) => Reply::ok("(nil)"),
                Err(e) => Reply::error(e),
            },
            Command::Put(key, value) => match self.client.put(key.as_bytes(), value.as_bytes()) {
                Ok(()) => Reply::ok("OK"),
                Err(e) => Reply::error(e),
            },
            Command::Delete(key) => match self.client.delete(key.as_bytes()) {
                Ok(()) => Reply::ok("OK"),
                Err(e) => Reply::error(e),
            },
            Command::Cas { key, expected, new } => {
                match self.client.cas(
                    key.as_bytes(),
                    expected.as_deref().map(str::as_bytes),
                    new.as_bytes(),
                ) {
                    Ok(c) if c.swapped => Reply::ok("OK"),
                    Ok(c) => Reply::ok(match c.current {
                        Some(v) => format!("FAILED {}", String::from_utf8_lossy(&v)),
                        None => "FAILED (nil)".to_string(),
                    }),
                    Err(e) => Reply::error(e),
                }
            }
            Command::List(prefix) => match self.client.list(prefix.as_bytes()) {
                Ok(keys) => Reply {
                    lines: keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect(),
                    ending: Ending::Success,
                },
                Err(e) => Reply::error(e),
            },
            Command::Status => self.status(),
            Command::Help => Reply {
                lines: HELP.lines().map(String::from).collect(),
                ending: Ending::Success,
            },
            Command::Quit => Reply {
                lines: Vec::new(),
                ending: Ending::Success,
            },
        }
    }

    fn status(&mut self) -> Reply {
        let mut lines = Vec::new();
        let mut reached = false;
        for (id, _client_addr, status) in self.client.status() {
            let addr = self
                .members
                .get((id as usize).wrapping_sub(1))
                .map(|a| a.to_string())
                .unwrap_or_else(|| "?".into());
            lines.push(match status {
                Ok(s) => {
                    reached = true;
                    format_status_line(id, &addr, &s.role, s.term, s.commit_index, s.applied_index)
                }
                Err(_) => format!("{id} {addr} unreachable"),
            });
        }
        Reply {
            lines,
            ending: if reached {
                Ending::Success
            } else {
                Ending::Error
            },
        }
    }
}

/// One line of `status`.
pub fn format_status_line(
    id: NodeId,
    addr: &str,
    role: &str,
    term: u64,
    commit: u64,
    applied: u64,
) -> String {
    format!("{id} {addr} {role} term={term} commit={commit} applied={applied}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("get k").unwrap(), Some(Command::Get("k".into())));
        assert_eq!(
            parse("put k hello  world\n").unwrap(),
            Some(Command::Put("k".into(), "hello  world".into()))
        );
        assert_eq!(
            parse("DELETE k").unwrap(),
            Some(Command::Delete("k".into()))
        );
        assert_eq!(
            parse("cas k (nil) new value").unwrap(),
            Some(Command::Cas {
                key: "k".into(),
                expected: None,
                new: "new value".into()
            })
        );
        assert_eq!(
            parse("cas k old new").unwrap(),
            Some(Command::Cas {
                key: "k".into(),
                expected: Some("old".into()),
                new: "new".into()
            })
        );
        assert_eq!(parse("list").unwrap(), Some(Command::List(String::new())));
        assert_eq!(parse("list ab").unwrap(), Some(Command::List("ab".into())));
        assert_eq!(parse("status").unwrap(), Some(Command::Status));
        assert_eq!(parse("help").unwrap(), Some(Command::Help));
        assert_eq!(parse("quit").unwrap(), Some(Command::Quit));
        assert_eq!(parse("exit").unwrap(), Some(Command::Quit));
        assert_eq!(parse("   ").unwrap(), None);
    }

    #[test]
    fn rejects_malformed_commands() {
        for bad in [
            "get",
            "get a b",
            "put k",
            "put",
            "delete",
            "cas k v",
            "cas k",
            "list a b",
            "frobnicate x",
            "status now",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be a usage error");
        }
        assert!(parse("frobnicate").unwrap_err().contains("frobnicate"));
    }

    #[test]
    fn errors_render_with_their_outcome() {
        assert_eq!(
            Reply::error(Error::Unknown("timed out".into())).lines,
            vec!["ERROR unknown: timed out"]
        );
        let failed = Reply::error(Error::Failed("no leader".into()));
        assert_eq!(failed.lines, vec!["ERROR failed: no leader"]);
        assert_eq!(failed.ending.exit_code(), 1);
        let usage = Reply::error(Error::InvalidInput("the key is empty".into()));
        assert!(usage.lines[0].starts_with("ERROR usage: "));
        assert_eq!(usage.ending.exit_code(), 2);
    }
}
