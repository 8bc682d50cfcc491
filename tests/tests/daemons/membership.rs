//! Removing a member (issue 15): the others move to a new epoch of the room, with keys the
//! removed member never sees; a member that was offline moves on when it comes back.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::client::{Client, ClientError};
use peerlog::keys::{seal, RoomSecret};
use peerlog::log::Body;
use peerlog_proto::api::{codes, rooms};
use peerlog_proto::wire::FeedKey;
use peerlog_tests::*;

const WAIT: Duration = Duration::from_secs(60);

async fn room_info(c: &mut Client, id: &str) -> Result<Option<rooms::RoomInfo>> {
    Ok(rooms_list(c).await?.into_iter().find(|r| r.id == id))
}

/// Waits until `c`'s view of room `id` satisfies `pred`.
async fn wait_room(
    c: &mut Client,
    id: &str,
    what: &str,
    pred: impl Fn(&rooms::RoomInfo) -> bool,
) -> Result<rooms::RoomInfo> {
    within(WAIT, what, async {
        loop {
            if let Some(r) = room_info(c, id).await?.filter(|r| pred(r)) {
                return anyhow::Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?
}

/// Waits until `c` holds every one of `wanted` in room `id`.
async fn holds(c: &mut Client, id: &str, wanted: &[&str]) -> Result<()> {
    let what = format!("{wanted:?} in room {id}");
    within(WAIT, &what, async {
        loop {
            let have = texts(c, id).await?;
            if wanted.iter().all(|w| have.iter().any(|t| t == w)) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_follow_the_room_and_an_offline_member_catches_up() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let ada = TestDaemon::start_bootstrapped(&boot).await?;
    let mut bob = TestDaemon::start_bootstrapped(&boot).await?;
    let carol = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut a, mut b, mut c) = (ada.client().await?, bob.client().await?, carol.client().await?);
    let (old, inv) = create(&mut a, "family").await?;
    let carol_key = join_invite(&mut c, &inv).await?.feed_key;
    join_invite(&mut b, &inv).await?;
    send(&mut a, &old, "hello from ada").await?;
    send(&mut b, &old, "hello from bob").await?;
    send(&mut c, &old, "hello from carol").await?;
    // By history, not events: the two may arrive in either order.
    holds(&mut a, &old, &["hello from bob", "hello from carol"]).await?;
    holds(&mut c, &old, &["hello from bob"]).await?;

    // Bob is away when Ada removes Carol.
    bob.stop().await?;
    let params = rooms::RemoveParams { room: old.clone(), member: carol_key.clone() };
    let removed = a.request::<rooms::Remove>(&params).await?;
    let new = removed.room.id.clone();
    ensure!(new != old && removed.removed == carol_key, "{removed:?}");
    ensure!(
        room_info(&mut a, &old).await?.and_then(|r| r.moved_to) == Some(new.clone()),
        "Ada's old room does not say where it went"
    );
    // Removing again in the old room is refused: it moved on.
    let again = a.request::<rooms::Remove>(&params).await;
    ensure!(matches!(again, Err(ClientError::Rpc { .. })), "a second removal in the old room: {again:?}");

    // Carol hears of it in the old room, and is not in the new one.
    let ada_key = room_info(&mut a, &old).await?.context("Ada's old room")?.feed_key;
    let seen = wait_room(&mut c, &old, "Carol to learn she was removed", |r| r.removed_by.is_some()).await?;
    ensure!(seen.removed_by == Some(ada_key), "removed by {:?}", seen.removed_by);
    ensure!(seen.moved_to.is_none(), "Carol's old room points at the new one: {seen:?}");

    // Bob comes back: he fetches the rotation from Ada and moves on.
    bob.restart().await?;
    let mut b = bob.client().await?;
    wait_room(&mut b, &old, "Bob to move on to the new epoch", |r| r.moved_to.as_deref() == Some(new.as_str())).await?;
    send(&mut a, &new, "after carol left").await?;
    wait_for_text(&mut b, &new, "after carol left", WAIT).await?;
    send(&mut b, &new, "bob in the new room").await?;
    wait_for_text(&mut a, &new, "bob in the new room", WAIT).await?;
    // History before the removal stays readable in the old room.
    ensure!(texts(&mut b, &old).await?.contains(&"hello from carol".to_string()), "Bob lost the old history");

    // In the new room only Ada, who removed, may remove: Bob's daemon refuses to...
    let ada_new = room_info(&mut a, &new).await?.context("Ada's new room")?.feed_key;
    let by_bob = b.request::<rooms::Remove>(&rooms::RemoveParams { room: new.clone(), member: ada_new.clone() }).await;
    ensure!(
        matches!(by_bob, Err(ClientError::Rpc { code: codes::NOT_ADMIN, .. })),
        "Bob, not an admin, removed Ada: {by_bob:?}"
    );
    // ...and a hostile daemon that writes the rotation anyway is ignored by everyone.
    forge_rotation(&bob, &new, &ada_new)?;
    send(&mut b, &new, "after the forged rotation").await?;
    wait_for_text(&mut a, &new, "after the forged rotation", WAIT).await?;
    for (who, c) in [("Ada", &mut a), ("Bob", &mut b)] {
        let r = room_info(c, &new).await?.context("the new room")?;
        ensure!(r.moved_to.is_none() && r.removed_by.is_none(), "{who} followed a rotation by a non-admin: {r:?}");
    }

    // Carol has no way in: not joined, not found, and the old invite leads to the old room.
    let joined: Vec<String> = rooms_list(&mut c).await?.into_iter().map(|r| r.id).collect();
    ensure!(!joined.contains(&new), "Carol joined the new room: {joined:?}");
    ensure!(join_invite(&mut c, &inv).await?.id == old, "the old invite led elsewhere");
    ensure!(!texts(&mut c, &old).await?.iter().any(|t| t.contains("after carol")), "Carol read the new epoch");
    let peers: Vec<String> = peers_list(&mut c, None).await?.into_iter().flat_map(|p| p.rooms).collect();
    ensure!(!peers.contains(&new), "Carol has a session in the new room: {peers:?}");
    Ok(())
}

/// What a hostile member's daemon could write past its API: a rotation of room `id` that
/// removes `victim`, signed by this daemon's writer, which is no admin there.
fn forge_rotation(d: &TestDaemon, id: &str, victim: &str) -> Result<()> {
    let service = d.running()?.service();
    let room = service.rooms.find(id).context("the room")?;
    let victim = FeedKey::try_from(hex::decode(victim)?.as_slice()).map_err(|_| anyhow::anyhow!("a feed key"))?;
    let sealed = vec![seal::seal(&room.discovery_key, &room.feed_key, &RoomSecret::random())?];
    let appended = room.append(vec![Body::Rotate { removed: vec![victim], sealed, admin: room.feed_key }])?;
    service.store.flush_blocking()?;
    room.announce(&appended.head, &appended.messages);
    Ok(())
}
