//! The chat on top of the log, between two daemons: replies that quote and mention,
//! reactions, edits and deletions by the author (signed follow-up entries that travel like
//! messages and arrive as `message.updated`), and search by words.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::client::{Client, ClientError};
use peerlog_proto::api::codes;
use peerlog_tests::*;
use serde_json::{json, Value};

const PASS: &str = "replies reactions and edits travel as entries";
const WAIT: Duration = Duration::from_secs(30);

/// Waits for a `message.updated` event about `id` that satisfies `pred`.
async fn updated(c: &mut Client, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    let e =
        c.wait_event(WAIT, what, |e| e.method == "message.updated" && e.params["id"] == id && pred(&e.params)).await?;
    serde_json::from_value::<peerlog_proto::api::events::MessageUpdated>(e.params.clone())
        .context("a message.updated event that does not decode as MessageInfo")?;
    Ok(e.params)
}

async fn history(c: &mut Client, room: &str, limit: usize) -> Result<Vec<Value>> {
    let h = c.call("messages.history", json!({"room": room, "limit": limit})).await?;
    Ok(h["messages"].as_array().context("messages")?.clone())
}

async fn search(c: &mut Client, query: &str) -> Result<Vec<String>> {
    let r = c.call("messages.search", json!({"query": query})).await?;
    Ok(r["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect())
}

fn refused(r: Result<Value, ClientError>) -> Result<(i32, String)> {
    match r {
        Err(ClientError::Rpc { code, message }) => Ok((code, message)),
        other => Err(anyhow::anyhow!("expected an error, got {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reactions_edits_deletions_and_search_travel_between_members() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    ca.call("profile.set", json!({"display_name": "Ada"})).await?;
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    let ada = ca.call("rooms.members", json!({"room": room})).await?["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mine"] == true))
        .and_then(|m| m["author"].as_str())
        .context("Ada's author key")?
        .to_string();
    let question = send(&mut ca, &room, "Dinner at seven?").await?;
    wait_for_text(&mut cb, &room, "Dinner at seven?", WAIT).await?;

    // Bob answers it and names Ada: her daemon shows the quote and that she is named.
    let reply = cb
        .call(
            "messages.send",
            json!({"room": room, "text": "Yes, seven works", "reply_to": question, "mentions": [ada]}),
        )
        .await?;
    let reply_id = reply["message"]["id"].as_str().context("reply id")?.to_string();
    let got = wait_for_text(&mut ca, &room, "Yes, seven works", WAIT).await?;
    ensure!(got["reply_to"]["id"] == question.as_str(), "the reply does not name the message it answers: {got}");
    ensure!(got["reply_to"]["text"] == "Dinner at seven?", "the reply does not quote it: {got}");
    ensure!(got["reply_to"]["author_name"] == "Ada", "the quote is not Ada's: {got}");
    ensure!(got["mentions_me"] == true && got["mentions"] == json!([ada]), "Ada is not told she is named: {got}");
    ensure!(
        refused(
            cb.call("messages.send", json!({"room": room, "text": "x", "reply_to": format!("{}:9", "ab".repeat(32))}))
                .await
        )?
        .0 == codes::NOT_FOUND,
        "a reply to a message that is not here must be refused"
    );

    // Reactions: Bob's arrives at Ada's as an update; hers joins it.
    cb.call("messages.react", json!({"room": room, "message": question, "emoji": "👍"})).await?;
    let up = updated(&mut ca, &question, "Bob's reaction at Ada's", |m| m["reactions"][0]["count"] == 1).await?;
    ensure!(up["reactions"][0]["emoji"] == "👍" && up["reactions"][0]["mine"] == false, "{up}");
    let mine = ca.call("messages.react", json!({"room": room, "message": question, "emoji": "👍"})).await?;
    ensure!(
        mine["message"]["reactions"]
            == json!([{"emoji": "👍", "count": 2, "mine": true, "members": mine["message"]["reactions"][0]["members"]}]),
        "{mine}"
    );
    updated(&mut cb, &question, "both reactions at Bob's", |m| m["reactions"][0]["count"] == 2).await?;
    cb.call("messages.react", json!({"room": room, "message": question, "emoji": "👍", "on": false})).await?;
    updated(&mut ca, &question, "Bob's reaction taken back at Ada's", |m| m["reactions"][0]["count"] == 1).await?;
    let (code, _) =
        refused(cb.call("messages.react", json!({"room": room, "message": question, "emoji": "two words"})).await)?;
    ensure!(code == codes::INVALID_PARAMS, "a reaction with a space: {code}");

    // Only the author edits; the edit reaches Bob, and so does the quote in his reply.
    let (code, msg) =
        refused(cb.call("messages.edit", json!({"room": room, "message": question, "text": "forged"})).await)?;
    ensure!(code == codes::INVALID_PARAMS && msg.contains("only its author"), "{code} {msg}");
    let edited =
        ca.call("messages.edit", json!({"room": room, "message": question, "text": "Dinner at eight?"})).await?;
    ensure!(edited["message"]["text"] == "Dinner at eight?" && edited["message"]["edited"] == true, "{edited}");
    updated(&mut cb, &question, "the edit at Bob's", |m| m["text"] == "Dinner at eight?" && m["edited"] == true)
        .await?;
    let shown = history(&mut cb, &room, 10).await?;
    let q = shown.iter().find(|m| m["id"] == question.as_str()).context("the question in Bob's history")?;
    ensure!(q["text"] == "Dinner at eight?" && q["reactions"][0]["count"] == 1, "Bob's history shows {q}");
    let r = shown.iter().find(|m| m["id"] == reply_id.as_str()).context("the reply in Bob's history")?;
    ensure!(r["reply_to"]["text"] == "Dinner at eight?", "the quote does not follow the edit: {r}");
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
    let (code, _) = refused(cb.call("messages.search", json!({"query": " ?! "})).await)?;
    ensure!(code == codes::INVALID_PARAMS, "a query without words: {code}");

    // Deleted: no text anywhere, not in quotes, not in search.
    let (code, _) = refused(cb.call("messages.delete", json!({"room": room, "message": question})).await)?;
    ensure!(code == codes::INVALID_PARAMS, "Bob deleted Ada's message: {code}");
    ca.call("messages.delete", json!({"room": room, "message": question})).await?;
    let gone = updated(&mut cb, &question, "the deletion at Bob's", |m| m["deleted"] == true).await?;
    ensure!(gone.get("text").is_none(), "a deleted message still shows its text: {gone}");
    let shown = history(&mut cb, &room, 10).await?;
    let r = shown.iter().find(|m| m["id"] == reply_id.as_str()).context("the reply")?;
    ensure!(r["reply_to"].get("text").is_none(), "the quote of a deleted message: {r}");
    ensure!(search(&mut cb, "dinner").await?.is_empty(), "search found a deleted message");

    // A page holds `limit` messages however many reactions sit between them.
    for emoji in ["😀", "😃", "😄", "😁", "😆", "😅", "🤣", "😂", "🙂", "🙃", "😉", "😊"] {
        cb.call("messages.react", json!({"room": room, "message": reply_id, "emoji": emoji})).await?;
    }
    send(&mut cb, &room, "after the reactions").await?;
    let page = history(&mut cb, &room, 2).await?;
    let texts: Vec<&str> = page.iter().map(|m| m["text"].as_str().unwrap_or("")).collect();
    ensure!(texts == ["a late marmot", "after the reactions"], "a page of 2 holds {texts:?}");
    let page = history(&mut cb, &room, 3).await?;
    ensure!(page[0]["text"] == "Yes, seven works", "a page of 3 starts with {}", page[0]);
    ensure!(page[0]["reactions"].as_array().is_some_and(|r| r.len() == 12), "{}", page[0]);
    Ok(())
}
