//! `produce`: sends a JSON-lines file to the raw topic, one message per line, keyed by
//! `user_id` so that an event and its re-sends share a partition.

use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::Settings;
use crate::event::{self, EventSchema};
use crate::kafka::{self, KafkaFailure, Role, client_config};
use crate::registry::RegistryClient;
use crate::registry::encode::{Encoder, Format, SubjectStrategy};

#[derive(Debug, thiserror::Error)]
pub enum ProduceFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("{failed} of {sent} messages were not delivered to {topic}: {first}")]
    NotDelivered { topic: String, sent: u64, failed: u64, first: String },
    #[error("--rate must be a positive number of events per second, not {0}")]
    BadRate(f64),
    #[error(transparent)]
    Encode(#[from] crate::registry::encode::EncodeError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot read the schema file {path}: {source}")]
    Schema { path: String, source: std::io::Error },
}

/// How `produce` writes each line: as it is, or in the wire format of a schema it
/// registers.
#[derive(Debug, Clone, Default)]
pub struct Encoding {
    pub format: Format,
    /// The schema file; the built-in schema of the generator's events when `None`.
    pub schema: Option<std::path::PathBuf>,
    /// The Protobuf message (full name).
    pub message: Option<String>,
    pub strategy: SubjectStrategy,
}

/// What was sent.
#[derive(Debug, serde::Serialize)]
pub struct ProduceSummary {
    /// The topic the lines went to.
    pub topic: String,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    /// The format written, and in the wire format the schema's subject and id.
    pub format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u32>,
    /// Lines the schema cannot hold as they are, sent as they are (dead letters to be).
    pub unencodable: u64,
}

/// Counts deliveries; the first failure is kept for the error message.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
        }
    }
}

/// The partitioning key of a line: the value of its identity's first key field
/// (`user_id` by default) when it has one, so that an event and its re-sends share a
/// partition.
fn key_of(line: &[u8], schema: &EventSchema) -> Option<String> {
    if let Ok(mut e) = event::parse_with(Some(line), usize::MAX, schema) {
        return Some(e.parts.swap_remove(0).into_owned());
    }
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let first = &schema.identity().fields().first()?.path;
    let found = first.names().iter().try_fold(&value, |v, name| v.get(name))?;
    match found {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Sends lines to the raw topic, each keyed, as fast as the producer takes them or at a
/// steady rate: the one send loop of `produce` and the latency benchmark.
pub(crate) struct RawSender<'a> {
    settings: &'a Settings,
    producer: ThreadedProducer<Deliveries>,
    rate: Option<f64>,
    started: Instant,
    sent: u64,
    bytes: u64,
}

impl<'a> RawSender<'a> {
    /// A producer for the raw topic (which must exist); with `rate`, [`RawSender::send`]
    /// paces the lines to that many a second.
    pub(crate) fn new(settings: &'a Settings, rate: Option<f64>) -> Result<Self, ProduceFileError> {
        if let Some(r) = rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(ProduceFileError::BadRate(r));
        }
        let producer: ThreadedProducer<Deliveries> = client_config(
            settings,
            Role::Producer,
            &[
                ("enable.idempotence", "true"),
                ("linger.ms", if rate.is_some() { "0" } else { "20" }),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "1000000"),
                ("queue.buffering.max.kbytes", "1048576"),
                ("message.timeout.ms", "120000"),
            ],
        )
        .create_with_context(Deliveries::default())
        .map_err(kafka::client_error(settings))?;
        kafka::partition_count(settings, producer.client(), Some(&settings.topics.raw))?;
        Ok(Self { settings, producer, rate, started: Instant::now(), sent: 0, bytes: 0 })
    }

    /// Queues `line` with `key`, once its time has come (with a rate), waiting while the
    /// producer's queue is full.
    pub(crate) fn send(&mut self, line: &[u8], key: Option<&[u8]>) -> Result<(), ProduceFileError> {
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.settings.topics.raw).payload(line);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(kafka::client_error(self.settings)(e).into()),
            }
        }
        self.sent += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Bytes queued so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Waits for every delivery; fails if any line was not delivered.
    pub(crate) fn finish(self) -> Result<ProduceSummary, ProduceFileError> {
        let settings = self.settings;
        self.producer.flush(Duration::from_secs(300)).map_err(kafka::client_error(settings))?;
        let context = self.producer.context();
        let failed = context.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = context.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
            return Err(ProduceFileError::NotDelivered {
                topic: settings.topics.raw.clone(),
                sent: self.sent,
                failed,
                first,
            });
        }
        let seconds = self.started.elapsed().as_secs_f64();
        Ok(ProduceSummary {
            topic: settings.topics.raw.clone(),
            messages: self.sent,
            bytes: self.bytes,
            seconds,
            messages_per_sec: self.sent as f64 / seconds.max(1e-9),
            format: Format::Json,
            subject: None,
            schema_id: None,
            unencodable: 0,
        })
    }
}

/// Sends every line of `input` to the raw topic (a trailing `\r` dropped), keyed by its
/// first key field's value ([`key_of`]).
pub fn produce(settings: &Settings, input: &Path, rate: Option<f64>) -> Result<ProduceSummary, ProduceFileError> {
    produce_as(settings, input, rate, &Encoding::default())
}

/// [`produce`], each line written as `encoding` says. Must run inside a Tokio runtime's
/// context (not on one of its workers): the schema is registered through it.
pub fn produce_as(
    settings: &Settings,
    input: &Path,
    rate: Option<f64>,
    encoding: &Encoding,
) -> Result<ProduceSummary, ProduceFileError> {
    let encoder = match encoding.format {
        Format::Json => None,
        format => {
            let schema = match &encoding.schema {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|source| ProduceFileError::Schema { path: path.display().to_string(), source })?,
                ),
                None => None,
            };
            let client = RegistryClient::new(&settings.registry)?;
            let register = Encoder::register(
                &client,
                format,
                schema.as_deref(),
                encoding.message.as_deref(),
                &settings.topics.raw,
                encoding.strategy,
            );
            let encoder = tokio::runtime::Handle::current().block_on(register)?;
            tracing::info!(subject = encoder.subject(), id = encoder.id(), "schema registered");
            Some(encoder)
        }
    };
    let read_err = |source| ProduceFileError::Read { path: input.display().to_string(), source };
    let file = std::fs::File::open(input).map_err(read_err)?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut sender = RawSender::new(settings, rate)?;
    let progress = indicatif::ProgressBar::new(total_bytes);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {wide_bar} {msg} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut lines = 0_u64;
    let mut unencodable = 0_u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(read_err)?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let key = key_of(&line, &settings.schema);
        let encoded = encoder.as_ref().and_then(|e| {
            let encoded = e.encode(&line);
            unencodable += u64::from(encoded.is_none());
            encoded
        });
        sender.send(encoded.as_deref().unwrap_or(&line), key.as_deref().map(str::as_bytes))?;
        lines += 1;
        if lines.is_multiple_of(4096) {
            progress.set_position(sender.bytes());
        }
    }
    let summary = sender.finish();
    progress.finish_and_clear();
    let mut summary = summary?;
    summary.format = encoding.format;
    summary.subject = encoder.as_ref().map(|e| e.subject().to_owned());
    summary.schema_id = encoder.as_ref().map(Encoder::id);
    summary.unencodable = unencodable;
    Ok(summary)
}

impl std::fmt::Display for ProduceSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sent {} messages ({} bytes) to {} in {:.2} s: {:.0} messages/s",
            self.messages, self.bytes, self.topic, self.seconds, self.messages_per_sec
        )?;
        if let (Some(subject), Some(id)) = (&self.subject, self.schema_id) {
            writeln!(
                f,
                "{:?} in the wire format, schema id {id} (subject {subject}); {} lines its schema cannot hold sent as \
                 they are",
                self.format, self.unencodable
            )?;
        }
        Ok(())
    }
}
