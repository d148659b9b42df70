//! A delivery's read checks access inside the statement that reads the messages
//! (`store::messages::readable_range`): against a real MariaDB, each service's access rule
//! answers as its `Membership` does — members read, outsiders, kicked members, strangers to a
//! DM and readers of a deleted channel are denied — and "nothing new" is told apart from both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chatd::{
    pb::{
        dms::OpenRequest,
        servers::{DeleteChannelRequest, JoinRequest, KickRequest},
    },
    store::{
        self,
        messages::{Readable, readable_range},
    },
};
use common::{Clients, Setup, authed, register, send, uid};
use sqlx::{Connection, MySqlConnection};

/// What a read found, as the seqs read; None when denied, Some(empty) when nothing is new.
fn seqs(read: chatd::error::Result<Readable>, conv: u64) -> Option<Vec<u64>> {
    match read.unwrap() {
        Readable::Allowed(messages) => {
            assert!(
                messages.iter().all(|m| m.conversation_id == conv),
                "{messages:?}"
            );
            Some(messages.iter().map(|m| m.seq).collect())
        }
        Readable::Nothing => Some(Vec::new()),
        Readable::Denied => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_services_rule_answers_as_its_membership() {
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let member = register(&mut c.auth, "member").await;
    let outsider = register(&mut c.auth, "outsider").await;
    let mut conn = MySqlConnection::connect(&s.db.primary.app_url())
        .await
        .unwrap();

    // Groups: members read, in seq order and within the limit; an outsider is denied even
    // when there is something to read.
    let group = c.group(&owner, "team", &[&member]).await.id;
    for text in ["one", "two", "three"] {
        c.groups
            .send_message(authed(&owner, send(group, text, "")))
            .await
            .unwrap();
    }
    let g = store::groups::TABLES;
    // A prepared statement's second run differs from its first on MariaDB: run each twice.
    for _ in 0..2 {
        assert_eq!(
            seqs(
                readable_range(&mut conn, g, group, uid(&member), 0, 10).await,
                group
            ),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            seqs(
                readable_range(&mut conn, g, group, uid(&member), 1, 1).await,
                group
            ),
            Some(vec![2])
        );
        assert_eq!(
            seqs(
                readable_range(&mut conn, g, group, uid(&member), 3, 10).await,
                group
            ),
            Some(vec![])
        );
        assert_eq!(
            seqs(
                readable_range(&mut conn, g, group, uid(&outsider), 0, 10).await,
                group
            ),
            None
        );
    }
    // No such group: nothing to read, so the statement cannot tell; the Membership says.
    assert_eq!(
        seqs(
            readable_range(&mut conn, g, 999_999, uid(&member), 0, 10).await,
            999_999
        ),
        Some(vec![])
    );

    // DMs: the two participants, no one else.
    let dm = c
        .dms
        .open(authed(
            &owner,
            OpenRequest {
                user_id: uid(&member),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    c.dms
        .send_message(authed(&member, send(dm, "hi", "")))
        .await
        .unwrap();
    let d = store::dms::TABLES;
    assert_eq!(
        seqs(
            readable_range(&mut conn, d, dm, uid(&owner), 0, 10).await,
            dm
        ),
        Some(vec![1])
    );
    assert_eq!(
        seqs(
            readable_range(&mut conn, d, dm, uid(&member), 0, 10).await,
            dm
        ),
        Some(vec![1])
    );
    assert_eq!(
        seqs(
            readable_range(&mut conn, d, dm, uid(&outsider), 0, 10).await,
            dm
        ),
        None
    );

    // Servers: members of the channel's server; a kicked member and everyone once the channel
    // is deleted are denied.
    let server = c.server(&owner, "club").await;
    let channel = server.channels[0].id;
    let invite = c.invite(&owner, server.id).await;
    c.servers
        .join(authed(&member, JoinRequest { code: invite }))
        .await
        .unwrap();
    c.servers
        .send_message(authed(&owner, send(channel, "welcome", "")))
        .await
        .unwrap();
    let sv = store::servers::TABLES;
    assert_eq!(
        seqs(
            readable_range(&mut conn, sv, channel, uid(&member), 0, 10).await,
            channel
        ),
        Some(vec![1])
    );
    assert_eq!(
        seqs(
            readable_range(&mut conn, sv, channel, uid(&outsider), 0, 10).await,
            channel
        ),
        None
    );
    c.servers
        .kick(authed(
            &owner,
            KickRequest {
                server_id: server.id,
                user_id: uid(&member),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        seqs(
            readable_range(&mut conn, sv, channel, uid(&member), 0, 10).await,
            channel
        ),
        None
    );
    assert_eq!(
        seqs(
            readable_range(&mut conn, sv, channel, uid(&owner), 0, 10).await,
            channel
        ),
        Some(vec![1])
    );
    c.servers
        .delete_channel(authed(
            &owner,
            DeleteChannelRequest {
                channel_id: channel,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        seqs(
            readable_range(&mut conn, sv, channel, uid(&owner), 0, 10).await,
            channel
        ),
        None
    );
}
