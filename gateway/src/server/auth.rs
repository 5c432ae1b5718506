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
    /// Approve or reject a held rollout step (reserved for approvals; grants nothing else).
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

/// Whether any configured credential grants `role`.
pub fn guarded(config: &Config, role: Role) -> bool {
    all(config).iter().any(|(_, _, roles)| roles.contains(&role))
}

/// The caller of an endpoint that needs `role` (`what` names it in errors). Without any
/// credential granting `role`, the admin API answers loopback clients only (or everyone with
/// `insecure_allow_unauthenticated`) and labels are open, as before credentials existed.
pub fn authorize(
    config: &Config,
    headers: &HeaderMap,
    peer: SocketAddr,
    role: Role,
    what: &str,
) -> Result<Caller, ApiError> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let credentials = all(config);
    if let Some(given) = given {
        // Every token is compared, whichever matches, so timing tells nothing.
        let matched = credentials.iter().fold(None, |found, c| {
            let equal = constant_time_eq(given.as_bytes(), c.1.as_bytes());
            if equal && found.is_none() { Some(c) } else { found }
        });
        return match matched {
            Some((name, _, roles)) if roles.contains(&role) => Ok(Caller((*name).to_owned())),
            Some((name, _, _)) => Err(ApiError::Forbidden(format!(
                "the credential '{name}' lacks the '{}' role the {what} needs",
                role.as_str()
            ))),
            None => Err(ApiError::Unauthorized(format!("wrong token for the {what}"))),
        };
    }
    if guarded(config, role) {
        let single = if role == Role::Label { "feedback_token" } else { "admin_token" };
        return Err(ApiError::Unauthorized(format!(
            "the {what} needs Authorization: Bearer <{single}, or the token of a credential with the '{}' role>",
            role.as_str()
        )));
    }
    match role {
        Role::Label => Ok(Caller("anonymous".into())),
        _ if peer.ip().is_loopback() || config.insecure_allow_unauthenticated => Ok(Caller("loopback".into())),
        _ => Err(ApiError::Forbidden(format!(
            "no credential with the '{}' role is configured (admin_token or [[credentials]]), so the {what} answers loopback clients only",
            role.as_str()
        ))),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `[[credentials]]`: names and tokens well formed and distinct, roles given.
pub fn validate(credentials: &[Credential], min_token_chars: usize) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    let mut tokens = std::collections::HashSet::new();
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
        let missing = authorize(&c, &HeaderMap::new(), "127.0.0.1:1".parse().unwrap(), Role::Read, "admin API");
        assert_eq!(missing.unwrap_err().status(), 401, "loopback is no way around a configured credential");
        // No credential grants label: labels stay open, as without any token.
        let open = authorize(&c, &HeaderMap::new(), remote, Role::Label, "feedback API").unwrap();
        assert_eq!(open, Caller("anonymous".into()));
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
        ];
        for (text, expected) in cases {
            let err = config(text).validate().unwrap_err();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }
}
