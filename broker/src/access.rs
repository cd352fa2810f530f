//! Who may see which task: the one visibility rule of every client route.
//!
//! A client calls with either the broker's client secret, the operator's
//! credential that sees every task, or a named client token, which sees only
//! the tasks it created. Every task records its [`Owner`] when it is
//! created; [`can_see`] compares the two. A task a caller may not see is
//! answered exactly like a task that does not exist (404, left out of a
//! listing), so a token learns nothing about other tokens' tasks.

use embark_core::task::TaskId;
use embark_core::wire::{CreateTask, Task};

use crate::store::{ClientToken, Store, StoreError};

/// Which credential created a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The client secret.
    Operator,
    /// The client token with this id (ids, not names: a name freed by a
    /// revocation may be given to a new token, which must not inherit tasks).
    Token(String),
}

impl Owner {
    /// How the `owner` column holds it: `''` for the operator, else the token's id.
    pub fn column(&self) -> &str {
        match self {
            Owner::Operator => "",
            Owner::Token(id) => id,
        }
    }

    pub fn from_column(column: String) -> Owner {
        if column.is_empty() {
            Owner::Operator
        } else {
            Owner::Token(column)
        }
    }
}

/// An authenticated client caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Client {
    /// Holds the client secret: sees every task.
    Operator,
    /// Holds a live client token.
    Token(ClientToken),
}

impl Client {
    /// The owner of the tasks this caller creates.
    pub fn owner(&self) -> Owner {
        match self {
            Client::Operator => Owner::Operator,
            Client::Token(token) => Owner::Token(token.id.clone()),
        }
    }

    /// The owner a listing is restricted to; `None` for the operator (all tasks).
    pub fn scope(&self) -> Option<Owner> {
        match self {
            Client::Operator => None,
            Client::Token(_) => Some(self.owner()),
        }
    }

    /// For logs: `operator` or the token's name (never the token).
    pub fn name(&self) -> &str {
        match self {
            Client::Operator => "operator",
            Client::Token(token) => &token.name,
        }
    }
}

/// Whether `caller` may see (read, list, follow, cancel) a task owned by `owner`.
pub fn can_see(caller: &Client, owner: &Owner) -> bool {
    match caller {
        Client::Operator => true,
        Client::Token(token) => matches!(owner, Owner::Token(id) if *id == token.id),
    }
}

/// The task `id` if `caller` may see it; [`StoreError::TaskNotFound`] both
/// when there is no such task and when it is someone else's.
pub async fn visible_task<S: Store>(store: &S, caller: &Client, id: TaskId) -> Result<Task, StoreError> {
    let (task, owner) = store.owned_task(id).await?;
    if can_see(caller, &owner) {
        Ok(task)
    } else {
        Err(StoreError::TaskNotFound(id))
    }
}

/// The fingerprint of a create's body, kept with its `client_request_id`:
/// a retry must send the same body to get the first task back.
pub fn request_fingerprint(task: &CreateTask) -> [u8; 32] {
    let body = serde_json::to_vec(task).expect("a CreateTask serializes");
    *blake3::hash(&body).as_bytes()
}

/// True for an acceptable client token name: 1 to 64 bytes of
/// `[A-Za-z0-9._@-]` (it is shown in listings and logs).
pub fn is_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str) -> Client {
        Client::Token(ClientToken {
            id: id.into(),
            name: format!("name-{id}"),
            created_at: jiff::Timestamp::UNIX_EPOCH,
            last_used_at: None,
            revoked_at: None,
        })
    }

    #[test]
    fn the_operator_sees_all_and_a_token_only_its_own() {
        let (alice, bob) = (token("a"), token("b"));
        for owner in [Owner::Operator, Owner::Token("a".into()), Owner::Token("b".into())] {
            assert!(can_see(&Client::Operator, &owner), "{owner:?}");
        }
        assert!(can_see(&alice, &alice.owner()));
        assert!(!can_see(&alice, &bob.owner()));
        assert!(
            !can_see(&alice, &Owner::Operator),
            "the operator's tasks are not a token's"
        );
        assert_eq!(Owner::from_column(alice.owner().column().to_owned()), alice.owner());
        assert_eq!(Owner::from_column(String::new()), Owner::Operator);
    }

    #[test]
    fn token_names_are_plain() {
        for good in ["alice", "ci.bot-1", "a@b", &"n".repeat(64)] {
            assert!(is_token_name(good), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a\n", &"n".repeat(65)] {
            assert!(!is_token_name(bad), "{bad:?}");
        }
    }
}
