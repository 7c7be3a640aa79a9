//! `data-storage check --online` for the Binance connectors: one `GET /api/v3/exchangeInfo`
//! (weight 20), then every configured symbol is looked up in it. A symbol Binance does not
//! list would make the depth stream silently send nothing for it (Binance accepts the
//! subscription), and a symbol not `TRADING` has no book to store: both are worth knowing
//! before the service runs for weeks.

use std::collections::HashMap;
use std::time::Duration;

use ds_api::{OnlineCheck, Symbols};

use crate::wire::ExchangeInfoWire;

/// The one request of the check; the host adds its own overall bound.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks `symbols` against the exchangeInfo of `rest_url`.
pub async fn check_symbols(rest_url: &str, symbols: &Symbols) -> OnlineCheck {
    let url = format!("{}/api/v3/exchangeInfo", rest_url.trim_end_matches('/'));
    let checked = format!("symbols against {url}");
    let client = ds_api::http::client();
    let body = match client.get(&url).timeout(CHECK_TIMEOUT).send().await {
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(b) => b,
            Err(e) => return OnlineCheck::failed(checked, format!("GET {url}: reading the answer: {e}")),
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let body: String = r.text().await.unwrap_or_default().chars().take(200).collect();
            return OnlineCheck::failed(checked, format!("GET {url}: HTTP {status}: {body}"));
        }
        Err(e) => return OnlineCheck::failed(checked, format!("cannot reach {url}: {}", error_chain(&e))),
    };
    let info: ExchangeInfoWire = match serde_json::from_str(&body) {
        Ok(i) => i,
        Err(e) => return OnlineCheck::failed(checked, format!("GET {url}: not an exchangeInfo answer: {e}")),
    };
    symbol_problems(&url, symbols, &info)
}

/// The pure part: which configured symbols the list lacks or does not trade.
pub fn symbol_problems(url: &str, symbols: &Symbols, info: &ExchangeInfoWire) -> OnlineCheck {
    let status: HashMap<&str, &str> = info.symbols.iter().map(|s| (s.symbol.as_str(), s.status.as_str())).collect();
    let trading = status.values().filter(|s| **s == "TRADING").count();
    match symbols {
        Symbols::All if trading == 0 => OnlineCheck::failed(format!("symbols = \"all\" against {url}"), format!("{url} lists no TRADING symbol")),
        Symbols::All => OnlineCheck::Done { checked: format!("symbols = \"all\": {trading} trading symbols at {url}"), problems: vec![] },
        Symbols::List(list) => {
            let mut problems = Vec::new();
            for s in list {
                // The connector subscribes in Binance's spelling, upper case.
                let upper = s.to_uppercase();
                match status.get(upper.as_str()) {
                    None => problems.push(format!("symbol \"{s}\" is not listed at {url}")),
                    Some(&"TRADING") => {}
                    Some(other) => problems.push(format!("symbol \"{s}\" is listed but not trading (status {other}) at {url}")),
                }
            }
            OnlineCheck::Done { checked: format!("{} symbol(s) listed and trading at {url}", list.len() - problems.len()), problems }
        }
    }
}

/// reqwest's top-level message ("error sending request") hides the cause (connection
/// refused, DNS); the chain names it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    // Bounded: error chains are a handful deep.
    for _ in 0..8 {
        let Some(c) = cur else { break };
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_halted_symbols_are_named() {
        let info: ExchangeInfoWire = serde_json::from_str(
            r#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING"},{"symbol":"LUNAUSDT","status":"BREAK"}]}"#,
        )
        .unwrap();
        let list = Symbols::List(vec!["btcusdt".into(), "LUNAUSDT".into(), "NOPEUSDT".into()]);
        let OnlineCheck::Done { checked, problems } = symbol_problems("U", &list, &info) else { panic!() };
        assert_eq!(checked, "1 symbol(s) listed and trading at U");
        assert_eq!(
            problems,
            ["symbol \"LUNAUSDT\" is listed but not trading (status BREAK) at U", "symbol \"NOPEUSDT\" is not listed at U"]
        );
        let OnlineCheck::Done { problems, .. } = symbol_problems("U", &Symbols::All, &info) else { panic!() };
        assert!(problems.is_empty());
    }
}
