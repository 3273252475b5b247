//! The daemon as the admin page's backend: the page's requests are the
//! control API's, answered by the same handler (so rule changes go
//! through `State::change`, one writer).
use super::Daemon;
use crate::{
    api::Request,
    web::{Backend, Refused},
};

impl Backend for Daemon {
    fn request(&self, request: Request) -> Result<serde_json::Value, Refused> {
        self.answer(request).map_err(|error| Refused {
            message: error.api.message,
            rule: error.rule,
        })
    }
}
