//! End-to-end: the real service (its `run` function, the same one the binary calls) against
//! the mock exchange on 127.0.0.1 replaying real captures, writing into a real InfluxDB.
//! One test binary that `mod`s its parts links much faster than many.

mod binance;
mod durability;
mod faults;
mod bybit;
mod huobi;
mod metrics;
mod reload;
mod replay;
mod nats;
mod support;
