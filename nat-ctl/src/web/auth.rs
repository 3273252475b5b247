//! Who may use the admin page: the password (an Argon2id hash in a file
//! `natctl passwd` writes), sessions, CSRF tokens and the login rate limit.
use std::{
    collections::{HashMap, VecDeque},
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};
use rand::TryRngCore as _;
use subtle::ConstantTimeEq as _;

/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long the login form stays good for.
pub const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Logged-in sessions kept at once; a new login past it ends the oldest.
const MAX_SESSIONS: usize = 16;
/// Login forms handed out and not yet used; the oldest go first.
const MAX_LOGIN_FORMS: usize = 64;
/// Shorter passwords are refused by `natctl passwd`.
pub const MIN_PASSWORD_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no admin password is set ({}): run `natctl passwd` on the router",
        .0.display()
    )]
    NoPassword(PathBuf),
    #[error("cannot read the admin password file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the admin password file {} does not hold an Argon2 hash: {error}; run `natctl passwd` again", path.display())]
    BadHash {
        path: PathBuf,
        error: argon2::password_hash::Error,
    },
    #[error("cannot write the admin password file {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("hashing the password: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("the password is {len} characters long: it must have at least {MIN_PASSWORD_LEN}")]
    TooShort { len: usize },
}

/// 256 random bits from the OS, in hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random source works");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Compares two tokens in time that depends on their length only.
pub fn tokens_equal(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// An Argon2id hash of `password` (PHC string format, random salt).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(AuthError::TooShort { len });
    }
    let mut salt = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .expect("the OS random source works");
    let salt = SaltString::encode_b64(&salt).map_err(AuthError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(AuthError::Hash)
}

/// Whether `password` matches the hash in `path`.
pub fn verify_password(path: &Path, password: &str) -> Result<bool, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuthError::NoPassword(path.to_owned()));
        }
        Err(error) => {
            return Err(AuthError::Read {
                path: path.to_owned(),
                error,
            });
        }
    };
    let hash = PasswordHash::new(text.trim()).map_err(|error| AuthError::BadHash {
        path: path.to_owned(),
        error,
    })?;
    // The parameters come from the hash itself.
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

/// Writes `hash` to `path` atomically, readable by root only: a temporary
/// file in the same directory, fsynced, renamed over the old one.
pub fn save_password_hash(path: &Path, hash: &str) -> Result<(), AuthError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |error| AuthError::Write {
        path: path.to_owned(),
        error,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(error)?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or("web-password".into(), |name| name.to_string_lossy()),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(hash.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(error)
}

/// A logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// The token every form of this session carries.
    pub csrf: String,
    pub expires: Instant,
}

/// Logged-in sessions and handed-out login forms, by their cookie.
#[derive(Default)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    /// A login form's cookie and the CSRF token the form carries: the
    /// login POST must bring both, so that another site cannot log a
    /// browser in.
    login_forms: HashMap<String, Session>,
}

impl Sessions {
    /// The session of `cookie`, if it is live.
    pub fn get(&mut self, cookie: &str, now: Instant) -> Option<Session> {
        self.sessions.retain(|_, session| session.expires > now);
        self.sessions.get(cookie).cloned()
    }

    /// A new session (a new id: never one the browser had before the
    /// login, against session fixation); returns its cookie value.
    pub fn create(&mut self, now: Instant) -> (String, Session) {
        self.sessions.retain(|_, session| session.expires > now);
        evict_oldest(&mut self.sessions, MAX_SESSIONS - 1);
        let id = random_token();
        let session = Session {
            csrf: random_token(),
            expires: now + SESSION_LIFETIME,
        };
        self.sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    pub fn remove(&mut self, cookie: &str) {
        self.sessions.remove(cookie);
    }

    /// A login form's cookie and CSRF token: the browser's own if it
    /// holds a live one (a second tab, or a request the browser made
    /// meanwhile, must not spoil the form on screen), else new ones.
    pub fn login_form(&mut self, held: Option<&str>, now: Instant) -> (String, String) {
        self.login_forms.retain(|_, form| form.expires > now);
        if let Some(held) = held
            && let Some(form) = self.login_forms.get(held)
        {
            return (held.to_owned(), form.csrf.clone());
        }
        evict_oldest(&mut self.login_forms, MAX_LOGIN_FORMS - 1);
        let id = random_token();
        let csrf = random_token();
        self.login_forms.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + LOGIN_FORM_LIFETIME,
            },
        );
        (id, csrf)
    }

    /// Uses up the login form of `cookie` if `csrf` is its token.
    pub fn take_login_form(&mut self, cookie: &str, csrf: &str, now: Instant) -> bool {
        match self.login_forms.get(cookie) {
            Some(form) if form.expires > now && tokens_equal(csrf, &form.csrf) => {
                self.login_forms.remove(cookie);
                true
            }
            _ => false,
        }
    }
}

fn evict_oldest(map: &mut HashMap<String, Session>, keep: usize) {
    while map.len() > keep {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, session)| session.expires)
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        map.remove(&oldest);
    }
}

/// Login attempts allowed per client in [`LOGIN_WINDOW`].
pub const LOGINS_PER_CLIENT: usize = 5;
/// Login attempts allowed from all clients together in [`LOGIN_WINDOW`]:
/// a guesser with many addresses gets no further.
pub const LOGINS_IN_ALL: usize = 20;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered at once; beyond, the oldest are forgotten (the
/// global limit still holds).
const MAX_CLIENTS: usize = 1024;

/// Counts login attempts in a sliding window, per client and in all.
#[derive(Default)]
pub struct LoginLimiter {
    per_client: HashMap<Ipv4Addr, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

impl LoginLimiter {
    /// Records an attempt by `client` if it is allowed; otherwise says how
    /// long until the next one is.
    pub fn attempt(&mut self, client: Ipv4Addr, now: Instant) -> Result<(), Duration> {
        let fresh = |times: &mut VecDeque<Instant>| {
            while times
                .front()
                .is_some_and(|&at| now.duration_since(at) >= LOGIN_WINDOW)
            {
                times.pop_front();
            }
        };
        fresh(&mut self.all);
        self.per_client.retain(|_, times| {
            fresh(times);
            !times.is_empty()
        });
        let wait = |times: &VecDeque<Instant>| {
            LOGIN_WINDOW.saturating_sub(now.duration_since(*times.front().expect("full")))
        };
        if let Some(times) = self.per_client.get(&client)
            && times.len() >= LOGINS_PER_CLIENT
        {
            return Err(wait(times));
        }
        if self.all.len() >= LOGINS_IN_ALL {
            return Err(wait(&self.all));
        }
        if self.per_client.len() >= MAX_CLIENTS && !self.per_client.contains_key(&client) {
            let oldest = self
                .per_client
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(client, _)| *client);
            if let Some(oldest) = oldest {
                self.per_client.remove(&oldest);
            }
        }
        self.per_client.entry(client).or_default().push_back(now);
        self.all.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let dir = std::env::temp_dir().join(format!("natctl-auth-{}", std::process::id()));
        let path = dir.join("web-password");
        assert!(matches!(
            verify_password(&path, "whatever1"),
            Err(AuthError::NoPassword(_))
        ));
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        save_password_hash(&path, &hash).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(verify_password(&path, "correct horse").unwrap());
        assert!(!verify_password(&path, "correct horsE").unwrap());
        assert!(!verify_password(&path, "").unwrap());
        // Two hashes of one password differ (salted).
        assert_ne!(hash, hash_password("correct horse").unwrap());
        std::fs::write(&path, "plain text").unwrap();
        let error = verify_password(&path, "correct horse").unwrap_err();
        assert!(error.to_string().contains("natctl passwd"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
        let error = hash_password("short").unwrap_err();
        assert!(error.to_string().contains("at least 8"), "{error}");
    }

    #[test]
    fn csrf_tokens_are_random_and_compared_whole() {
        let token = random_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, random_token());
        assert!(tokens_equal(&token, &token.clone()));
        assert!(!tokens_equal(&token, &token[..63]));
        assert!(!tokens_equal("", &token));
        let mut flipped = token.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        assert!(!tokens_equal(&String::from_utf8(flipped).unwrap(), &token));
    }

    #[test]
    fn sessions_expire_and_login_forms_are_used_once() {
        let mut sessions = Sessions::default();
        let now = Instant::now();
        let (id, session) = sessions.create(now);
        assert_eq!(sessions.get(&id, now).unwrap().csrf, session.csrf);
        assert!(sessions.get("nope", now).is_none());
        assert!(sessions.get(&id, now + SESSION_LIFETIME).is_none());

        let (form, csrf) = sessions.login_form(None, now);
        assert_eq!(
            sessions.login_form(Some(&form), now),
            (form.clone(), csrf.clone()),
            "the browser keeps its form"
        );
        assert_ne!(sessions.login_form(Some("forged"), now).0, "forged");
        assert!(!sessions.take_login_form(&form, "wrong", now));
        assert!(!sessions.take_login_form(&id, &csrf, now), "not a form");
        assert!(sessions.take_login_form(&form, &csrf, now));
        assert!(!sessions.take_login_form(&form, &csrf, now), "used up");

        for _ in 0..MAX_SESSIONS + 3 {
            sessions.create(now);
        }
        assert_eq!(sessions.sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn logins_are_limited_per_client_and_in_all() {
        let mut limiter = LoginLimiter::default();
        let start = Instant::now();
        let one = Ipv4Addr::new(192, 168, 0, 12);
        for _ in 0..LOGINS_PER_CLIENT {
            limiter.attempt(one, start).unwrap();
        }
        let wait = limiter.attempt(one, start).unwrap_err();
        assert_eq!(wait, LOGIN_WINDOW);
        // Another host is not held back by the first.
        limiter
            .attempt(Ipv4Addr::new(192, 168, 0, 13), start)
            .unwrap();
        // The window slides.
        limiter.attempt(one, start + LOGIN_WINDOW).unwrap();

        let mut limiter = LoginLimiter::default();
        for host in 0..LOGINS_IN_ALL as u8 {
            limiter
                .attempt(Ipv4Addr::new(192, 168, 1, host), start)
                .unwrap();
        }
        assert!(
            limiter
                .attempt(
                    Ipv4Addr::new(192, 168, 2, 1),
                    start + Duration::from_secs(1)
                )
                .is_err(),
            "many addresses together are limited too"
        );
    }
}
