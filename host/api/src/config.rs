//! What a plugin receives from exchanges.toml, and the helper that turns its options table into
//! a typed struct while reporting every problem at once (contract 7).

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ConfigError;

/// `symbols = ["BTCUSDT", "ETHUSDT"]` or `symbols = "all"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Symbols {
    /// Every tradable symbol, resolved at start through the exchange's symbol list.
    All,
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Symbols {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected \"all\" or a list of symbols"))? {
            Raw::Word(w) if w.eq_ignore_ascii_case("all") => Ok(Symbols::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("expected \"all\" or a list of symbols, found \"{w}\""))),
            Raw::List(l) => Ok(Symbols::List(l)),
        }
    }
}

/// One `[[feed]]` as a connector plugin sees it.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    pub name: String,
    pub symbols: Symbols,
    /// Every key of the feed table that the host does not own (ws_url, rest_url, ...).
    pub options: toml::Table,
}

impl FeedSpec {
    /// `feed "name"`, the scope config errors are reported under.
    pub fn scope(&self) -> String {
        format!("feed \"{}\"", self.name)
    }
}

/// One `[[sink]]` as a sink plugin sees it.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    /// Every key of the sink table that the host does not own.
    pub options: toml::Table,
}

impl SinkSpec {
    pub fn scope(&self) -> String {
        format!("sink \"{}\"", self.name)
    }
}

/// Deserializes a plugin's options, reporting every unknown key and every badly typed key, not
/// just the first. Plugin option structs should derive `Deserialize` with `#[serde(default)]`
/// fields where a default exists; unknown keys are found here, so they need no
/// `deny_unknown_fields`.
pub fn parse_options<T: DeserializeOwned>(scope: &str, options: &toml::Table) -> Result<T, Vec<ConfigError>> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut table = options.clone();
    let mut removed: Vec<String> = Vec::new();
    // Each pass reports the unknown keys it met and at most one type error, then drops those
    // keys and tries again, so one run lists every problem.
    for _ in 0..64 {
        let mut unknown = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let result = {
            let de = serde_path_to_error::Deserializer::new(toml::Value::Table(table.clone()), &mut track);
            serde_ignored::deserialize::<_, _, T>(de, |path| unknown.push(path.to_string()))
        };
        let mut progressed = false;
        for key in unknown {
            if !removed.contains(&key) {
                errors.push(ConfigError::new(scope, key.clone(), "unknown key"));
                progressed |= remove_path(&mut table, &key);
                removed.push(key);
            }
        }
        match result {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) if progressed => continue,
            Ok(_) => break,
            Err(e) => {
                let path = track.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let msg = first_line(&e.to_string());
                // A key we removed ourselves now reads as missing: already reported.
                let consequence = removed
                    .iter()
                    .any(|k| msg.contains(&format!("`{}`", k.rsplit('.').next().unwrap_or(k))));
                if !consequence {
                    errors.push(ConfigError::new(scope, path.clone(), msg));
                }
                if !path.is_empty() && remove_path(&mut table, &path) {
                    removed.push(path);
                } else if !progressed {
                    break;
                }
            }
        }
    }
    Err(errors)
}

/// [`parse_options`], but still yields the options when some keys are bad, so the value checks
/// that follow can report their problems in the same run. The bad keys (unknown, badly typed)
/// are already reported; they are dropped and read as their defaults.
pub fn parse_options_lenient<T: DeserializeOwned>(scope: &str, options: &toml::Table) -> (Option<T>, Vec<ConfigError>) {
    match parse_options::<T>(scope, options) {
        Ok(v) => (Some(v), Vec::new()),
        Err(errors) => {
            let mut table = options.clone();
            for e in &errors {
                if let Some(top) = e.key.split('.').next() {
                    table.remove(top);
                }
            }
            (parse_options::<T>(scope, &table).ok(), errors)
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// Removes `a.b.c` from a table; false when the path is not there.
fn remove_path(table: &mut toml::Table, path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return false };
    let mut cur = table;
    for p in parts {
        match cur.get_mut(p) {
            Some(toml::Value::Table(t)) => cur = t,
            _ => return false,
        }
    }
    cur.remove(last).is_some()
}

/// A string that must not appear in logs (tokens, passwords); `Debug` prints `"***"`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Opts {
        #[serde(default = "default_url")]
        ws_url: String,
        #[serde(default)]
        depth: u32,
        #[serde(default)]
        every: u64,
    }
    fn default_url() -> String {
        "wss://x".into()
    }

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn valid_options_parse_with_defaults() {
        let o: Opts = parse_options("feed \"a\"", &table("depth = 5")).unwrap();
        assert_eq!(o.ws_url, "wss://x");
        assert_eq!(o.depth, 5);
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let errs = parse_options::<Opts>("feed \"a\"", &table("wsurl = 'x'\ncolour = 1\ndepth = 'deep'\nevery = -1")).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, ["colour", "depth", "every", "wsurl"], "{errs:?}");
        assert!(errs.iter().all(|e| e.scope == "feed \"a\""));
        let wsurl = errs.iter().find(|e| e.key == "wsurl").unwrap();
        assert_eq!(wsurl.to_string(), "feed \"a\": key `wsurl`: unknown key");
        let depth = errs.iter().find(|e| e.key == "depth").unwrap();
        assert!(depth.message.starts_with("invalid type: string \"deep\""), "{depth}");
    }

    #[test]
    fn symbols_accept_all_or_list() {
        #[derive(Deserialize)]
        struct S {
            symbols: Symbols,
        }
        let s: S = toml::from_str("symbols = 'all'").unwrap();
        assert_eq!(s.symbols, Symbols::All);
        let s: S = toml::from_str("symbols = ['BTCUSDT']").unwrap();
        assert_eq!(s.symbols, Symbols::List(vec!["BTCUSDT".into()]));
        assert!(toml::from_str::<S>("symbols = 'some'").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"***\"");
    }
}
