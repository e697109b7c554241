//! Identity: bearer tokens, known only by their SHA-256 in users.yml. Tokens are 32 random bytes
//! (256 bits), so a plain SHA-256 is enough to store them; no password ever ships.

use crate::config::User;
use crate::domain::{Role, UserName};
use sha2::{Digest, Sha256};

/// Who is calling, once the token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: UserName,
    pub roles: Vec<Role>,
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (prefixed so that it is recognisable in a secret scanner).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("slc_{}", hex::encode(bytes)))
}

/// Finds the user a token belongs to.
pub fn authenticate(users: &[User], token: &str) -> Option<Caller> {
    let hash = token_sha256(token.trim());
    // Compare every entry without stopping early: the time taken says nothing about which
    // hash matched.
    let mut found = None;
    for user in users {
        let equal = user
            .token_sha256
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if equal && found.is_none() {
            found = Some(Caller {
                name: user.name.clone(),
                roles: user.roles.clone(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_authenticate_by_hash() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        let users = vec![User {
            name: "alice".parse().unwrap(),
            roles: vec![Role::Developer],
            token_sha256: token_sha256(&a),
            email: None,
            slack: None,
        }];
        assert_eq!(authenticate(&users, &a).unwrap().name.as_str(), "alice");
        assert!(authenticate(&users, &b).is_none());
        assert!(authenticate(&users, "").is_none());
    }
}
