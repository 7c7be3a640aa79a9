//! Bybit REST: the symbol list behind `symbols = "all"`,
//! `GET /v5/market/instruments-info?category=...`. Linear pages with `cursor`
//! (`nextPageCursor`, empty on the last page); spot has no pagination.

use ds_api::http::{self, HttpError};
use ds_api::traits::SymbolHandler;
use ds_api::{async_trait, Shutdown, SymbolError};

use crate::options::Category;
use crate::wire::InstrumentsInfoWire;

/// Largest page Bybit serves (default 500).
pub const PAGE_LIMIT: u32 = 1_000;
/// More pages than this means a cursor that never ends: linear has ~800 instruments today.
pub const MAX_PAGES: usize = 50;

/// Resolves `symbols = "all"`: every instrument of the category with status `Trading`.
pub struct InstrumentsInfo {
    pub base: String,
    pub category: Category,
    pub client: reqwest::Client,
    pub shutdown: Shutdown,
}

impl InstrumentsInfo {
    pub fn new(rest_url: &str, category: Category, shutdown: Shutdown) -> Self {
        InstrumentsInfo { base: rest_url.trim_end_matches('/').to_string(), category, client: http::client(), shutdown }
    }

    /// The URL of one page; the cursor is opaque text and is percent-encoded as such.
    pub fn page_url(&self, cursor: Option<&str>) -> String {
        let base = format!("{}/v5/market/instruments-info", self.base);
        let mut params: Vec<(&str, String)> = vec![("category", self.category.as_str().to_string())];
        if self.category == Category::Linear {
            params.push(("limit", PAGE_LIMIT.to_string()));
            if let Some(c) = cursor {
                params.push(("cursor", c.to_string()));
            }
        }
        match reqwest::Url::parse_with_params(&base, &params) {
            Ok(u) => u.to_string(),
            Err(_) => base,
        }
    }
}

#[async_trait]
impl SymbolHandler for InstrumentsInfo {
    async fn get_symbols(&self) -> Result<Vec<String>, SymbolError> {
        let mut symbols: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let url = self.page_url(cursor.as_deref());
            let body = http::get_text(&self.client, &url, &self.shutdown).await.map_err(|e: HttpError| SymbolError::Request { url: url.clone(), reason: e.to_string() })?;
            let page = parse_page(&body).map_err(|reason| SymbolError::Format { url: url.clone(), reason })?;
            for s in page.trading {
                if !symbols.contains(&s) {
                    symbols.push(s);
                }
            }
            match page.next_cursor {
                Some(c) if self.category == Category::Linear && !c.is_empty() && cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                _ => {
                    return if symbols.is_empty() { Err(SymbolError::Empty(url)) } else { Ok(symbols) };
                }
            }
        }
        Err(SymbolError::Format { url: self.page_url(cursor.as_deref()), reason: format!("still paging after {MAX_PAGES} pages") })
    }
}

/// One page: its `Trading` symbols and the next cursor.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub trading: Vec<String>,
    pub next_cursor: Option<String>,
}

pub fn parse_page(body: &str) -> Result<Page, String> {
    let w: InstrumentsInfoWire = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if w.ret_code != 0 {
        return Err(format!("retCode {}: {}", w.ret_code, w.ret_msg));
    }
    let result = w.result.ok_or("no `result`")?;
    Ok(Page {
        trading: result.list.into_iter().filter(|i| i.status == "Trading").map(|i| i.symbol).collect(),
        next_cursor: result.next_page_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_trading_symbols_and_the_cursor() {
        let linear = r#"{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[{"symbol":"0GUSDT","contractType":"LinearPerpetual","status":"Trading"},{"symbol":"NEWUSDT","status":"PreLaunch"},{"symbol":"BTCUSDT-25DEC26","status":"Trading"}],"nextPageCursor":"first%3D0GUSDT%26last%3DBTCUSDT-25DEC26"},"retExtInfo":{},"time":1786310817197}"#;
        assert_eq!(
            parse_page(linear).unwrap(),
            Page { trading: vec!["0GUSDT".into(), "BTCUSDT-25DEC26".into()], next_cursor: Some("first%3D0GUSDT%26last%3DBTCUSDT-25DEC26".into()) }
        );
        let spot = r#"{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[{"symbol":"BTCUSDT","status":"Trading"}]},"retExtInfo":{},"time":1}"#;
        assert_eq!(parse_page(spot).unwrap().next_cursor, None);
        let refused = r#"{"retCode":10001,"retMsg":"params error: category invalid","result":{},"time":1}"#;
        assert_eq!(parse_page(refused).unwrap_err(), "retCode 10001: params error: category invalid");
    }

    #[test]
    fn page_urls() {
        let (_t, shutdown) = ds_api::shutdown_pair();
        let linear = InstrumentsInfo::new("http://127.0.0.1:9/", Category::Linear, shutdown.clone());
        assert_eq!(linear.page_url(None), "http://127.0.0.1:9/v5/market/instruments-info?category=linear&limit=1000");
        assert_eq!(linear.page_url(Some("a=1&b")), "http://127.0.0.1:9/v5/market/instruments-info?category=linear&limit=1000&cursor=a%3D1%26b");
        let spot = InstrumentsInfo::new("https://api.bybit.com", Category::Spot, shutdown);
        assert_eq!(spot.page_url(Some("ignored")), "https://api.bybit.com/v5/market/instruments-info?category=spot");
    }
}
