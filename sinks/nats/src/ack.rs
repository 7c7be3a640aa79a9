//! What a JetStream publish acknowledgement must say before the sink counts a message stored.
//!
//! An acknowledgement is a reply on the publish's inbox. The sink takes it as "stored" only if
//! it names the configured stream and a real sequence:
//!
//! - another stream: a second stream capturing the same subject (another account's import, a
//!   stream made by hand with an overlapping filter on an older server) would acknowledge
//!   messages that the writers, reading the configured stream, never see;
//! - sequence 0: newer servers refuse a duplicate whose original is still being replicated
//!   (the original may yet fail); a server that answered such a duplicate with sequence 0
//!   would be vouching for a message it has not stored. Not counted: the batch is sent again,
//!   and by then the original is either stored (a duplicate with its sequence) or lost (stored
//!   now).
//!
//! A duplicate with a sequence is fine: JetStream stored that message earlier, e.g. before an
//! acknowledgement was lost and the batch was sent again.

use async_nats::jetstream::publish::PublishAck;

/// `Ok` when `ack` proves `subject`'s message is in `stream` (module doc), else why not.
pub fn check(stream: &str, subject: &str, ack: &PublishAck) -> Result<(), String> {
    if ack.stream != stream {
        return Err(format!(
            "{subject} was acknowledged by stream {:?}, not {stream:?}: another stream captures this subject; not counted as written",
            ack.stream
        ));
    }
    if ack.sequence == 0 {
        return Err(format!("{subject}: acknowledgement without a sequence (duplicate={}): not counted as written", ack.duplicate));
    }
    if ack.duplicate {
        // expected after a resend; logged so an unexpected one can be traced
        tracing::debug!(%subject, seq = ack.sequence, "JetStream already held this message (resend)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(stream: &str, seq: u64, duplicate: bool) -> PublishAck {
        PublishAck { stream: stream.into(), sequence: seq, domain: String::new(), duplicate, value: None }
    }

    #[test]
    fn only_a_sequence_in_the_configured_stream_counts() {
        assert!(check("DS", "ds.a", &ack("DS", 7, false)).is_ok());
        assert!(check("DS", "ds.a", &ack("DS", 7, true)).is_ok(), "a resend JetStream already held");
        assert!(check("DS", "ds.a", &ack("OTHER", 7, false)).unwrap_err().contains("OTHER"));
        assert!(check("DS", "ds.a", &ack("DS", 0, true)).is_err());
    }
}
