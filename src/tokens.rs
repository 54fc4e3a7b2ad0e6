//! API tokens: made by a user for themselves, listed by a short id, deleted one by one. The JSON
//! API (`/hub/api/users/{name}/tokens`) and the tokens page (`/hub/token`) both come here, so
//! both check the same limits and say the same things.

use crate::app::App;
use crate::clock;
use crate::error::{Error, Result};
use crate::ids::UserName;
use crate::secret::{Secret, TokenHash};
use crate::store::ApiTokenRecord;

/// A token's lifetime when none is asked for, and the longest one may ask for (seconds).
pub const DEFAULT_LIFETIME: u64 = 30 * 86400;
pub const MAX_LIFETIME: u64 = 365 * 86400;
/// The longest note, in characters.
pub const MAX_NOTE: usize = 200;
/// Hex digits of a token's hash that name it in lists: enough to tell a user's tokens apart, and
/// the token cannot be derived from its hash.
pub const ID_LEN: usize = 16;

/// The id a token is listed and deleted by.
pub fn id(hash: &TokenHash) -> String {
    hash.to_hex()[..ID_LEN].to_owned()
}

/// Whether `s` has the shape of a token id (either case).
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl App {
    /// Makes an API token for `user`, valid for `lifetime` seconds (`DEFAULT_LIFETIME` when not
    /// given). The token is in the answer only: the store keeps its hash.
    pub async fn create_api_token(
        &self,
        user: &UserName,
        note: &str,
        lifetime: Option<u64>,
    ) -> Result<(Secret, ApiTokenRecord)> {
        let lifetime = lifetime.unwrap_or(DEFAULT_LIFETIME);
        if lifetime == 0 || lifetime > MAX_LIFETIME {
            return Err(Error::bad_request(format!(
                "The lifetime (expires_in) must be between 1 second and a year ({MAX_LIFETIME} seconds)."
            )));
        }
        let note = note.trim();
        if note.chars().count() > MAX_NOTE {
            return Err(Error::bad_request(format!(
                "The note is at most {MAX_NOTE} characters."
            )));
        }
        if note.chars().any(char::is_control) {
            return Err(Error::bad_request(
                "The note may not contain control characters.",
            ));
        }
        let token = Secret::generate();
        let now = clock::now();
        let record = ApiTokenRecord {
            user: user.clone(),
            created_at: now,
            note: note.to_owned(),
            expires_at: Some(now + lifetime as i64),
        };
        self.store.put_api_token(&token.hash(), &record).await?;
        Ok((token, record))
    }

    /// Deletes the one of `user`'s tokens listed as `id` (either case): refused from now on,
    /// here and (through the store's announcement) on every instance, and what was opened with
    /// it is closed. Answers the id as listed; 404 when there is no such token. (The list
    /// itself is the store's: live tokens, newest first.)
    pub async fn delete_api_token_by_id(&self, user: &UserName, id: &str) -> Result<String> {
        let id = id.trim().to_ascii_lowercase();
        if !is_id(&id) {
            return Err(Error::NotFound(format!(
                "An API token id is {ID_LEN} hexadecimal digits, as in the list of your tokens."
            )));
        }
        let tokens = self.store.list_api_tokens(user).await?;
        let hash = tokens
            .iter()
            .map(|(hash, _)| hash)
            .find(|hash| self::id(hash) == id);
        match hash {
            Some(hash) if self.store.delete_api_token(user, hash).await? => {
                self.forget_api_token(hash);
                Ok(id)
            }
            _ => Err(Error::NotFound(format!("{user} has no API token {id}."))),
        }
    }
}
