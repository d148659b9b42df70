//! Client-side helpers for programs that call the chat services (chatctl, tests, benchmarks).

use std::{fmt, str::FromStr};

use tonic::{Request, Status, metadata::MetadataValue};

use crate::pb::{auth::Session, gateway};

/// A request carrying `session`'s access token.
pub fn authed<T>(session: &Session, body: T) -> Result<Request<T>, Status> {
    let mut req = Request::new(body);
    let token = MetadataValue::try_from(format!("Bearer {}", session.access_token))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    req.metadata_mut().insert("authorization", token);
    Ok(req)
}

/// Which service a conversation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A group chat.
    Group,
    /// A direct-message conversation.
    Dm,
    /// A server's channel.
    Channel,
}

/// A conversation as people name it: `group:7`, `dm:3`, `channel:12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationRef {
    /// Its service.
    pub kind: Kind,
    /// Its id there (a group, DM conversation or channel id).
    pub id: u64,
}

impl FromStr for ConversationRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?}: expected group:<id>, dm:<id> or channel:<id>");
        let (kind, id) = s.split_once(':').ok_or_else(usage)?;
        let kind = match kind {
            "group" => Kind::Group,
            "dm" => Kind::Dm,
            "channel" => Kind::Channel,
            _ => return Err(usage()),
        };
        let id = id.parse().map_err(|_| usage())?;
        Ok(Self { kind, id })
    }
}

impl From<ConversationRef> for gateway::ConversationRef {
    fn from(c: ConversationRef) -> Self {
        let kind = match c.kind {
            Kind::Group => gateway::Kind::Group,
            Kind::Dm => gateway::Kind::Dm,
            Kind::Channel => gateway::Kind::Channel,
        };
        Self {
            kind: kind as i32,
            id: c.id,
        }
    }
}

impl ConversationRef {
    /// The conversation a session event names, if its kind is one.
    pub fn of(c: &gateway::ConversationRef) -> Option<Self> {
        Self::in_kind(c.kind, c.id)
    }

    /// Conversation `id` of the session API's `kind`, if that is a kind.
    pub fn in_kind(kind: i32, id: u64) -> Option<Self> {
        let kind = match gateway::Kind::try_from(kind).ok()? {
            gateway::Kind::Group => Kind::Group,
            gateway::Kind::Dm => Kind::Dm,
            gateway::Kind::Channel => Kind::Channel,
            gateway::Kind::Unspecified => return None,
        };
        Some(Self { kind, id })
    }
}

impl fmt::Display for ConversationRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Group => "group",
            Kind::Dm => "dm",
            Kind::Channel => "channel",
        };
        write!(f, "{kind}:{}", self.id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn conversation_refs_parse_and_print_alike() {
        for text in ["group:7", "dm:3", "channel:12"] {
            let r: ConversationRef = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
        let e = "room:1".parse::<ConversationRef>().unwrap_err();
        assert!(e.contains("expected group:<id>"), "{e}");
        assert!("group:x".parse::<ConversationRef>().is_err());
        assert!("group".parse::<ConversationRef>().is_err());
    }

    #[test]
    fn conversation_refs_go_to_the_session_api_and_back() {
        for text in ["group:7", "dm:3", "channel:12"] {
            let r: ConversationRef = text.parse().unwrap();
            assert_eq!(ConversationRef::of(&r.into()), Some(r));
        }
        assert_eq!(ConversationRef::in_kind(0, 1), None);
        assert_eq!(ConversationRef::in_kind(99, 1), None);
    }
}
