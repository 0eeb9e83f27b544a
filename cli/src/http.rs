//! Layer: driver. The router API client lives in [`weft_router::client`]; re-exported here.

pub(crate) use weft_router::client::{form_escape, get, post_form, request, send_form};
