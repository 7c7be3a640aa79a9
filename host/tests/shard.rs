//! Sharding (`--shard i/n`, `[service] shard`) as loaded from a config and as `check` prints it,
//! and the `nats` sink's options validated offline by `check`.

use std::path::Path;
use std::process::Command;

use data_storage::config::parse_sharded;
use data_storage::shard::Shard;

const BIN: &str = env!("CARGO_BIN_EXE_data-storage");

fn config(symbols: &str, service: &str) -> String {
    format!(
        "[service]\n{service}\n\
         [[feed]]\nname = \"depth\"\nconnector = \"binance_spot_depth\"\nsymbols = {symbols}\nsink = \"files\"\n\
         [[feed]]\nname = \"snap\"\nconnector = \"binance_spot_snapshot\"\nsymbols = {symbols}\nsink = \"files\"\n\
         [[sink]]\nname = \"files\"\nplugin = \"file\"\ndir = \"/tmp/ds-shard-test\"\n"
    )
}

fn parse(text: &str, shard: Option<Shard>) -> Result<data_storage::config::Config, Vec<String>> {
    parse_sharded(text, Path::new("t.toml"), &|_| None, shard).map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

const TEN: &str = "[\"S0\",\"S1\",\"S2\",\"S3\",\"S4\",\"S5\",\"S6\",\"S7\",\"S8\",\"S9\"]";

#[test]
fn three_instances_cover_every_symbol_of_every_feed_once() {
    let text = config(TEN, "");
    let mut seen: Vec<(String, String)> = Vec::new();
    for i in 0..3 {
        let c = parse(&text, Some(Shard { index: i, count: 3 })).unwrap();
        let plan = c.shard.expect("a plan");
        assert_eq!(plan.feeds.len(), 2);
        for f in plan.feeds {
            assert_eq!(f.total, 10);
            assert!((3..=4).contains(&f.symbols.len()), "{f:?}");
            seen.extend(f.symbols.into_iter().map(|s| (f.feed.clone(), s)));
        }
    }
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "overlap");
    assert_eq!(seen.len(), 20, "hole");
}

#[test]
fn service_key_and_command_line_agree_and_the_command_line_wins() {
    let from_file = parse(&config(TEN, "shard = \"1/2\""), None).unwrap().shard.unwrap();
    let from_cli = parse(&config(TEN, ""), Some(Shard { index: 1, count: 2 })).unwrap().shard.unwrap();
    assert_eq!(from_file, from_cli);
    let overridden = parse(&config(TEN, "shard = \"1/2\""), Some(Shard { index: 0, count: 2 })).unwrap().shard.unwrap();
    assert_eq!(overridden.shard, Shard { index: 0, count: 2 });
    assert!(parse(&config(TEN, ""), None).unwrap().shard.is_none());
}

#[test]
fn bad_shard_and_sharded_all_are_config_errors() {
    let errs = parse(&config(TEN, "shard = \"2/2\""), None).err().expect("errors");
    assert!(errs.iter().any(|e| e.contains("[service]: key `shard`")), "{errs:?}");
    let errs = parse(&config("\"all\"", ""), Some(Shard { index: 0, count: 2 })).err().expect("errors");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs.iter().all(|e| e.contains("key `symbols`: \"all\" cannot be sharded")), "{errs:?}");
    // 0/1 is no split at all: "all" is fine
    assert!(parse(&config("\"all\"", ""), Some(Shard { index: 0, count: 1 })).is_ok());
}

#[test]
fn a_feed_with_no_symbol_in_this_shard_does_not_run() {
    let one = "[\"BTCUSDT\"]";
    let runs: Vec<usize> = (0..2).map(|i| parse(&config(one, ""), Some(Shard { index: i, count: 2 })).map(|c| c.feeds.len()).unwrap_or(0)).collect();
    // the depth and the snapshot feed each run on exactly one of the two instances
    assert_eq!(runs.iter().sum::<usize>(), 2, "{runs:?}");
}

#[test]
fn check_prints_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, config(TEN, "")).unwrap();
    let out = Command::new(BIN).args(["check", "--shard", "1/3", "--config"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("shard 1/3:"), "{stdout}");
    assert!(stdout.contains("feed depth: 3 of 10 symbol(s)") || stdout.contains("feed depth: 4 of 10 symbol(s)"), "{stdout}");
    let bad = Command::new(BIN).args(["check", "--shard", "3/3", "--config"]).arg(&path).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn check_validates_the_nats_sink_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    let text = "[[feed]]\nname = \"depth\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\"]\nsink = \"bus\"\n\
                [[sink]]\nname = \"bus\"\nplugin = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nstream = \"a.b\"\ncreate_stream = { replicas = 9 }\n";
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sink \"bus\": key `stream`"), "{stderr}");
    assert!(stderr.contains("sink \"bus\": key `create_stream.replicas`"), "{stderr}");
    std::fs::write(&path, text.replace("stream = \"a.b\"\ncreate_stream = { replicas = 9 }\n", "")).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
