//! Removing a member (issue 15): the others move to a new epoch of the room, with keys the
//! removed member never sees; a member that was offline moves on when it comes back.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::client::{Client, ClientError};
use peerlog::keys::{seal, RoomSecret};
use peerlog::log::Body;
use peerlog_proto::api::{codes, devices, events, peers, rooms, NoParams};
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

    // Ada made the room: she is its admin, bound into the invite. Carol may not remove Bob,
    // and a rotation she writes past her API is ignored by everyone.
    let ada_key = room_info(&mut a, &old).await?.context("Ada's room")?.feed_key;
    for (who, c) in [("Bob", &mut b), ("Carol", &mut c)] {
        let admin = room_info(c, &old).await?.context("the room")?.admin;
        ensure!(admin.as_ref() == Some(&ada_key), "{who} sees {admin:?} as the admin, not Ada");
    }
    let bob_key = room_info(&mut b, &old).await?.context("Bob's room")?.feed_key;
    let by_carol =
        c.request::<rooms::Remove>(&rooms::RemoveParams { room: old.clone(), member: bob_key.clone() }).await;
    ensure!(
        matches!(by_carol, Err(ClientError::Rpc { code: codes::NOT_ADMIN, .. })),
        "Carol, not an admin, removed Bob: {by_carol:?}"
    );
    forge_rotation(&carol, &old, &bob_key)?;
    send(&mut c, &old, "carol forged a rotation").await?;
    for c in [&mut a, &mut b] {
        holds(c, &old, &["carol forged a rotation"]).await?;
        let r = room_info(c, &old).await?.context("the room")?;
        ensure!(r.moved_to.is_none() && r.removed_by.is_none(), "a forged rotation was followed: {r:?}");
    }

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
    // (Told by an event, as the UI is.)
    let seen = c.wait_for::<events::RoomMoved>(WAIT, "Carol to be told she was removed", |r| r.id == old).await?;
    ensure!(seen.removed_by == Some(ada_key), "removed by {:?}", seen.removed_by);
    ensure!(seen.moved_to.is_none(), "Carol's old room points at the new one: {seen:?}");

    // Carol's daemon writes nothing more in the old room; what a hostile one writes there
    // past its API reaches Ada and is refused.
    ensure!(send(&mut c, &old, "carol, removed").await.is_err(), "a removed member's daemon wrote to the room");
    let before = room_info(&mut a, &old).await?.context("Ada's old room")?;
    write_past_api(&carol, &old, Body::Text { text: "carol, removed".into() })?;
    let after = wait_room(&mut a, &old, "Ada to receive what Carol wrote after her removal", |r| {
        r.entries_received > before.entries_received
    })
    .await?;
    ensure!(after.entries_stored == before.entries_stored, "Ada stored a removed member's entry: {after:?}");
    ensure!(!texts(&mut a, &old).await?.contains(&"carol, removed".to_string()), "Ada shows a removed member's entry");

    // Bob comes back: he fetches the rotation from Ada and moves on.
    bob.restart().await?;
    let mut b = bob.client().await?;
    wait_room(&mut b, &old, "Bob to move on to the new epoch", |r| r.moved_to.as_deref() == Some(new.as_str())).await?;
    send(&mut a, &new, "after carol left").await?;
    wait_for_text(&mut b, &new, "after carol left", WAIT).await?;
    send(&mut b, &new, "bob in the new room").await?;
    wait_for_text(&mut a, &new, "bob in the new room", WAIT).await?;
    // History before the removal stays readable in the old room, and nothing Carol wrote after.
    let bob_old = texts(&mut b, &old).await?;
    ensure!(bob_old.contains(&"hello from carol".to_string()), "Bob lost the old history");
    ensure!(!bob_old.contains(&"carol, removed".to_string()), "Bob shows a removed member's entry");

    // In the new room only Ada, who removed, may remove: Bob's daemon refuses to...
    let ada_new = room_info(&mut a, &new).await?.context("Ada's new room")?.feed_key;
    let admin = room_info(&mut b, &new).await?.context("Bob's new room")?.admin;
    ensure!(admin.as_ref() == Some(&ada_new), "Bob sees {admin:?} as the new room's admin");
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

    // Someone new with the old invite finds the old room, read-only, and no way on.
    let dave = TestDaemon::start_bootstrapped(&boot).await?;
    let mut d = dave.client().await?;
    join_invite(&mut d, &inv).await?;
    let seen = wait_room(&mut d, &old, "Dave to learn the room moved on", |r| r.read_only).await?;
    ensure!(seen.moved_to.is_none() && seen.removed_by.is_none(), "{seen:?}");
    ensure!(send(&mut d, &old, "dave was here").await.is_err(), "Dave wrote to a room that moved on");
    Ok(())
}

/// What a hostile member's daemon could write past its API: a rotation of room `id` that
/// removes `victim`, signed by this daemon's writer, which is no admin there. (The seal
/// holds a seed no room is made from: nobody gets as far as joining.)
fn forge_rotation(d: &TestDaemon, id: &str, victim: &str) -> Result<()> {
    let room = d.running()?.service().rooms.find(id).context("the room")?;
    let victim = FeedKey::try_from(hex::decode(victim)?.as_slice()).map_err(|_| anyhow::anyhow!("a feed key"))?;
    let sealed = vec![seal::seal(&room.discovery_key, &room.feed_key, &RoomSecret::random())?];
    write_past_api(d, id, Body::Rotate { removed: vec![victim], kept: vec![], sealed, admin: room.feed_key })
}

/// Appends `body` to this daemon's feed in room `id` and pushes it to the room's peers, as
/// a hostile daemon would: without the API's checks.
fn write_past_api(d: &TestDaemon, id: &str, body: Body) -> Result<()> {
    let service = d.running()?.service();
    let room = service.rooms.find(id).context("the room")?;
    let appended = room.append(vec![body])?;
    service.store.flush_blocking()?;
    room.announce(&appended.head, &appended.messages);
    Ok(())
}

/// Joins by passphrase; returns our writer key in the room.
async fn join_key(c: &mut Client, passphrase: &str) -> Result<String> {
    let id = join(c, passphrase).await?;
    Ok(room_info(c, &id).await?.context("the joined room")?.feed_key)
}

/// Two members remove someone at once, each unaware of the other's removal: every member
/// ends in the same new room (the first rotation by the room's clock wins), and the room
/// the other removal made says it moved there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_removals_at_once_converge_on_one_epoch() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let mut ada = TestDaemon::start_bootstrapped(&boot).await?;
    let mut bob = TestDaemon::start_bootstrapped(&boot).await?;
    let mut carol = TestDaemon::start_bootstrapped(&boot).await?;
    let mut dan = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut a, mut b) = (ada.client().await?, bob.client().await?);
    let (mut c, mut d) = (carol.client().await?, dan.client().await?);
    // A room made from a passphrase has no admin: any member may remove.
    let pass = "crossing removals of the chess club";
    let old = join(&mut a, pass).await?;
    join(&mut b, pass).await?;
    let carol_key = join_key(&mut c, pass).await?;
    let dan_key = join_key(&mut d, pass).await?;
    for (c, text) in [(&mut a, "ada"), (&mut b, "bob"), (&mut c, "carol"), (&mut d, "dan")] {
        send(c, &old, text).await?;
    }
    for c in [&mut a, &mut b] {
        holds(c, &old, &["ada", "bob", "carol", "dan"]).await?;
    }

    // Ada removes Carol while Bob is away; Carol and Dan hear of it.
    bob.stop().await?;
    let by_ada = a.request::<rooms::Remove>(&rooms::RemoveParams { room: old.clone(), member: carol_key }).await?;
    wait_room(&mut c, &old, "Carol to hear of Ada's removal", |r| r.removed_by.is_some()).await?;
    wait_room(&mut d, &old, "Dan to follow Ada's removal", |r| r.moved_to.is_some()).await?;
    // Bob comes back alone and, not knowing, removes Dan.
    for d in [&mut ada, &mut carol, &mut dan] {
        d.stop().await?;
    }
    bob.restart().await?;
    let mut b = bob.client().await?;
    let by_bob = b.request::<rooms::Remove>(&rooms::RemoveParams { room: old.clone(), member: dan_key }).await?;
    for d in [&mut ada, &mut carol, &mut dan] {
        d.restart().await?;
    }
    let (mut a, mut c, mut d) = (ada.client().await?, carol.client().await?, dan.client().await?);

    // Everyone who stays ends in the same room: the first rotation's.
    let (ada_room, bob_room) = (by_ada.room.id, by_bob.room.id);
    let winner = within(WAIT, "Ada and Bob to move on to the same room", async {
        loop {
            let at_ada = room_info(&mut a, &old).await?.and_then(|r| r.moved_to);
            let at_bob = room_info(&mut b, &old).await?.and_then(|r| r.moved_to);
            if at_ada.is_some() && at_ada == at_bob {
                return anyhow::Ok(at_ada.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    // Ada's removal (of Carol) won, or Bob's (of Dan).
    let (loser, loser_client, removed, kept) = if winner == ada_room {
        (bob_room.clone(), &mut b, &mut c, &mut d)
    } else {
        ensure!(winner == bob_room, "moved to {winner}, neither removal's room ({ada_room}, {bob_room})");
        (ada_room.clone(), &mut a, &mut d, &mut c)
    };
    eprintln!("{}'s removal won: room {winner} over {loser}", if winner == ada_room { "Ada" } else { "Bob" });
    let what = format!("the losing removal's room {loser} to say it moved to {winner}");
    wait_room(loser_client, &loser, &what, |r| r.moved_to.as_deref() == Some(winner.as_str())).await?;
    let refused = send(loser_client, &loser, "into the superseded room").await;
    ensure!(refused.is_err(), "a message was written to a superseded room");
    wait_room(removed, &old, "the winner's removed member to hear of it", |r| r.removed_by.is_some()).await?;
    wait_room(kept, &old, "the other member to follow the winner", |r| r.moved_to.as_deref() == Some(winner.as_str()))
        .await?;
    send(&mut a, &winner, "ada after both").await?;
    holds(&mut b, &winner, &["ada after both"]).await?;
    Ok(())
}

/// Ada's room "club", with Bob and Carol in it, each having written once.
struct Club {
    boot: TestDaemon,
    ada: TestDaemon,
    bob: TestDaemon,
    carol: TestDaemon,
    room: String,
    bob_key: String,
    carol_key: String,
}

impl Club {
    async fn start() -> Result<Self> {
        let boot = TestDaemon::start_bootstrap_node().await?;
        let ada = TestDaemon::start_bootstrapped(&boot).await?;
        let bob = TestDaemon::start_bootstrapped(&boot).await?;
        let carol = TestDaemon::start_bootstrapped(&boot).await?;
        let (mut a, mut b, mut c) = (ada.client().await?, bob.client().await?, carol.client().await?);
        let (room, inv) = create(&mut a, "club").await?;
        let bob_key = join_invite(&mut b, &inv).await?.feed_key;
        let carol_key = join_invite(&mut c, &inv).await?.feed_key;
        send(&mut b, &room, "bob is here").await?;
        send(&mut c, &room, "carol is here").await?;
        holds(&mut a, &room, &["bob is here", "carol is here"]).await?;
        Ok(Self { boot, ada, bob, carol, room, bob_key, carol_key })
    }
}

/// The room's creator names an admin in a signed entry, and that admin may remove; an
/// entry naming an admin written by anyone else counts for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_creator_names_an_admin_who_may_remove() -> Result<()> {
    let Club { boot: _boot, ada, bob, carol, room, bob_key, carol_key } = Club::start().await?;
    let (mut a, mut b, mut c) = (ada.client().await?, bob.client().await?, carol.client().await?);

    // Carol may not name herself; a daemon that writes the entry anyway is ignored.
    let by_carol = c
        .request::<rooms::Admin>(&rooms::AdminParams { room: room.clone(), member: carol_key.clone(), admin: true })
        .await;
    ensure!(
        matches!(by_carol, Err(ClientError::Rpc { code: codes::NOT_ADMIN, .. })),
        "Carol named herself admin: {by_carol:?}"
    );
    let carol_feed = FeedKey::try_from(hex::decode(&carol_key)?.as_slice()).map_err(|_| anyhow::anyhow!("a key"))?;
    write_past_api(&carol, &room, Body::Admin { member: carol_feed, admin: true })?;
    send(&mut c, &room, "carol wrote an admin entry").await?;

    // Ada names Bob; everyone sees it, and not Carol.
    let named = a
        .request::<rooms::Admin>(&rooms::AdminParams { room: room.clone(), member: bob_key.clone(), admin: true })
        .await?;
    ensure!(named.admins == vec![bob_key.clone()], "Ada's admins: {:?}", named.admins);
    for (who, c) in [("Bob", &mut b), ("Carol", &mut c), ("Ada", &mut a)] {
        holds(c, &room, &["carol wrote an admin entry"]).await?;
        let r = wait_room(c, &room, &format!("{who} to see Bob named admin"), |r| !r.admins.is_empty()).await?;
        ensure!(r.admins == vec![bob_key.clone()], "{who} sees admins {:?}", r.admins);
    }

    // Ada's nickname and verified mark for Bob.
    let nick = peers::ContactParams { peer: bob_key.clone(), nickname: Some("bobby".into()), ..Default::default() };
    a.request::<peers::Rename>(&nick).await?;
    let mark = peers::ContactParams { peer: bob_key.clone(), verified: Some(true), ..Default::default() };
    a.request::<peers::Verify>(&mark).await?;

    // Bob removes Carol; Ada follows him into the new room, where Bob is the admin.
    let removed = b.request::<rooms::Remove>(&rooms::RemoveParams { room: room.clone(), member: carol_key }).await?;
    let new = removed.room.id.clone();
    let bob_new = removed.room.feed_key.clone();
    ensure!(removed.room.admin == Some(bob_new.clone()), "the new room's admin: {:?}", removed.room);
    wait_room(&mut a, &room, "Ada to follow Bob's removal", |r| r.moved_to.as_deref() == Some(new.as_str())).await?;
    wait_room(&mut c, &room, "Carol to hear she was removed", |r| r.removed_by.as_deref() == Some(bob_key.as_str()))
        .await?;
    // Ada, an admin before, is one in the new room too (Bob's daemon names her when her
    // first entry there says who she was), and what she said of Bob carries over.
    let ada_new = room_info(&mut a, &new).await?.context("Ada's new room")?.feed_key;
    for (who, c) in [("Ada", &mut a), ("Bob", &mut b)] {
        wait_room(c, &new, &format!("{who} to see Ada an admin of the new room"), |r| r.admins.contains(&ada_new))
            .await?;
    }
    within(WAIT, "Ada's nickname and mark for Bob in the new room", async {
        loop {
            let bob_there = members(&mut a, &new).await?.into_iter().find(|m| m.author == bob_new);
            if bob_there.is_some_and(|m| m.nickname.as_deref() == Some("bobby") && m.verified) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    Ok(())
}

/// The room's admin removes a named admin while that admin, away and unaware, removes
/// someone else with an earlier clock: every member ends in the room's admin's new room
/// (the removal of a remover wins over the removal it answers), whatever reached it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_removing_an_admin_wins_over_that_admins_removal() -> Result<()> {
    let Club { boot: _boot, mut ada, mut bob, mut carol, room: old, bob_key, carol_key } = Club::start().await?;
    let (mut a, mut b, mut c) = (ada.client().await?, bob.client().await?, carol.client().await?);
    a.request::<rooms::Admin>(&rooms::AdminParams { room: old.clone(), member: bob_key.clone(), admin: true }).await?;
    wait_room(&mut b, &old, "Bob to be named admin", |r| r.admins.contains(&bob_key)).await?;
    holds(&mut b, &old, &["carol is here"]).await?;

    // Bob is away; Ada writes on (her clock runs ahead of his) and removes him.
    bob.stop().await?;
    for i in 0..5 {
        send(&mut a, &old, &format!("ada {i}")).await?;
    }
    let by_ada =
        a.request::<rooms::Remove>(&rooms::RemoveParams { room: old.clone(), member: bob_key.clone() }).await?;
    let ada_new = by_ada.room.id.clone();
    wait_room(&mut c, &old, "Carol to follow Ada", |r| r.moved_to.as_deref() == Some(ada_new.as_str())).await?;
    // Bob comes back alone and removes Carol, with an earlier clock than Ada's removal.
    ada.stop().await?;
    carol.stop().await?;
    bob.restart().await?;
    let mut b = bob.client().await?;
    b.request::<rooms::Remove>(&rooms::RemoveParams { room: old.clone(), member: carol_key }).await?;
    ada.restart().await?;
    carol.restart().await?;
    let (mut a, mut c) = (ada.client().await?, carol.client().await?);

    let ada_key = room_info(&mut a, &old).await?.context("Ada's old room")?.feed_key;
    wait_room(&mut b, &old, "Bob to learn Ada removed him", |r| r.removed_by.as_deref() == Some(ada_key.as_str()))
        .await?;
    for (who, c) in [("Ada", &mut a), ("Carol", &mut c)] {
        let r = room_info(c, &old).await?.context("the old room")?;
        ensure!(r.moved_to.as_deref() == Some(ada_new.as_str()) && r.removed_by.is_none(), "{who}: {r:?}");
    }
    send(&mut a, &ada_new, "without bob").await?;
    holds(&mut c, &ada_new, &["without bob"]).await?;
    Ok(())
}

/// Waits until `c` sees, in room `id`, a member that is `person` with `n` devices.
async fn wait_person(c: &mut Client, id: &str, person: &str, n: usize, who: &str) -> Result<peers::Member> {
    let what = format!("{who} to see person {person} with {n} devices in room {id}");
    within(WAIT, &what, async {
        loop {
            let found = members(c, id).await?.into_iter().find(|m| m.person.as_deref() == Some(person));
            if let Some(m) = found.filter(|m| m.devices.len() == n) {
                return anyhow::Ok(m);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?
}

/// Bob links a second device with a one-time code: it joins his rooms, and the others see
/// one Bob (one name, one safety number) with two devices. Unlinking it removes it from
/// each room like a member: in Ada's room by Ada, its admin (Bob is not), in his own by
/// Bob; the unlinked device is locked out of both rooms' new epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_is_the_same_person_and_unlinking_locks_it_out() -> Result<()> {
    let Club { boot, ada, bob, carol, room: club, .. } = Club::start().await?;
    let (mut a, mut b, mut c) = (ada.client().await?, bob.client().await?, carol.client().await?);
    set_name(&mut b, "Bob").await?;
    let (own, inv) = create(&mut b, "bob's").await?;
    join_invite(&mut c, &inv).await?;
    send(&mut c, &own, "carol at bob's").await?;
    holds(&mut b, &own, &["carol at bob's"]).await?;

    // The laptop: a fresh daemon, linked with the code Bob's first device shows.
    let laptop = TestDaemon::start_bootstrapped(&boot).await?;
    let mut l = laptop.client().await?;
    let code = b.request::<devices::Link>(&NoParams {}).await?;
    ensure!(code.code.starts_with("peerlog-link:") && code.qr_svg.is_some(), "{code:?}");
    let linked = l.request::<devices::Accept>(&devices::AcceptParams { code: code.code.clone() }).await?;
    let person = b.request::<devices::List>(&NoParams {}).await?.person.context("Bob has no person key")?;
    ensure!(linked.person == person, "the laptop linked to {} not {person}", linked.person);
    let mut joined: Vec<&str> = linked.rooms.iter().map(|r| r.id.as_str()).collect();
    joined.sort();
    let mut expected = vec![club.as_str(), own.as_str()];
    expected.sort();
    ensure!(joined == expected, "the laptop joined {joined:?}, not Bob's rooms {expected:?}");
    // The link room is gone, and the code admits nobody else.
    ensure!(rooms_list(&mut l).await?.len() == 2, "the laptop lists a link room");
    let again = carol.client().await?.request::<devices::Accept>(&devices::AcceptParams { code: code.code }).await;
    ensure!(
        matches!(&again, Err(ClientError::Rpc { message, .. }) if message.contains("linked another device")),
        "a used link code: {again:?}"
    );

    // Carol sees one Bob, named once, with both devices, and one safety number.
    send(&mut l, &club, "bob from the laptop").await?;
    holds(&mut c, &club, &["bob from the laptop"]).await?;
    let seen = wait_person(&mut c, &club, &person, 2, "Carol").await?;
    ensure!(seen.display_name.as_deref() == Some("Bob"), "Carol sees {:?}", seen.display_name);
    let others: Vec<_> = members(&mut c, &club).await?.into_iter().filter(|m| !m.mine).collect();
    ensure!(others.len() == 2, "Carol sees {} others in the club, not Ada and Bob: {others:?}", others.len());
    for (who, client) in [("Bob", &mut b), ("the laptop", &mut l)] {
        wait_person(client, &club, &person, 2, who).await?;
        let numbers: Vec<_> = members(client, &club).await?.into_iter().filter_map(|m| m.safety_number).collect();
        ensure!(
            numbers.contains(seen.safety_number.as_ref().context("no safety number")?),
            "{who}'s safety numbers {numbers:?} do not include the one Carol sees with Bob"
        );
    }

    // What Carol says of one of Bob's devices she says of Bob: a nickname (given without a
    // room, by the laptop's writer key), a block (by the other's).
    let laptop_writer = room_info(&mut l, &club).await?.context("the laptop's club")?.feed_key;
    let nick = peers::ContactParams { peer: laptop_writer.clone(), nickname: Some("B.".into()), ..Default::default() };
    c.request::<peers::Rename>(&nick).await?;
    let bob_there = wait_person(&mut c, &club, &person, 2, "Carol").await?;
    ensure!(bob_there.nickname.as_deref() == Some("B."), "Carol's nickname for Bob: {:?}", bob_there.nickname);
    let writers: Vec<String> = bob_there.devices.iter().map(|d| d.author.clone()).collect();
    let other = writers.iter().find(|w| **w != laptop_writer).context("Bob's first device")?.clone();
    for blocked in [true, false] {
        let params = peers::PeerRoomParams { peer: other.clone(), room: Some(club.clone()) };
        if blocked {
            c.request::<peers::Block>(&params).await?;
        } else {
            c.request::<peers::Unblock>(&params).await?;
        }
        let list = c.request::<peers::Blocked>(&peers::OptRoomParam { room: Some(club.clone()) }).await?.blocked;
        let both = writers.iter().all(|w| list.contains(w));
        ensure!(both == blocked && (blocked || list.is_empty()), "blocked {blocked}: Carol's list {list:?}");
    }

    // A hostile member copies the laptop's proof into her own feed, and writes an unlink of
    // Bob's first device that Bob never signed: neither counts.
    let laptop_feed = FeedKey::try_from(hex::decode(&laptop_writer)?.as_slice()).map_err(|_| anyhow::anyhow!("key"))?;
    let carol_room = carol.running()?.service().rooms.find(&club).context("Carol's club")?;
    let proof = (0..16)
        .filter_map(|seq| carol_room.message(&laptop_feed, seq).ok().flatten())
        .find_map(|m| m.message.body.filter(|b| matches!(b, Body::Device { .. })))
        .context("the laptop's Device entry at Carol's")?;
    write_past_api(&carol, &club, proof)?;
    let bob_device = b.request::<devices::List>(&NoParams {}).await?.devices.into_iter().find(|d| d.this);
    let bob_device =
        hex::decode(bob_device.context("Bob's device")?.device)?.try_into().map_err(|_| anyhow::anyhow!("key"))?;
    let person_key = hex::decode(&person)?.try_into().map_err(|_| anyhow::anyhow!("key"))?;
    write_past_api(&carol, &club, Body::Unlink { person: person_key, device: bob_device, signature: vec![7; 64] })?;
    send(&mut c, &club, "carol copied a proof").await?;
    holds(&mut a, &club, &["carol copied a proof"]).await?;
    let at_ada = members(&mut a, &club).await?;
    ensure!(
        at_ada.iter().filter(|m| m.person.as_deref() == Some(person.as_str())).map(|m| m.devices.len()).sum::<usize>()
            == 2,
        "Ada's view of Bob changed after Carol's forgeries: {at_ada:?}"
    );
    ensure!(
        room_info(&mut a, &club).await?.and_then(|r| r.moved_to).is_none(),
        "Ada acted on an unlink Bob never signed"
    );

    // Unlinking: in the club Ada (its admin) removes the laptop; in his own room Bob does.
    let laptop_device =
        l.request::<devices::List>(&NoParams {}).await?.devices.into_iter().find(|d| d.this).context("this device")?;
    let unlinked = b.request::<devices::Unlink>(&devices::UnlinkParams { device: laptop_device.device }).await?;
    let mut how: Vec<(String, bool)> = unlinked.rooms.iter().map(|r| (r.room.clone(), r.removed_here)).collect();
    how.sort();
    let mut expected = vec![(club.clone(), false), (own.clone(), true)];
    expected.sort();
    ensure!(how == expected, "unlinked in {how:?}, expected {expected:?}");
    let ada_key = room_info(&mut a, &club).await?.context("Ada's club")?.feed_key;
    let new_club = wait_room(&mut a, &club, "Ada to remove the unlinked laptop", |r| r.moved_to.is_some())
        .await?
        .moved_to
        .context("moved")?;
    let new_own =
        wait_room(&mut b, &own, "Bob's room to move on", |r| r.moved_to.is_some()).await?.moved_to.context("moved")?;
    wait_room(&mut l, &club, "the laptop to be told Ada removed it", |r| r.removed_by.as_deref() == Some(&ada_key))
        .await?;
    wait_room(&mut l, &own, "the laptop to be told Bob removed it", |r| r.removed_by.is_some()).await?;
    wait_room(&mut b, &club, "Bob to follow Ada", |r| r.moved_to.as_ref() == Some(&new_club)).await?;
    for (room, new) in [(&club, &new_club), (&own, &new_own)] {
        wait_room(&mut c, room, "Carol to move on", |r| r.moved_to.as_ref() == Some(new)).await?;
    }
    // The others keep talking in the new epochs; the laptop is in neither and writes nowhere.
    send(&mut b, &new_club, "after the laptop left").await?;
    holds(&mut c, &new_club, &["after the laptop left"]).await?;
    let listed: Vec<String> = rooms_list(&mut l).await?.into_iter().map(|r| r.id).collect();
    ensure!(!listed.contains(&new_club) && !listed.contains(&new_own), "the laptop joined a new epoch: {listed:?}");
    ensure!(send(&mut l, &club, "still here?").await.is_err(), "the unlinked laptop wrote to the club");
    within(WAIT, "the laptop to forget Bob's person", async {
        while l.request::<devices::List>(&NoParams {}).await?.person.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let listed = b.request::<devices::List>(&NoParams {}).await?;
    ensure!(
        listed.devices.iter().any(|d| !d.this && d.unlinked),
        "Bob does not list the laptop as unlinked: {listed:?}"
    );
    Ok(())
}

/// A block outlives a removal: Dave blocked Carol in the club; when Ada removes Bob and
/// everyone moves to the new room, Carol's first entry there says who she was, and Dave's
/// daemon blocks her new writer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_follows_a_member_into_the_new_epoch() -> Result<()> {
    let Club { boot, ada, bob: _bob, carol, room, bob_key, carol_key } = Club::start().await?;
    let (mut a, mut c) = (ada.client().await?, carol.client().await?);
    let dave = TestDaemon::start_bootstrapped(&boot).await?;
    let mut d = dave.client().await?;
    let invite = a.request::<rooms::Invite>(&rooms::InviteParams { room: room.clone(), kind: None }).await?.invite;
    join_invite(&mut d, &invite).await?;
    send(&mut d, &room, "dave is here").await?;
    holds(&mut a, &room, &["dave is here"]).await?;
    d.request::<peers::Block>(&peers::PeerRoomParams { peer: carol_key, room: Some(room.clone()) }).await?;

    let removed = a.request::<rooms::Remove>(&rooms::RemoveParams { room: room.clone(), member: bob_key }).await?;
    let new = removed.room.id;
    wait_room(&mut c, &room, "Carol to move on", |r| r.moved_to.as_ref() == Some(&new)).await?;
    let carol_new = room_info(&mut c, &new).await?.context("Carol's new room")?.feed_key;
    wait_room(&mut d, &room, "Dave to move on", |r| r.moved_to.as_ref() == Some(&new)).await?;
    within(WAIT, "Dave's block to follow Carol into the new room", async {
        loop {
            let params = peers::OptRoomParam { room: Some(new.clone()) };
            if d.request::<peers::Blocked>(&params).await?.blocked.contains(&carol_new) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    send(&mut c, &new, "carol in the new room").await?;
    holds(&mut a, &new, &["carol in the new room"]).await?;
    ensure!(!texts(&mut d, &new).await?.contains(&"carol in the new room".to_string()), "Dave shows a blocked member");
    Ok(())
}
