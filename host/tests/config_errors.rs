//! exchanges.toml validation: every error at once, each naming the feed or sink and the key.

use std::path::Path;

use data_storage::config::parse;

fn errors_of(toml: &str) -> Vec<String> {
    let env = |k: &str| (k == "SET_VAR").then(|| "value".to_string());
    match parse(toml, Path::new("test.toml"), &env) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

const SINK: &str = "\n[[sink]]\nname = \"files\"\nplugin = \"file\"\ndir = \"/tmp/ds-config-test\"\n";

struct Case {
    name: &'static str,
    toml: String,
    /// Each must appear in exactly one error line.
    expect: &'static [&'static str],
}

#[test]
fn each_error_is_named() {
    let cases = vec![
        Case {
            name: "valid",
            toml: format!("[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n{SINK}"),
            expect: &[],
        },
        Case {
            name: "unknown connector",
            toml: format!("[[feed]]\nname = \"b\"\nconnector = \"binanse\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n{SINK}"),
            expect: &["feed \"b\": key `connector`: unknown connector \"binanse\""],
        },
        Case {
            name: "unknown key, wrong type and missing sink together",
            toml: format!(
                "[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"nowhere\"\nws_ur = \"x\"\nsnapshot_limit = \"many\"\n{SINK}"
            ),
            expect: &[
                "feed \"b\": key `ws_ur`: unknown key",
                "feed \"b\": key `snapshot_limit`: invalid type",
                "feed \"b\": key `sink`: no [[sink]] named \"nowhere\"",
            ],
        },
        Case {
            name: "bad values",
            toml: format!(
                "[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTC-USDT\"]\nsink = \"files\"\nws_url = \"http://x\"\nupdate_speed_ms = 250\n{SINK}"
            ),
            expect: &["key `symbols`: \"BTC-USDT\"", "key `ws_url`: scheme must be", "key `update_speed_ms`: must be 100 or 1000"],
        },
        Case {
            name: "unknown sink plugin and missing env var",
            toml: "[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = \"all\"\nsink = \"db\"\n[[sink]]\nname = \"db\"\nplugin = \"influx\"\ntoken = \"${UNSET_VAR_FOR_TEST}\"\n".into(),
            expect: &["sink \"db\": key `plugin`: unknown sink plugin \"influx\"", "sink \"db\": key `token`: environment variable UNSET_VAR_FOR_TEST is not set"],
        },
        Case {
            name: "missing keys and wrong symbols type",
            toml: format!("[[feed]]\nname = \"b\"\nsymbols = 5\n{SINK}"),
            expect: &["feed \"b\": key `connector`: missing", "feed \"b\": key `sink`: missing", "feed \"b\": key `symbols`: expected \"all\" or a list"],
        },
        Case {
            name: "top-level typo and duplicate feed",
            toml: format!(
                "[servce]\n[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"ETHUSDT\"]\nsink = \"files\"\n{SINK}"
            ),
            expect: &["config: key `servce`: unknown top-level key", "feed \"b\": key `name`: defined twice"],
        },
        Case {
            name: "bad metrics and health keys",
            toml: format!(
                "[service]\nmetrics_addr = \"localhost\"\nhealth_stale_secs = 0\n[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\nhealth_stale_secs = \"soon\"\n{SINK}"
            ),
            expect: &[
                "[service]: key `metrics_addr`: expected ip:port",
                "[service]: key `health_stale_secs`: must be at least 1",
                "feed \"b\": key `health_stale_secs`: expected an integer >= 1",
            ],
        },
        Case { name: "not TOML", toml: "[[feed]\nname=".into(), expect: &["test.toml is not valid TOML"] },
        Case {
            name: "a disabled feed is validated too",
            toml: format!(
                "[[feed]]\nname = \"on\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n[[feed]]\nname = \"off\"\nenabled = false\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\nupdate_speed_ms = 7\n{SINK}"
            ),
            expect: &["feed \"off\": key `update_speed_ms`: must be 100 or 1000"],
        },
        Case {
            name: "nothing enabled",
            toml: format!("[[feed]]\nname = \"b\"\nenabled = false\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n{SINK}"),
            expect: &["no enabled [[feed]]"],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let errors = errors_of(&c.toml);
        assert_eq!(errors.len(), c.expect.len(), "case {i} ({}): {errors:#?}", c.name);
        for want in c.expect {
            let hits = errors.iter().filter(|e| e.contains(want)).count();
            assert_eq!(hits, 1, "case {i} ({}): want one error containing {want:?}, got {errors:#?}", c.name);
        }
    }
}

#[test]
fn env_vars_are_expanded_before_plugins_see_them() {
    let toml = format!(
        "[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\nws_url = \"wss://${{SET_VAR}}.example\"\n{SINK}"
    );
    assert!(errors_of(&toml).is_empty());
}

#[test]
fn metrics_address_and_health_windows_are_read() {
    let toml = format!(
        "[service]\nmetrics_addr = \"127.0.0.1:9898\"\nhealth_stale_secs = 30\n[[feed]]\nname = \"a\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n[[feed]]\nname = \"b\"\nconnector = \"binance_spot_snapshot\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\nhealth_stale_secs = 180\n{SINK}"
    );
    let cfg = parse(&toml, Path::new("test.toml"), &|_| None).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.metrics_addr, Some("127.0.0.1:9898".parse().unwrap()));
    let windows: Vec<u64> = cfg.feeds.iter().map(|f| f.health_stale.as_secs()).collect();
    assert_eq!(windows, [30, 180], "the service default, then the feed's own");
    let off = parse(&format!("[[feed]]\nname = \"a\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"files\"\n{SINK}"), Path::new("t"), &|_| None).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(off.metrics_addr, None, "off unless set");
}

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../exchanges.toml");
    let cfg = data_storage::config::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(cfg.feeds.iter().any(|f| f.connector == "binance_spot_depth"));
    assert_eq!(cfg.sinks.len(), 1, "only the file sink is in use by default");
    assert_eq!(cfg.sinks[0].plugin, "file");
}
