//! Who may call what on the client port: bearer tokens with scopes (issue 14).
//!
//! A node started with `--tokens-file FILE` serves a call only when it carries
//! `authorization: Bearer TOKEN` for a token in the file whose scopes include the one the
//! method needs ([`need`]): `read` (stock, availability, orders, reservations, search, prices,
//! the feeds), `write` (orders, reservations, subscriptions, key-value transactions), `catalog`
//! (DCs, items, prices, restocks, transfers) or `admin` (the Admin service: status, state
//! hashes, membership, fault injection). A token has exactly the scopes listed for it; none
//! implies another. Health is open to everyone; reflection to any valid token. A missing or
//! unknown token is UNAUTHENTICATED, a token without the scope PERMISSION_DENIED; either way
//! the call never reaches the service.
//!
//! The file holds no secrets, only their BLAKE3 digests (`ordo token create` prints a new
//! token once and stores its digest). A presented token is hashed and its digest compared with
//! every entry's without an early exit, so the time a check takes says nothing about how close
//! a guess was. Tokens are never logged, and no error message repeats one. The file is read
//! again when it changes, or on SIGHUP (`reload.rs`); a file that no longer parses is reported
//! and the tokens loaded before stay in force.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use futures::future::{Either, Ready};
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

use ordo_sequencer::peers::same_digest;

use crate::reload::Reloading;
use crate::revoke::Guarded;

/// The most tokens one file may hold: every check compares the offered digest with each.
pub const TOKENS_MAX: usize = 1_024;

/// The largest tokens file a node reads.
pub const TOKENS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The longest token name.
pub const TOKEN_NAME_BYTES_MAX: usize = 64;

/// The longest `authorization` value the check hashes; a longer one is refused unread.
pub const AUTHORIZATION_BYTES_MAX: usize = 512;

/// What `ordo token create` puts before the secret part of a token.
const TOKEN_PREFIX: &str = "ordo_";

/// What the file's `hash` fields start with.
const HASH_PREFIX: &str = "blake3:";

/// What a token may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Catalog,
    Admin,
    /// The metrics endpoint (`--metrics-listen`) alone: for a Prometheus server's token.
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Catalog,
        Scope::Admin,
        Scope::Metrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Catalog => "catalog",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    pub fn parse(name: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                format!("unknown scope {name:?}: one of read, write, catalog, admin, metrics")
            })
    }
}

/// What a call needs before it reaches its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone (health checks).
    Open,
    /// Any valid token (reflection: the API's public schema).
    AnyToken,
    Scope(Scope),
}

/// Every `ordo.v1.Ordo` method and the scope it needs.
const ORDO_METHODS: &[(&str, Scope)] = &[
    ("GetStock", Scope::Read),
    ("GetOrder", Scope::Read),
    ("GetAvailability", Scope::Read),
    ("ListOrders", Scope::Read),
    ("GetReservation", Scope::Read),
    ("ListReservations", Scope::Read),
    ("FindNearbyDcs", Scope::Read),
    ("GetNearbyAvailability", Scope::Read),
    ("SearchItems", Scope::Read),
    ("GetPriceHistory", Scope::Read),
    ("Watch", Scope::Read),
    ("ListSubscriptions", Scope::Read),
    ("WatchNotifications", Scope::Read),
    ("PlaceOrder", Scope::Write),
    ("PlaceOrders", Scope::Write),
    ("OrderStream", Scope::Write),
    ("Transact", Scope::Write),
    ("Reserve", Scope::Write),
    ("ConfirmReservation", Scope::Write),
    ("CancelReservation", Scope::Write),
    ("ExtendReservation", Scope::Write),
    ("PlaceOrderNearby", Scope::Write),
    ("ReserveNearby", Scope::Write),
    ("Subscribe", Scope::Write),
    ("Unsubscribe", Scope::Write),
    ("Restock", Scope::Catalog),
    ("Restocks", Scope::Catalog),
    ("RestockDc", Scope::Catalog),
    ("UpsertDc", Scope::Catalog),
    ("UpsertItem", Scope::Catalog),
    ("TransferStock", Scope::Catalog),
    ("SetPrice", Scope::Catalog),
    ("SetPrices", Scope::Catalog),
];

/// Every `ordo.v1.Admin` method: each needs `admin`.
const ADMIN_METHODS: &[&str] = &[
    "Status",
    "GetStateHash",
    "InitCluster",
    "AddMember",
    "RemoveMember",
    "SetClockFault",
    "Backup",
    "SetExecutionSettings",
];

/// The other services on the client port: health (open) and reflection (any valid token).
const OTHER_METHODS: &[(&str, Need)] = &[
    ("grpc.health.v1.Health/Check", Need::Open),
    ("grpc.health.v1.Health/Watch", Need::Open),
    (
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Need::AnyToken,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Need::AnyToken,
    ),
];

/// A method served on the client port.
#[derive(Debug)]
pub struct Method {
    /// `package.Service/Method`: the `method` label of the node's metrics.
    pub label: &'static str,
    pub need: Need,
}

/// Every method served on the client port, by request path (`/package.Service/Method`).
fn methods() -> &'static std::collections::HashMap<String, Method> {
    static METHODS: std::sync::OnceLock<std::collections::HashMap<String, Method>> =
        std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        let ordo = ORDO_METHODS
            .iter()
            .map(|&(m, scope)| (format!("ordo.v1.Ordo/{m}"), Need::Scope(scope)));
        let admin = ADMIN_METHODS
            .iter()
            .map(|m| (format!("ordo.v1.Admin/{m}"), Need::Scope(Scope::Admin)));
        let other = OTHER_METHODS.iter().map(|&(m, need)| (m.to_string(), need));
        ordo.chain(admin)
            .chain(other)
            .map(|(label, need)| {
                // Leaked once per method, for the life of the process: metric labels are
                // static strings.
                let label: &'static str = Box::leak(label.into_boxed_str());
                (format!("/{label}"), Method { label, need })
            })
            .collect()
    })
}

/// The method a request path names, if the client port serves it.
pub fn method(path: &str) -> Option<&'static Method> {
    methods().get(path)
}

/// What a call to `path` (`/package.Service/Method`) needs. A path no table names needs
/// `admin`: a method added to the API later is closed until it is given its scope here.
pub fn need(path: &str) -> Need {
    method(path).map_or(Need::Scope(Scope::Admin), |m| m.need)
}

/// The method's name in a path, for messages.
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// One entry of a tokens file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryText {
    name: String,
    hash: String,
    scopes: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    token: Vec<EntryText>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    digest: [u8; 32],
    scopes: BTreeSet<Scope>,
}

/// The tokens of one version of a tokens file.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

fn name_ok(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOKEN_NAME_BYTES_MAX {
        return Err(format!(
            "a token name must be 1 to {TOKEN_NAME_BYTES_MAX} bytes, not {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "token name {name:?}: only letters, digits, '.', '_' and '-', not {bad:?}"
        ));
    }
    Ok(())
}

fn parse_digest(hash: &str) -> Result<[u8; 32], String> {
    let hex = hash
        .strip_prefix(HASH_PREFIX)
        .ok_or_else(|| format!("a hash starts with {HASH_PREFIX:?}"))?;
    if hex.len() != 64 {
        return Err(format!(
            "a hash is {HASH_PREFIX} and 64 hex digits, not {} digits",
            hex.len()
        ));
    }
    // Checked before slicing: a multi-byte character would split a slice (a panic).
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("a hash is {HASH_PREFIX} and 64 hex digits"));
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("a hash is {HASH_PREFIX} and 64 hex digits"))?;
    }
    Ok(digest)
}

use crate::random::hex;

/// The digest a tokens file stores for `token`.
fn digest(token: &[u8]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

impl TokenSet {
    /// The tokens in a file's text; any unknown key, bad name, hash or scope, or a repeated
    /// name or hash is an error naming the entry.
    pub fn parse(text: &str) -> Result<TokenSet, String> {
        let file: FileText = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.token.len() > TOKENS_MAX {
            return Err(format!("{} tokens; at most {TOKENS_MAX}", file.token.len()));
        }
        let mut set = TokenSet::default();
        for (i, entry) in file.token.into_iter().enumerate() {
            let at = |e: String| format!("token {} ({:?}): {e}", i + 1, entry.name);
            name_ok(&entry.name).map_err(at)?;
            let digest = parse_digest(&entry.hash).map_err(at)?;
            if entry.scopes.is_empty() {
                return Err(at("no scopes: give at least one".into()));
            }
            let scopes = entry
                .scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(at)?;
            if set.entries.iter().any(|e| e.name == entry.name) {
                return Err(at("the name is used twice".into()));
            }
            if set.entries.iter().any(|e| e.digest == digest) {
                return Err(at("the same hash as an earlier token".into()));
            }
            set.entries.push(Entry {
                name: entry.name,
                digest,
                scopes,
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry whose digest is `token`'s. Every entry is compared, each byte of each, with
    /// no early exit.
    fn find(&self, token: &[u8]) -> Option<&Entry> {
        let offered = digest(token);
        let mut found = None;
        for entry in &self.entries {
            if same_digest(&entry.digest, &offered) {
                found = Some(entry);
            }
        }
        found
    }

    /// Whether a scrape of the metrics endpoint with this `authorization` value may go on: a
    /// token with the `metrics` or the `admin` scope.
    pub fn check_scrape(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        let token = authorization
            .filter(|v| v.len() <= AUTHORIZATION_BYTES_MAX)
            .and_then(bearer)
            .ok_or("this node's metrics need `authorization: Bearer TOKEN`")?;
        let entry = self
            .find(token)
            .ok_or("the token is not valid on this node")?;
        match entry.scopes.contains(&Scope::Metrics) || entry.scopes.contains(&Scope::Admin) {
            true => Ok(()),
            false => Err("the token has neither the metrics nor the admin scope"),
        }
    }

    /// Whether a call to `path` with these headers may go on.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let need = need(path);
        if need == Need::Open {
            return Ok(());
        }
        let refused = |status: Status| {
            let reason = match status.code() {
                tonic::Code::PermissionDenied => "permission_denied",
                _ => "unauthenticated",
            };
            ordo_metrics::AUTH_REFUSED.add(&[reason], 1);
            status
        };
        self.decide(path, need, headers).map_err(refused)
    }

    fn decide(&self, path: &str, need: Need, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this node needs a token: send `authorization: Bearer TOKEN` (the CLI's --token \
                 or $ORDO_TOKEN)",
            ));
        };
        let value = value.as_bytes();
        let token = (value.len() <= AUTHORIZATION_BYTES_MAX)
            .then(|| bearer(value))
            .flatten()
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not `Bearer TOKEN`")
            })?;
        let entry = self
            .find(token)
            .ok_or_else(|| Status::unauthenticated("the token is not valid on this node"))?;
        match need {
            Need::Scope(scope) if !entry.scopes.contains(&scope) => {
                Err(Status::permission_denied(format!(
                    "token {:?} lacks the {} scope that {} needs",
                    entry.name,
                    scope.name(),
                    method_of(path)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The token in `Bearer TOKEN` (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn read_bounded(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    file.take(TOKENS_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= TOKENS_FILE_BYTES_MAX,
        "{} is over {TOKENS_FILE_BYTES_MAX} bytes",
        path.display()
    );
    Ok(text)
}

/// A node's tokens: the file's latest version that parsed, reloaded when it changes.
pub type Tokens = Reloading<TokenSet>;

/// Reads the tokens file; a node does not start on one that does not parse.
pub fn open_tokens(path: &Path) -> anyhow::Result<Arc<Tokens>> {
    let file = path.to_path_buf();
    Reloading::open("tokens file", vec![file.clone()], move || {
        TokenSet::parse(&read_bounded(&file)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    })
}

/// A service on the client port behind the token check (`None`: no check).
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Authorized<S> {
    pub fn new(inner: S, tokens: Option<Arc<Tokens>>) -> Self {
        Authorized { inner, tokens }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

type Refusal = Ready<Result<http::Response<tonic::body::Body>, Infallible>>;

impl<S> Service<http::Request<tonic::body::Body>> for Authorized<S>
where
    S: Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
    >,
    S::Future: Unpin,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<Refusal, Guarded<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(tokens) = &self.tokens else {
            return Either::Right(Guarded {
                inner: self.inner.call(req),
                admission: None,
            });
        };
        let path = req.uri().path();
        if let Err(status) = tokens.current().check(path, req.headers()) {
            return Either::Left(futures::future::ready(Ok(status.into_http())));
        }
        // A stream is checked again while it runs (`revoke.rs`).
        let admission = crate::revoke::streams(path)
            .then(|| crate::revoke::Admission::new(tokens.clone(), path, req.headers()));
        let req = match &admission {
            Some(admission) => req.map(|body| admission.request(body)),
            None => req,
        };
        Either::Right(Guarded {
            inner: self.inner.call(req),
            admission,
        })
    }
}

/// `ordo token create`: adds a token named `name` with `scopes` to the tokens file (made, mode
/// 0600, if there is none) and returns the token, which is stored nowhere else. The file is
/// replaced whole (written beside it, then renamed), so a node never reads half of it.
pub fn create(path: &Path, name: &str, scopes: &[Scope]) -> anyhow::Result<String> {
    name_ok(name).map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(!scopes.is_empty(), "give at least one --scope");
    let existing = match std::fs::metadata(path) {
        Ok(_) => read_bounded(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Ordo client tokens: BLAKE3 digests of tokens, not the tokens. `ordo token create`\n\
             # adds entries; delete an entry to revoke its token (nodes reload this file).\n",
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let set = TokenSet::parse(&existing).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        set.entries.iter().all(|e| e.name != name),
        "{} already has a token named {name:?}",
        path.display()
    );
    anyhow::ensure!(
        set.len() < TOKENS_MAX,
        "{} already holds {TOKENS_MAX} tokens",
        path.display()
    );
    let secret: [u8; 32] = crate::random::bytes("a token")?;
    let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
    let scopes: BTreeSet<Scope> = scopes.iter().copied().collect();
    let scope_list: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.name())).collect();
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n[[token]]\nname = {name:?}\nhash = \"{HASH_PREFIX}{}\"\nscopes = [{}]\n",
        hex(&digest(token.as_bytes())),
        scope_list.join(", ")
    ));
    // What is written must read back as the tokens before plus this one.
    let check = TokenSet::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(check.len() == set.len() + 1, "the new entry did not parse");
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&staged)
        .with_context(|| format!("writing {}", staged.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", staged.display()))?;
    std::fs::rename(&staged, path)
        .with_context(|| format!("replacing {} with {}", path.display(), staged.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = authorization {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn every_ordo_method_has_a_scope_and_admin_methods_need_admin() {
        let proto = include_str!("../../proto/ordo/v1/ordo.proto");
        let methods: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
            .collect();
        assert!(methods.len() > 30, "found {methods:?}");
        for m in &methods {
            assert!(
                ORDO_METHODS.iter().any(|(name, _)| name == m),
                "ordo.v1.Ordo/{m} has no scope in auth::ORDO_METHODS"
            );
        }
        assert_eq!(
            methods.len(),
            ORDO_METHODS.len(),
            "a method listed twice or gone"
        );
        let admin = include_str!("../../proto/ordo/v1/admin.proto");
        for m in admin
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
        {
            assert!(
                ADMIN_METHODS.contains(&m),
                "ordo.v1.Admin/{m} is not in ADMIN_METHODS"
            );
            assert_eq!(
                need(&format!("/ordo.v1.Admin/{m}")),
                Need::Scope(Scope::Admin)
            );
        }
        assert_eq!(need("/grpc.health.v1.Health/Check"), Need::Open);
        assert_eq!(
            need("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Need::AnyToken
        );
        assert_eq!(
            need("/ordo.v1.Ordo/NoSuchMethod"),
            Need::Scope(Scope::Admin)
        );
        assert_eq!(
            need("/grpc.health.v1.Health/Other"),
            Need::Scope(Scope::Admin)
        );
        assert_eq!(
            method("/ordo.v1.Ordo/PlaceOrder").unwrap().label,
            "ordo.v1.Ordo/PlaceOrder"
        );
        assert_eq!(need("/ordo.v1.Ordo/PlaceOrder"), Need::Scope(Scope::Write));
        assert_eq!(need("/ordo.v1.Ordo/GetStock"), Need::Scope(Scope::Read));
        assert_eq!(need("/ordo.v1.Ordo/SetPrice"), Need::Scope(Scope::Catalog));
    }

    #[test]
    fn a_created_token_checks_by_scope_and_the_file_holds_only_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let reader = create(&path, "shop", &[Scope::Read]).unwrap();
        let writer = create(&path, "orders", &[Scope::Write, Scope::Read]).unwrap();
        assert!(reader.starts_with(TOKEN_PREFIX) && reader.len() == 69);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&reader[5..]) && !text.contains(&writer[5..]));
        assert!(
            create(&path, "shop", &[Scope::Admin]).is_err(),
            "a name twice"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let set = TokenSet::parse(&text).unwrap();
        let place = "/ordo.v1.Ordo/PlaceOrder";
        let stock = "/ordo.v1.Ordo/GetStock";
        let bearer = |t: &str| headers(Some(&format!("Bearer {t}")));
        assert!(set.check(stock, &bearer(&reader)).is_ok());
        let denied = set.check(place, &bearer(&reader)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("write") && denied.message().contains("PlaceOrder"));
        assert!(set.check(place, &bearer(&writer)).is_ok());
        assert!(set
            .check(place, &headers(Some(&format!("bearer  {writer} "))))
            .is_ok());
        for bad in [
            headers(None),
            headers(Some("Basic abc")),
            headers(Some("Bearer ")),
            bearer("ordo_0000"),
            bearer(&format!("{reader}x")),
            bearer(&"a".repeat(AUTHORIZATION_BYTES_MAX)),
        ] {
            let refused = set.check(stock, &bad).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            assert!(!refused.message().contains(&reader[5..]));
        }
        assert!(set
            .check("/grpc.health.v1.Health/Check", &headers(None))
            .is_ok());
        assert!(set
            .check("/ordo.v1.Admin/Status", &bearer(&writer))
            .is_err());
    }

    #[test]
    fn a_file_is_refused_whole_for_any_bad_entry() {
        let digest = format!("{HASH_PREFIX}{}", "ab".repeat(32));
        let entry = |name: &str, hash: &str, scopes: &str| {
            format!("[[token]]\nname = {name:?}\nhash = {hash:?}\nscopes = {scopes}\n")
        };
        assert_eq!(TokenSet::parse("").unwrap().len(), 0);
        assert_eq!(
            TokenSet::parse(&entry("a", &digest, "[\"read\"]"))
                .unwrap()
                .len(),
            1
        );
        for (text, says) in [
            (entry("a b", &digest, "[\"read\"]"), "only letters"),
            (entry("a", "ab", "[\"read\"]"), "starts with"),
            (entry("a", &digest, "[]"), "no scopes"),
            (entry("a", &digest, "[\"root\"]"), "unknown scope"),
            (
                entry("a", &digest, "[\"read\"]") + &entry("a", &digest, "[\"read\"]"),
                "twice",
            ),
            (
                entry("a", &digest, "[\"read\"]") + "secret = \"x\"\n",
                "unknown field",
            ),
        ] {
            let e = TokenSet::parse(&text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let first = create(&path, "one", &[Scope::Read]).unwrap();
        let tokens = open_tokens(&path).unwrap();
        assert!(!tokens.reload(false).unwrap());
        let second = create(&path, "two", &[Scope::Read]).unwrap();
        assert!(tokens.reload(false).unwrap());
        assert_eq!(tokens.current().len(), 2);
        let stock = "/ordo.v1.Ordo/GetStock";
        let bearer = |t: &str| headers(Some(&format!("Bearer {t}")));
        assert!(tokens.current().check(stock, &bearer(&second)).is_ok());
        std::fs::write(&path, "[[token]]\nname = \"broken\"\n").unwrap();
        assert!(tokens.reload(false).is_err());
        assert!(tokens.current().check(stock, &bearer(&first)).is_ok());
        assert!(!tokens.reload(false).unwrap(), "looked at once");
    }
}
