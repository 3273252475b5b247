//! The persistent rule store: port-forwarding rules in a TOML file that
//! survives a reboot, saved atomically so that a crash or a full disk never
//! leaves a half-written file behind.
use std::{
    fs, io,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::rules::ForwardRule;

pub const DEFAULT_RULES_PATH: &str = "/var/lib/natctl/rules.toml";

const HEADER: &str = "\
# Port-forwarding rules, written by natctl.
# You can edit this file by hand, then make the daemon re-read it with
# `kill -HUP <pid of natctl daemon>`; or use natctl add/modify/remove.
# natctl rewrites the whole file when it saves: other comments are not kept.
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} line {line}: not UTF-8 text; the rules file must be UTF-8", path.display())]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{} line {line}, column {column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot save rules to {}: {step}: {source}", path.display())]
    Write {
        path: PathBuf,
        /// What was being done, naming the file or directory involved.
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot save rules to {}: {message}", path.display())]
    Serialize { path: PathBuf, message: String },
}

/// A rule as read from the file, with where it was, so that errors found
/// later (validation, conflicts) can point the user at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedRule {
    pub rule: ForwardRule,
    /// 1-based line of its `[[rule]]` header.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Spanned<ForwardRule>>,
}

#[derive(Serialize)]
struct RulesFileRef<'a> {
    // Skipped when empty: `rule = []` would be a strange thing to find in a
    // file meant to be edited by hand.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rule: &'a [ForwardRule],
}

/// Reads the rules; a missing file is the first start, not an error.
pub fn load_rules(path: &Path) -> Result<Vec<LoadedRule>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let text = String::from_utf8(bytes).map_err(|error| StoreError::NotUtf8 {
        path: path.to_owned(),
        line: line_of_byte(error.as_bytes(), error.utf8_error().valid_up_to()),
    })?;
    parse_rules(&text, path)
}

/// Parses the text of a rules file; `path` only names it in errors.
pub fn parse_rules(text: &str, path: &Path) -> Result<Vec<LoadedRule>, StoreError> {
    let file: RulesFile = toml::from_str(text).map_err(|error| {
        let (line, column, message) = toml_error_position(text, &error);
        StoreError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    })?;
    Ok(file
        .rule
        .into_iter()
        .map(|spanned| {
            // The span of an array-of-tables element starts at its header.
            let (line, _) = line_column(text, spanned.span().start);
            LoadedRule {
                rule: spanned.into_inner(),
                line,
            }
        })
        .collect())
}

/// Writes the rules so that the file holds either the old or the new rules,
/// whole, even across a crash or power loss: a temporary file in the same
/// directory, fsynced, renamed over the target, then the directory fsynced
/// so that the rename itself is on disk.
pub fn save_rules(path: &Path, rules: &[ForwardRule]) -> Result<(), StoreError> {
    let body =
        toml::to_string(&RulesFileRef { rule: rules }).map_err(|error| StoreError::Serialize {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
    let contents = format!("{HEADER}\n{body}");
    let write_error = |step: String, source: io::Error| StoreError::Write {
        path: path.to_owned(),
        step,
        source,
    };

    let Some(file_name) = path.file_name() else {
        return Err(write_error(
            "choosing the file name".to_owned(),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path does not end in a file name",
            ),
        ));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // The rules say what is reachable from the outside: not for other users.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| {
            // create_dir_all reports a regular file in the way as "File
            // exists", which reads as if all were well.
            let source = if dir.exists() && !dir.is_dir() {
                io::Error::from_raw_os_error(libc::ENOTDIR)
            } else {
                source
            };
            write_error(format!("creating directory {}", dir.display()), source)
        })?;

    // The pid keeps two processes apart and the counter two threads of one:
    // neither may write into a temporary file the other is about to rename.
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);
    // Left over by a process that had our pid and crashed mid-save.
    let _ = fs::remove_file(&temp);

    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|source| write_error(format!("creating {}", temp.display()), source))?;
        file.write_all(contents.as_bytes())
            .map_err(|source| write_error(format!("writing {}", temp.display()), source))?;
        file.sync_all()
            .map_err(|source| write_error(format!("syncing {}", temp.display()), source))?;
        fs::rename(&temp, path).map_err(|source| {
            write_error(
                format!("renaming {} to {}", temp.display(), path.display()),
                source,
            )
        })
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }

    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| write_error(format!("syncing directory {}", dir.display()), source))
}

/// The 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

pub(crate) fn line_of_byte(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line, column and bare message of a toml error: its `Display` adds a
/// multi-line snippet that would not fit the one-line errors the daemon logs.
pub(crate) fn toml_error_position(text: &str, error: &toml::de::Error) -> (usize, usize, String) {
    let (line, column) = error
        .span()
        .map_or((1, 1), |span| line_column(text, span.start));
    (line, column, error.message().trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for each test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("natctl-store-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rules() -> Vec<ForwardRule> {
        let ssh: ForwardRule = "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24,name=ssh"
            .parse()
            .unwrap();
        let mut torrent: ForwardRule = "both/6881-6889=192.168.0.20,name=torrent".parse().unwrap();
        torrent.enabled = false;
        let web: ForwardRule = "udp/443=192.168.0.30:8443,allow=203.0.113.7,name=web"
            .parse()
            .unwrap();
        vec![ssh, torrent, web]
    }

    fn invalid(text: &str) -> (usize, usize, String) {
        match parse_rules(text, Path::new("/x/rules.toml")).unwrap_err() {
            StoreError::Invalid {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_keeps_rules_in_order() {
        let dir = TempDir::new("round_trip");
        let path = dir.0.join("rules.toml");
        save_rules(&path, &rules()).unwrap();
        let loaded = load_rules(&path).unwrap();
        let back: Vec<ForwardRule> = loaded.iter().map(|l| l.rule.clone()).collect();
        assert_eq!(back, rules());

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# "), "{text}");
        assert!(text.contains("kill -HUP"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        for rule in &loaded {
            assert_eq!(lines[rule.line - 1], "[[rule]]", "{}", rule.rule.name);
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn empty_rules_round_trip() {
        let dir = TempDir::new("empty");
        let path = dir.0.join("rules.toml");
        save_rules(&path, &[]).unwrap();
        assert_eq!(load_rules(&path).unwrap(), vec![]);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = TempDir::new("missing");
        assert_eq!(load_rules(&dir.0.join("rules.toml")).unwrap(), vec![]);
        assert_eq!(
            load_rules(&dir.0.join("no/such/rules.toml")).unwrap(),
            vec![]
        );
    }

    #[test]
    fn rule_lines_are_those_of_their_headers() {
        let text = "# comment\n\n[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nexternal = \"80\"\n\
                    internal_addr = \"192.168.0.2\"\ninternal = \"80\"\n\n\n  [[rule]]\n\
                    name = \"b\"\nprotocol = \"udp\"\nexternal = \"53\"\n\
                    internal_addr = \"192.168.0.3\"\ninternal = \"53\"\nenabled = false\n";
        let loaded = parse_rules(text, Path::new("rules.toml")).unwrap();
        assert_eq!(
            loaded.iter().map(|l| l.line).collect::<Vec<_>>(),
            vec![3, 11]
        );
        assert!(loaded[0].rule.enabled);
        assert!(!loaded[1].rule.enabled);
    }

    #[test]
    fn invalid_toml_reports_its_line() {
        let text = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nexternal = \"80\n";
        let (line, column, message) = invalid(text);
        assert_eq!(line, 4, "{message}");
        assert!(column > 1, "{column}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn bad_protocol_reports_its_line_and_value() {
        let text = "[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nexternal = \"2222\"\n\
                    internal_addr = \"192.168.0.12\"\ninternal = \"22\"\n\n[[rule]]\n\
                    name = \"web\"\nprotocol = \"tcpx\"\nexternal = \"80\"\n\
                    internal_addr = \"192.168.0.13\"\ninternal = \"80\"\n";
        let (line, column, message) = invalid(text);
        assert_eq!((line, column), (10, 12), "{message}");
        assert!(message.contains("\"tcpx\""), "{message}");
        assert!(message.contains("tcp, udp or both"), "{message}");
        let error = parse_rules(text, Path::new("/var/lib/natctl/rules.toml")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/var/lib/natctl/rules.toml line 10, column 12: \
             unknown protocol \"tcpx\": expected tcp, udp or both"
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nexternal = \"80\"\n\
                    internal_addr = \"192.168.0.2\"\ninternal = \"80\"\nallowed = []\n";
        let (line, _, message) = invalid(text);
        assert_eq!(line, 7, "{message}");
        assert!(message.contains("allowed"), "{message}");

        let (line, _, message) = invalid("# rules\nversion = 2\n");
        assert_eq!(line, 2, "{message}");
        assert!(message.contains("version"), "{message}");
    }

    #[test]
    fn not_utf8_names_the_line() {
        let dir = TempDir::new("not_utf8");
        let path = dir.0.join("rules.toml");
        fs::write(&path, b"# ok\n# caf\xe9\n").unwrap();
        let error = load_rules(&path).unwrap_err();
        assert!(
            matches!(&error, StoreError::NotUtf8 { line: 2, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(&*path.to_string_lossy()));
    }

    #[test]
    fn a_directory_is_unreadable() {
        let dir = TempDir::new("is_dir");
        let error = load_rules(&dir.0).unwrap_err();
        assert!(matches!(error, StoreError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains(&*dir.0.to_string_lossy()));
    }

    #[test]
    fn save_replaces_the_whole_file() {
        let dir = TempDir::new("replace");
        let path = dir.0.join("rules.toml");
        let old = "x".repeat(10_000);
        fs::write(&path, &old).unwrap();
        save_rules(&path, &rules()[..1]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains('x'.to_string().repeat(100).as_str()));
        assert_eq!(load_rules(&path).unwrap().len(), 1);
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("rules.toml")]);
    }

    #[test]
    fn save_creates_a_missing_directory() {
        let dir = TempDir::new("create_dir");
        let path = dir.0.join("var/lib/natctl/rules.toml");
        save_rules(&path, &rules()).unwrap();
        assert_eq!(load_rules(&path).unwrap().len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn save_under_a_regular_file_names_the_path() {
        let dir = TempDir::new("unwritable");
        let file = dir.0.join("file");
        fs::write(&file, "").unwrap();
        let path = file.join("rules.toml");
        let error = save_rules(&path, &rules()).unwrap_err();
        assert!(matches!(error, StoreError::Write { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(message.contains("Not a directory"), "{message}");
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn line_column_counts_from_one() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 7), (2, 4));
        assert_eq!(line_column(text, 8), (3, 1));
        assert_eq!(line_column(text, 100), (3, 2));
    }
}
