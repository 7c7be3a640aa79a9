//! The seed's Parser and SymbolHandler, typed.

use async_trait::async_trait;

use crate::error::{ParseError, SymbolError};

/// Turns one websocket frame into the connector's wire type. The seed's `parse(Message) ->
/// Result<DataPacket, ParseError>` is split in two: parsing (pure, per frame, benchmarked) and
/// the book-sync step that decides which packets a parsed update becomes (it needs state).
pub trait Parser {
    type Output<'a>;
    fn parse<'a>(&self, frame: &'a [u8]) -> Result<Self::Output<'a>, ParseError>;
}

/// Resolves `symbols = "all"` through the exchange's symbol list. Returns the tradable symbols
/// as the exchange spells them (the seed returned a raw `Value`; callers only ever needed the
/// names).
#[async_trait]
pub trait SymbolHandler: Send + Sync {
    async fn get_symbols(&self) -> Result<Vec<String>, SymbolError>;
}
