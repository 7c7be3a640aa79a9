//! Every plugin crate, named once so the linker keeps its `inventory` registrations (a crate
//! that nothing names registers nothing). Adding an exchange or a sink = one line here.

extern crate connector_binance;
extern crate connector_bybit;
extern crate connector_huobi;
extern crate connector_nats;
extern crate sink_file;
extern crate sink_influxdb;
extern crate sink_nats;

/// Called first thing by `main`, so this module (and with it the `extern crate` lines above)
/// is part of every build of the binary.
pub fn link() {}
