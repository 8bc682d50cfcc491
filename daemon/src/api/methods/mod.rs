//! The API's methods, one file per group. Each typed method is a function from its params
//! to its result, the types of [`peerlog_proto::api`] that the CLI and the tests use too;
//! [`call`] parses the params, calls it, and maps errors to codes (once, in
//! [`super::ApiError`]). `files.*` and `subscribe` need the connection and live in
//! [`super`].

use std::future::Future;
use std::sync::Arc;

use peerlog_proto::api::{self as proto, codes, Method};
use peerlog_proto::wire::FeedKey;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;
use crate::service::Service;

mod devices;
mod messages;
mod node;
mod peers;
mod rooms;

pub(super) use messages::message_info;
pub(super) use rooms::room_info;

/// Params as `T`; absent params are an empty object.
pub(super) fn parse<T: for<'de> Deserialize<'de>>(params: Value) -> Result<T, ApiError> {
    let params = if params.is_null() { json!({}) } else { params };
    serde_json::from_value(params).map_err(|e| ApiError::params(format!("invalid params: {e}")))
}

/// Runs a typed method: its params parsed, its result serialized.
async fn typed<M: Method, Fut>(params: Value, handler: impl FnOnce(M::Params) -> Fut) -> Result<Value, ApiError>
where
    Fut: Future<Output = Result<M::Result, ApiError>>,
{
    super::to_result(handler(parse::<M::Params>(params)?).await?)
}

/// Calls `method`.
pub(super) async fn call(service: &Arc<Service>, method: &str, params: Value) -> Result<Value, ApiError> {
    use proto::messages::{Delete, Edit, History, React, Search, Send, SendBatch};
    use proto::rooms::{Admin, CheckPassphrase, Create, Invite, Join, Leave, List, Remove, Seed};
    match method {
        List::NAME => typed::<List, _>(params, |_| async { Ok(rooms::list(service)) }).await,
        Join::NAME => typed::<Join, _>(params, |p| rooms::join(service, p)).await,
        CheckPassphrase::NAME => {
            typed::<CheckPassphrase, _>(params, |p| async { Ok(rooms::check_passphrase(service, p)) }).await
        }
        Create::NAME => typed::<Create, _>(params, |p| rooms::create(service, p)).await,
        Leave::NAME => typed::<Leave, _>(params, |p| rooms::leave(service, p)).await,
        Remove::NAME => typed::<Remove, _>(params, |p| rooms::remove(service, p)).await,
        Admin::NAME => typed::<Admin, _>(params, |p| rooms::admin(service, p)).await,
        Invite::NAME => typed::<Invite, _>(params, |p| async { rooms::invite(service, p) }).await,
        Seed::NAME => typed::<Seed, _>(params, |p| rooms::seed(service, p)).await,
        Send::NAME => typed::<Send, _>(params, |p| messages::send(service, p)).await,
        SendBatch::NAME => typed::<SendBatch, _>(params, |p| messages::send_batch(service, p)).await,
        History::NAME => typed::<History, _>(params, |p| async { messages::history(service, p) }).await,
        React::NAME => typed::<React, _>(params, |p| messages::react(service, p)).await,
        Edit::NAME => typed::<Edit, _>(params, |p| messages::edit(service, p)).await,
        Delete::NAME => typed::<Delete, _>(params, |p| messages::delete(service, p)).await,
        Search::NAME => typed::<Search, _>(params, |p| messages::search(service, p)).await,
        proto::node::Doctor::NAME => typed::<proto::node::Doctor, _>(params, |_| node::doctor(service)).await,
        proto::node::Info::NAME => typed::<proto::node::Info, _>(params, |_| node::info(service)).await,
        proto::peers::List::NAME => typed::<proto::peers::List, _>(params, |p| peers::list(service, p)).await,
        proto::peers::Members::NAME => typed::<proto::peers::Members, _>(params, |p| peers::members(service, p)).await,
        proto::peers::SetProfile::NAME => {
            typed::<proto::peers::SetProfile, _>(params, |p| peers::set_profile(service, p)).await
        }
        proto::peers::Rename::NAME => {
            typed::<proto::peers::Rename, _>(params, |p| async { peers::contact(service, p, false) }).await
        }
        proto::peers::Verify::NAME => {
            typed::<proto::peers::Verify, _>(params, |p| async { peers::contact(service, p, true) }).await
        }
        proto::peers::Block::NAME => typed::<proto::peers::Block, _>(params, |p| peers::block(service, p, true)).await,
        proto::peers::Unblock::NAME => {
            typed::<proto::peers::Unblock, _>(params, |p| peers::block(service, p, false)).await
        }
        proto::peers::Safety::NAME => {
            typed::<proto::peers::Safety, _>(params, |p| async { peers::safety(service, p) }).await
        }
        proto::peers::Blocked::NAME => {
            typed::<proto::peers::Blocked, _>(params, |p| async { peers::blocked(service, p) }).await
        }
        proto::devices::Link::NAME => typed::<proto::devices::Link, _>(params, |_| devices::link(service)).await,
        proto::devices::Accept::NAME => {
            typed::<proto::devices::Accept, _>(params, |p| devices::accept(service, p)).await
        }
        proto::devices::List::NAME => {
            typed::<proto::devices::List, _>(params, |_| async { devices::list(service) }).await
        }
        proto::devices::Unlink::NAME => {
            typed::<proto::devices::Unlink, _>(params, |p| devices::unlink(service, p)).await
        }
        other => Err(ApiError { code: codes::METHOD_NOT_FOUND, message: format!("unknown method {other:?}") }),
    }
}

/// A writer key (an author) from its 64 hex digits.
fn writer_key(hex_key: &str) -> Result<FeedKey, ApiError> {
    hex::decode(hex_key)
        .ok()
        .and_then(|b| FeedKey::try_from(b.as_slice()).ok())
        .ok_or_else(|| ApiError::params("peer must be a writer key: 64 hex digits (an author)"))
}

/// A QR code of `text` as an SVG document, made here (nothing leaves the machine).
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .dark_color(qrcode::render::svg::Color("#000000"))
            .light_color(qrcode::render::svg::Color("#ffffff"))
            .build(),
    )
}
