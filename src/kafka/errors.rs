//! The process-wide state of the Kafka clients' errors: every client context logs and
//! counts its errors here; the first fatal one (no retry mends it) is kept for the
//! processor and the sink to stop on; a TLS or SASL handshake refusal is kept for the
//! start-up check to name.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Settings;
use crate::kafka::{LoggingContext, Role, client_config};

/// The `error` callback shared by idempipe's client contexts: logs and counts the error
/// (persistent errors make the process unready: [`crate::metrics::service_error`]) and
/// keeps the first fatal one ([`fatal_client_error`]).
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
        e => {
            let code = e.rdkafka_error_code();
            if matches!(code, Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)) {
                *REFUSED_HANDSHAKE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.to_owned());
            }
            crate::metrics::service_error("kafka", reason);
            keep_if_fatal(code, || format!("{e}: {reason}"));
            tracing::error!(error = %e, reason, "librdkafka error")
        }
    }
}

/// Errors no retry mends: librdkafka's fatal errors (an idempotent producer that can no
/// longer keep its guarantee) and refused credentials or permissions. The process stops
/// on the first, naming it, for an operator to fix the cause.
pub fn is_fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// The first fatal error any Kafka client of this process met ([`is_fatal`]).
static FATAL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A consumer's error as a poll returned it: counted like the error callback's, and
/// kept if fatal.
pub fn note_consumer_error(error: &KafkaError) {
    crate::metrics::service_error("kafka", &error.to_string());
    keep_if_fatal(error.rdkafka_error_code(), || error.to_string());
}

/// Keeps the first fatal error ([`is_fatal`]): `text` describes it.
fn keep_if_fatal(code: Option<RDKafkaErrorCode>, text: impl FnOnce() -> String) {
    if code.is_some_and(is_fatal) {
        FATAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert_with(text);
    }
}

/// The first fatal error any Kafka client of this process met, if any: the processor and
/// the ClickHouse sink stop on it.
pub fn fatal_client_error() -> Option<String> {
    FATAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// The last TLS or SASL failure any client of this process met (librdkafka reports them
/// only to the error callback; the request that needed the connection just times out).
static REFUSED_HANDSHAKE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Whether a fresh client's connection fails its TLS or SASL handshake: its reason, if
/// so. (A client's errors reach its context only when its main queue is served, which
/// an admin client's or a consumer's metadata request does not do.)
pub(crate) fn diagnose_handshake(settings: &Settings) -> Option<String> {
    let probe: BaseConsumer<LoggingContext> =
        client_config(settings, Role::Admin, &[]).create_with_context(LoggingContext).ok()?;
    let _ = probe.fetch_metadata(None, Duration::from_secs(3));
    // Serves the queued events (the failure's log line among them), one per poll.
    for _ in 0..200 {
        if let Some(reason) = refused_handshake() {
            return Some(reason);
        }
        let _ = probe.poll(Duration::from_millis(5));
    }
    None
}

/// Takes the TLS or SASL failure recorded since the last call, if any.
pub(crate) fn refused_handshake() -> Option<String> {
    REFUSED_HANDSHAKE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

/// The `log` callback shared by idempipe's client contexts: librdkafka's lines as
/// `librdkafka` events; a failed TLS or SASL handshake is also noted for
/// [`refused_handshake`].
pub(crate) fn log_client_line(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    const HANDSHAKE: [&str; 4] =
        ["SSL handshake failed", "certificate verify failed", "SASL authentication error", "Authentication failed"];
    if fac == "FAIL" && HANDSHAKE.iter().any(|h| message.contains(h)) {
        *REFUSED_HANDSHAKE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message.to_owned());
    }
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
        L::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac} {message}"),
        L::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
    }
}
