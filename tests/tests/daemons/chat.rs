//! The chat on top of the log, between two daemons: replies that quote and mention,
//! reactions, edits and deletions by the author (signed follow-up entries that travel like
//! messages and arrive as `message.updated`), and search by words.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::client::{Client, ClientError};
use peerlog_proto::api::messages::{self, MessageInfo, ReactionInfo};
use peerlog_proto::api::{codes, events};
use peerlog_tests::*;

const PASS: &str = "replies reactions and edits travel as entries";
const WAIT: Duration = Duration::from_secs(30);

/// Waits for a `message.updated` event about `id` that satisfies `pred`.
async fn updated(c: &mut Client, id: &str, what: &str, pred: impl Fn(&MessageInfo) -> bool) -> Result<MessageInfo> {
    Ok(c.wait_for::<events::MessageUpdated>(WAIT, what, |e| e.0.id == id && pred(&e.0)).await?.0)
}

async fn search(c: &mut Client, query: &str) -> Result<Vec<String>> {
    let params = messages::SearchParams { room: None, query: query.into(), limit: None };
    let found = c.request::<messages::Search>(&params).await?.messages;
    Ok(found.into_iter().map(|m| m.text.unwrap_or_default()).collect())
}

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Result<(i32, String)> {
    match r {
        Err(ClientError::Rpc { code, message }) => Ok((code, message)),
        other => Err(anyhow::anyhow!("expected an error, got {other:?}")),
    }
}

fn react(room: &str, message: &str, emoji: &str, on: bool) -> messages::ReactParams {
    messages::ReactParams { room: room.into(), message: message.into(), emoji: emoji.into(), on }
}

fn edit(room: &str, message: &str, text: &str) -> messages::EditParams {
    messages::EditParams { room: room.into(), message: message.into(), text: text.into() }
}

/// The number of members who gave a message its first reaction.
fn first_count(m: &MessageInfo) -> usize {
    m.reactions.first().map_or(0, |r| r.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reactions_edits_deletions_and_search_travel_between_members() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    set_name(&mut ca, "Ada").await?;
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    let ada = members(&mut ca, &room).await?.into_iter().find(|m| m.mine).context("Ada's author key")?.author;
    let question = send(&mut ca, &room, "Dinner at seven?").await?;
    wait_for_text(&mut cb, &room, "Dinner at seven?", WAIT).await?;

    // Bob answers it and names Ada: her daemon shows the quote and that she is named.
    let params = messages::SendParams {
        room: room.clone(),
        text: "Yes, seven works".into(),
        reply_to: Some(question.clone()),
        mentions: vec![ada.clone()],
    };
    let reply = cb.request::<messages::Send>(&params).await?;
    let reply_id = reply.message.context("the reply")?.id;
    let got = wait_for_text(&mut ca, &room, "Yes, seven works", WAIT).await?;
    let quote = got.reply_to.as_ref().context("the reply does not name the message it answers")?;
    ensure!(quote.id == question, "the reply names another message: {got:?}");
    ensure!(quote.text.as_deref() == Some("Dinner at seven?"), "the reply does not quote it: {got:?}");
    ensure!(quote.author_name.as_deref() == Some("Ada"), "the quote is not Ada's: {got:?}");
    ensure!(got.mentions_me && got.mentions == [ada.clone()], "Ada is not told she is named: {got:?}");
    let params = messages::SendParams {
        room: room.clone(),
        text: "x".into(),
        reply_to: Some(format!("{}:9", "ab".repeat(32))),
        mentions: Vec::new(),
    };
    ensure!(
        refused(cb.request::<messages::Send>(&params).await)?.0 == codes::NOT_FOUND,
        "a reply to a message that is not here must be refused"
    );

    // Reactions: Bob's arrives at Ada's as an update; hers joins it.
    cb.request::<messages::React>(&react(&room, &question, "👍", true)).await?;
    let up = updated(&mut ca, &question, "Bob's reaction at Ada's", |m| first_count(m) == 1).await?;
    ensure!(up.reactions[0].emoji == "👍" && !up.reactions[0].mine, "{up:?}");
    let mine = ca.request::<messages::React>(&react(&room, &question, "👍", true)).await?;
    let reactions = mine.message.context("the reacted message")?.reactions;
    let members = reactions.first().map(|r| r.members.clone()).unwrap_or_default();
    ensure!(
        reactions == [ReactionInfo { emoji: "👍".into(), count: 2, mine: true, members: members.clone() }]
            && members.contains(&ada),
        "{reactions:?}"
    );
    updated(&mut cb, &question, "both reactions at Bob's", |m| first_count(m) == 2).await?;
    cb.request::<messages::React>(&react(&room, &question, "👍", false)).await?;
    updated(&mut ca, &question, "Bob's reaction taken back at Ada's", |m| first_count(m) == 1).await?;
    let (code, _) = refused(cb.request::<messages::React>(&react(&room, &question, "two words", true)).await)?;
    ensure!(code == codes::INVALID_PARAMS, "a reaction with a space: {code}");

    // Only the author edits; the edit reaches Bob, and so does the quote in his reply.
    let (code, msg) = refused(cb.request::<messages::Edit>(&edit(&room, &question, "forged")).await)?;
    ensure!(code == codes::INVALID_PARAMS && msg.contains("only its author"), "{code} {msg}");
    let edited = ca.request::<messages::Edit>(&edit(&room, &question, "Dinner at eight?")).await?;
    let edited = edited.message.context("the edited message")?;
    ensure!(edited.text.as_deref() == Some("Dinner at eight?") && edited.edited, "{edited:?}");
    let eight = |m: &MessageInfo| m.text.as_deref() == Some("Dinner at eight?");
    updated(&mut cb, &question, "the edit at Bob's", |m| eight(m) && m.edited).await?;
    let shown = history(&mut cb, &room, 10).await?;
    let q = shown.iter().find(|m| m.id == question).context("the question in Bob's history")?;
    ensure!(eight(q) && first_count(q) == 1, "Bob's history shows {q:?}");
    let r = shown.iter().find(|m| m.id == reply_id).context("the reply in Bob's history")?;
    let quoted = r.reply_to.as_ref().and_then(|q| q.text.as_deref());
    ensure!(quoted == Some("Dinner at eight?"), "the quote does not follow the edit: {r:?}");
    ensure!(shown.len() == 2, "follow-ups are shown as messages: {shown:?}");

    // Search finds messages by what they say now, in any case, by whole words.
    ensure!(search(&mut cb, "EIGHT dinner").await? == ["Dinner at eight?"], "search by the edited text");
    ensure!(search(&mut cb, "seven").await? == ["Yes, seven works"], "the old text still found the question");
    ensure!(search(&mut cb, "din").await?.is_empty(), "search is by whole words");
    // A message that arrives after a search is found by the next one (its group's filter
    // covered fewer entries, so it is made again).
    send(&mut ca, &room, "a late marmot").await?;
    wait_for_text(&mut cb, &room, "a late marmot", WAIT).await?;
    ensure!(search(&mut cb, "marmot").await? == ["a late marmot"], "a message after the first search");
    let params = messages::SearchParams { room: None, query: " ?! ".into(), limit: None };
    let (code, _) = refused(cb.request::<messages::Search>(&params).await)?;
    ensure!(code == codes::INVALID_PARAMS, "a query without words: {code}");

    // Deleted: no text anywhere, not in quotes, not in search.
    let delete = messages::DeleteParams { room: room.clone(), message: question.clone() };
    let (code, _) = refused(cb.request::<messages::Delete>(&delete).await)?;
    ensure!(code == codes::INVALID_PARAMS, "Bob deleted Ada's message: {code}");
    ca.request::<messages::Delete>(&delete).await?;
    let gone = updated(&mut cb, &question, "the deletion at Bob's", |m| m.deleted).await?;
    ensure!(gone.text.is_none(), "a deleted message still shows its text: {gone:?}");
    let shown = history(&mut cb, &room, 10).await?;
    let r = shown.iter().find(|m| m.id == reply_id).context("the reply")?;
    ensure!(r.reply_to.as_ref().is_some_and(|q| q.text.is_none()), "the quote of a deleted message: {r:?}");
    ensure!(search(&mut cb, "dinner").await?.is_empty(), "search found a deleted message");

    // A page holds `limit` messages however many reactions sit between them.
    for emoji in ["😀", "😃", "😄", "😁", "😆", "😅", "🤣", "😂", "🙂", "🙃", "😉", "😊"] {
        cb.request::<messages::React>(&react(&room, &reply_id, emoji, true)).await?;
    }
    send(&mut cb, &room, "after the reactions").await?;
    let page = history(&mut cb, &room, 2).await?;
    let texts: Vec<&str> = page.iter().map(|m| m.text.as_deref().unwrap_or("")).collect();
    ensure!(texts == ["a late marmot", "after the reactions"], "a page of 2 holds {texts:?}");
    let page = history(&mut cb, &room, 3).await?;
    ensure!(page[0].text.as_deref() == Some("Yes, seven works"), "a page of 3 starts with {:?}", page[0]);
    ensure!(page[0].reactions.len() == 12, "{:?}", page[0]);
    Ok(())
}
