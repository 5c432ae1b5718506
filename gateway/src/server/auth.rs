//! Who may call what: named credentials with roles (`[[credentials]]`), beside the single
//! `admin_token` (every role, named `admin`) and `feedback_token` (`label`, named `feedback`).
//! Tokens are compared in constant time; the audit log names the credential, never its secret.

use std::net::SocketAddr;

use hyper::HeaderMap;
use serde::Deserialize;

use super::ApiError;
use crate::config::Config;

/// What a credential may do.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the admin API (routing, audit, drift, runs).
    Read,
    /// Change serving: reload, canary weight, pause, promote, roll back.
    Operate,
    /// Approve a held rollout step or reject (roll back) a canary; under a policy that wants
    /// approvals also needed to promote or raise a canary's weight by hand.
    Approve,
    /// Post labels (`/v2/models/{m}/feedback`).
    Label,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Approve => "approve",
            Role::Label => "label",
        }
    }
}

/// One named credential.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Named in the audit log and in errors (letters, digits, `-`, `_`, `.`; at most 64).
    pub name: String,
    /// The bearer token (at least 16 characters; never logged).
    pub token: String,
    pub roles: Vec<Role>,
}

/// Who made a call: a credential's name, or `loopback` / `anonymous` where none is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

/// Every credential the config holds, the two single tokens included.
fn all(config: &Config) -> Vec<(&str, &str, &[Role])> {
    const ADMIN: &[Role] = &[Role::Read, Role::Operate, Role::Approve, Role::Label];
    const FEEDBACK: &[Role] = &[Role::Label];
    let mut all: Vec<(&str, &str, &[Role])> = Vec::new();
    if let Some(t) = &config.admin_token {
        all.push(("admin", t, ADMIN));
    }
    if let Some(t) = &config.feedback_token {
        all.push(("feedback", t, FEEDBACK));
    }
    all.extend(config.credentials.iter().map(|c| (c.name.as_str(), c.token.as_str(), c.roles.as_slice())));
    all
}

/// Whether the endpoints needing `role` are guarded: the admin API once `admin_token` or any
/// credential with an admin role exists (a read-only credential locks the whole API, not only
/// reads), labels once `feedback_token` or a `label` credential exists (the admin token then
/// works for labels too, but does not by itself close them).
pub fn guarded(config: &Config, role: Role) -> bool {
    match role {
        Role::Label => {
            config.feedback_token.is_some() || config.credentials.iter().any(|c| c.roles.contains(&Role::Label))
        }
        _ => {
            config.admin_token.is_some() || config.credentials.iter().any(|c| c.roles.iter().any(|r| *r != Role::Label))
        }
    }
}

/// The caller of an endpoint that needs `role` (`what` names it in errors). Where nothing
/// guards it, the old defaults hold and any `Authorization` header is ignored: the admin API
/// answers loopback clients only (or everyone with `insecure_allow_unauthenticated`), labels
/// are open.
pub fn authorize(
    config: &Config,
    headers: &HeaderMap,
    peer: SocketAddr,
    role: Role,
    what: &str,
) -> Result<Caller, ApiError> {
    if !guarded(config, role) {
        return match role {
            Role::Label => Ok(Caller("anonymous".into())),
            _ if peer.ip().is_loopback() => Ok(Caller("loopback".into())),
            _ if config.insecure_allow_unauthenticated => Ok(Caller("unauthenticated".into())),
            _ => Err(ApiError::Forbidden(format!(
                "no admin_token or admin credential is configured, so the {what} answers loopback clients only"
            ))),
        };
    }
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        let single = if role == Role::Label { "feedback_token" } else { "admin_token" };
        return Err(ApiError::Unauthorized(format!(
            "the {what} needs Authorization: Bearer <{single}, or the token of a credential with the '{}' role>",
            role.as_str()
        )));
    };
    // Digests of equal length, every one compared: timing tells neither which token matched
    // nor how long the tokens are.
    let given = flywheel_registry::sha256_hex(given.as_bytes());
    let matched = all(config).into_iter().fold(None, |found, c| {
        let equal = constant_time_eq(given.as_bytes(), flywheel_registry::sha256_hex(c.1.as_bytes()).as_bytes());
        if equal && found.is_none() { Some(c) } else { found }
    });
    match matched {
        Some((name, _, roles)) if roles.contains(&role) => Ok(Caller(name.to_owned())),
        Some((name, _, _)) => Err(ApiError::Forbidden(format!(
            "the credential '{name}' lacks the '{}' role the {what} needs",
            role.as_str()
        ))),
        None => Err(ApiError::Unauthorized(format!("wrong token for the {what}"))),
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `[[credentials]]`: names and tokens well formed and distinct (from each other and
/// from `singles`, the admin and feedback tokens), roles given.
pub fn validate(credentials: &[Credential], singles: &[&str], min_token_chars: usize) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    let mut tokens: std::collections::HashSet<&str> = singles.iter().copied().collect();
    for (i, c) in credentials.iter().enumerate() {
        let ok_name = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !ok_name {
            return Err(format!(
                "credentials[{i}].name must be 1 to 64 letters, digits, '-', '_' or '.', given {:?}",
                c.name
            ));
        }
        if !names.insert(c.name.as_str()) || c.name == "admin" || c.name == "feedback" {
            return Err(format!(
                "credentials[{i}].name {:?} is taken (names are unique; 'admin' and 'feedback' name the single tokens)",
                c.name
            ));
        }
        if c.token.chars().count() < min_token_chars {
            return Err(format!(
                "credentials[{i}] ({}).token must be at least {min_token_chars} characters, given one of {}",
                c.name,
                c.token.chars().count()
            ));
        }
        if !c.token.chars().all(|ch| ch.is_ascii_graphic()) {
            return Err(format!(
                "credentials[{i}] ({}).token must be visible ASCII (no spaces): an HTTP header could not carry it",
                c.name
            ));
        }
        if !tokens.insert(c.token.as_str()) {
            return Err(format!(
                "credentials[{i}] ({}).token is another credential's token: give each its own",
                c.name
            ));
        }
        if c.roles.is_empty() {
            return Err(format!("credentials[{i}] ({}).roles is empty: give read, operate, approve or label", c.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    const CREDENTIALS: &str = "[[credentials]]\nname = \"reader\"\ntoken = \"reader-token-0123456\"\nroles = [\"read\"]\n\
         [[credentials]]\nname = \"ops\"\ntoken = \"operator-token-01234\"\nroles = [\"read\", \"operate\"]\n";

    #[test]
    fn each_credential_gets_its_roles_and_is_named_and_others_are_refused_with_the_reason() {
        let c = config(CREDENTIALS);
        let remote: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let read = authorize(&c, &bearer("reader-token-0123456"), remote, Role::Read, "admin API").unwrap();
        assert_eq!(read, Caller("reader".into()));
        let refused = authorize(&c, &bearer("reader-token-0123456"), remote, Role::Operate, "admin API").unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(refused.to_string().contains("'reader' lacks the 'operate' role"), "{refused}");
        let ops = authorize(&c, &bearer("operator-token-01234"), remote, Role::Operate, "admin API").unwrap();
        assert_eq!(ops, Caller("ops".into()));
        assert_eq!(
            authorize(&c, &bearer("nope-nope-nope-nope"), remote, Role::Read, "admin API").unwrap_err().status(),
            401
        );
        let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let missing = authorize(&c, &HeaderMap::new(), loopback, Role::Read, "admin API");
        assert_eq!(missing.unwrap_err().status(), 401, "loopback is no way around a configured credential");
        // No credential grants label: labels stay open, as without any token, whatever is sent.
        let open = authorize(&c, &bearer("reader-token-0123456"), remote, Role::Label, "feedback API").unwrap();
        assert_eq!(open, Caller("anonymous".into()));
        // A read-only credential locks the whole admin API, operate included.
        let c = config("[[credentials]]\nname = \"reader\"\ntoken = \"reader-token-0123456\"\nroles = [\"read\"]\n");
        assert_eq!(authorize(&c, &HeaderMap::new(), loopback, Role::Operate, "admin API").unwrap_err().status(), 401);
    }

    #[test]
    fn with_nothing_configured_the_old_defaults_hold_and_headers_are_ignored() {
        let c = config("");
        let (loopback, remote): (SocketAddr, SocketAddr) =
            ("127.0.0.1:1".parse().unwrap(), "10.0.0.9:1".parse().unwrap());
        let junk = bearer("whatever-whatever-1");
        assert_eq!(authorize(&c, &junk, loopback, Role::Operate, "admin API").unwrap().0, "loopback");
        assert_eq!(authorize(&c, &junk, remote, Role::Read, "admin API").unwrap_err().status(), 403);
        assert_eq!(authorize(&c, &junk, remote, Role::Label, "feedback API").unwrap().0, "anonymous");
        // The admin token alone closes the admin API, not labels (it still works for them).
        let c = config("admin_token = \"admin-token-0123456\"\n");
        assert_eq!(authorize(&c, &HeaderMap::new(), remote, Role::Label, "feedback API").unwrap().0, "anonymous");
    }

    #[test]
    fn the_single_tokens_are_credentials_named_admin_and_feedback() {
        let c = config("admin_token = \"admin-token-0123456\"\nfeedback_token = \"feedback-token-01234\"\n");
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        assert_eq!(
            authorize(&c, &bearer("admin-token-0123456"), peer, Role::Label, "feedback API").unwrap().0,
            "admin"
        );
        assert_eq!(
            authorize(&c, &bearer("feedback-token-01234"), peer, Role::Label, "feedback API").unwrap().0,
            "feedback"
        );
        assert_eq!(
            authorize(&c, &bearer("feedback-token-01234"), peer, Role::Operate, "admin API").unwrap_err().status(),
            403
        );
    }

    #[test]
    fn bad_credentials_are_refused_naming_the_entry() {
        let cases = [
            (
                "[[credentials]]\nname = \"a b\"\ntoken = \"0123456789abcdef\"\nroles = [\"read\"]\n",
                "credentials[0].name",
            ),
            (
                "[[credentials]]\nname = \"a\"\ntoken = \"short\"\nroles = [\"read\"]\n",
                "credentials[0] (a).token must be at least 16",
            ),
            ("[[credentials]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nroles = []\n", "roles is empty"),
            ("[[credentials]]\nname = \"admin\"\ntoken = \"0123456789abcdef\"\nroles = [\"read\"]\n", "is taken"),
            (
                "[[credentials]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nroles = [\"read\"]\n\
                 [[credentials]]\nname = \"b\"\ntoken = \"0123456789abcdef\"\nroles = [\"label\"]\n",
                "another credential's token",
            ),
            (
                "feedback_token = \"0123456789abcdef\"\n[[credentials]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nroles = [\"read\"]\n",
                "another credential's token",
            ),
            ("[[credentials]]\nname = \"a\"\ntoken = \"0123456789 abcdef\"\nroles = [\"read\"]\n", "visible ASCII"),
        ];
        for (text, expected) in cases {
            let err = config(text).validate().unwrap_err();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }
}
